"""GIR: gradient-inconsistency regularization across bit-widths, and optional gradient-noise injection.

R = mean_i cos^2( grad_x l(f_a(x_i), y_i), grad_x l(f_b(x_i), y_i) ) over patched images x_i,
at two different bit-widths a != b of the same shared weights, with BN on the batch's statistics
(running statistics untouched; why not eval mode: ``base.batch_stats_mode`` and docs/method.md).
Both input gradients are taken with ``create_graph=True``, so R backpropagates into the weights
(double backprop). The derivation and the choice of cos^2 are in docs/method.md.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..switchable import bits as bits_ctx
from .base import batch_stats_mode

NOISE_DECAY = 0.55  # Neelakantan et al. 2015's annealing exponent


def input_gradients(model, x, y, bits: int, create_graph: bool = True) -> torch.Tensor:
    """Input gradients of the cross-entropy at ``bits``, one per image.

    BN normalises by the statistics of ``x`` itself, which couples the images only through a batch
    mean and variance (an O(1/len(x)) term), and cannot be gamed by moving away from stale running
    statistics, which the eval-mode network could (docs/results.md 6d).
    """
    x = x.detach().requires_grad_(True)
    with batch_stats_mode(model), bits_ctx(model, bits):
        loss = F.cross_entropy(model(x), y, reduction="sum")
        grad, = torch.autograd.grad(loss, x, create_graph=create_graph)
    return grad


def gradient_cosine_penalty(grad_a: torch.Tensor, grad_b: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """mean_i cos^2(g_a_i, g_b_i), each image's gradient flattened to one vector."""
    a, b = grad_a.flatten(1), grad_b.flatten(1)
    cos = (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1)).clamp_min(eps)
    return cos.pow(2).mean()


def gir_penalty(model, x, y, bits_a: int, bits_b: int) -> torch.Tensor:
    """GIR on ``x``: differentiable with respect to the model's weights."""
    return gradient_cosine_penalty(input_gradients(model, x, y, bits_a), input_gradients(model, x, y, bits_b))


class GradientNoise:
    """Annealed Gaussian noise on weight gradients: std sqrt(eta / (1 + t)^0.55) at step t.

    Controlled: eta sets it, it decays with the step, and it is drawn from the defense's
    seeded generator, so a resumed run draws the same noise.
    """

    def __init__(self, eta: float):
        self.eta = float(eta)

    def std(self, step: int) -> float:
        return (self.eta / (1 + step) ** NOISE_DECAY) ** 0.5

    def apply(self, model, step: int, generator: torch.Generator) -> None:
        if self.eta <= 0:
            return
        std = self.std(step)
        for p in model.parameters():
            if p.grad is not None:
                p.grad.add_(torch.randn(p.grad.shape, generator=generator) * std)
