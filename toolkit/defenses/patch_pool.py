"""The persistent pool of universal patches, one set per crafting bit-width (amortized A-QAPA)."""
from __future__ import annotations

import numpy as np
import torch

from ..errors import CheckpointError
from .patching import patch_loss, resize_patches

POOL_STREAM = 0x9001  # the pool's initial noise, separate from the per-epoch defense stream


class PatchPool:
    """``pool_size`` universal patches of side ``patch_size`` for each bit-width in ``bits``.

    A batch draws one pool patch per image, shrinks it to the batch's patch size (area
    averaging), and moves every drawn pool patch one signed-gradient step up the loss summed
    over the images that drew it: a universal-patch step, amortized over training. The pool
    is model-dependent state: it lives in the checkpoint, so a resumed run continues it.
    """

    def __init__(self, bits, pool_size: int, patch_size: int, seed: int):
        rng = torch.Generator().manual_seed(int(np.random.SeedSequence([POOL_STREAM, int(seed)]).generate_state(1)[0]))
        self.patches = {int(b): torch.rand(pool_size, 3, patch_size, patch_size, generator=rng) for b in bits}

    def draw(self, bits: int, n: int, generator: torch.Generator) -> torch.Tensor:
        """Which pool patch each of ``n`` images uses."""
        return torch.randint(len(self.patches[bits]), (n,), generator=generator)

    def patches_for(self, bits: int, index: torch.Tensor, size: int) -> torch.Tensor:
        """The drawn pool patches at side ``size``, detached ([n,3,size,size])."""
        return resize_patches(self.patches[bits][index], size).detach()

    def refresh(self, model, images, labels, locations, bits: int, index, size: int, steps: int,
                step_size: float) -> torch.Tensor | None:
        """``steps`` signed-gradient steps on the drawn pool patches (``model`` already at the crafting bits).

        Returns the per-image gradient of the last step (with respect to each image's resized
        patch, before the update), so a caller's first per-image step costs no extra pass.
        """
        per_image_grad = None
        for _ in range(steps):
            pool = self.patches[bits].clone().requires_grad_(True)
            drawn = resize_patches(pool[index], size)
            loss = patch_loss(model, images, labels, drawn, locations)
            grad, per_image_grad = torch.autograd.grad(loss, [pool, drawn])
            # Undrawn patches have a zero gradient, so sign() leaves them where they are.
            self.patches[bits] = (pool + step_size * grad.sign()).clamp_(0.0, 1.0).detach()
        return per_image_grad

    def state_dict(self) -> dict:
        return {f"pool_{b}": p.clone() for b, p in self.patches.items()}

    def load_state_dict(self, state: dict) -> None:
        for b, p in self.patches.items():
            saved = state.get(f"pool_{b}")
            if saved is None or saved.shape != p.shape:
                raise CheckpointError(f"the checkpoint's patch pool for {b}-bit is missing or has another shape")
            self.patches[b] = saved.clone().float()
