"""Training-time patch placement and signed-gradient patch steps (shared by pbat and qadtr)."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..attacks.paste import paste_patch


def patched_subset(n: int, fraction: float, generator: torch.Generator) -> torch.Tensor:
    """Indices of the ``round(fraction * n)`` images of a batch that get a patch."""
    return torch.randperm(n, generator=generator)[:round(fraction * n)]


def draw_patch_size(low: int, high: int, image_hw, generator: torch.Generator) -> int:
    """One patch side for the batch, uniform in [low, high] and never larger than the image."""
    high = min(high, *image_hw)
    low = min(low, high)
    return int(torch.randint(low, high + 1, (1,), generator=generator))


def random_locations(n: int, image_hw, size: int, generator: torch.Generator) -> torch.Tensor:
    """``n`` uniform ``(top, left)`` rows, the whole patch inside the image."""
    top = torch.randint(0, image_hw[0] - size + 1, (n,), generator=generator)
    left = torch.randint(0, image_hw[1] - size + 1, (n,), generator=generator)
    return torch.stack([top, left], dim=1)


def resize_patches(patches: torch.Tensor, size: int) -> torch.Tensor:
    """[N,3,S,S] -> [N,3,size,size] by area averaging: differentiable and stays in [0,1]."""
    if patches.shape[-1] == size:
        return patches
    return F.interpolate(patches, size=(size, size), mode="area")


def patch_loss(model, images, labels, patches, locations) -> torch.Tensor:
    """Cross-entropy of ``model`` on ``images`` with ``patches`` pasted (what the attacker ascends)."""
    return F.cross_entropy(model(paste_patch(images, patches, locations)), labels)


def signed_patch_steps(model, images, labels, patches, locations, steps: int, step_size: float) -> torch.Tensor:
    """``steps`` signed-gradient ascent steps on per-image ``patches`` [N,3,h,w], kept in [0,1]."""
    patches = patches.detach()
    for _ in range(steps):
        patches.requires_grad_(True)
        grad, = torch.autograd.grad(patch_loss(model, images, labels, patches, locations), patches)
        patches = (patches + step_size * grad.sign()).clamp_(0.0, 1.0).detach()
    return patches
