"""Sharpness-aware minimization around the trainer's step.

Foret et al. 2021, "Sharpness-Aware Minimization for Efficiently Improving Generalization",
https://arxiv.org/abs/2010.01412. SAM minimises ``max_{||e||_2 <= rho} L(w + e)``; to first order the worst
``e`` is ``rho * g / ||g||`` with ``g`` the batch gradient over all parameters. One SAM step: backpropagate the
batch loss (``g``), ``ascend`` to ``w + e``, backpropagate the same batch's loss there, ``descend`` back to
``w`` exactly, and let the optimizer step with the second gradient. Twice the forward and backward cost.
"""
from __future__ import annotations

import torch


class SharpnessAwareStep:
    """Moves ``params`` to the first-order worst point within L2 radius ``rho`` and back."""

    def __init__(self, params, rho: float = 0.05) -> None:
        self.params = [p for p in params if p.requires_grad]
        self.rho = float(rho)
        self._saved: list[tuple[torch.nn.Parameter, torch.Tensor]] = []

    @torch.no_grad()
    def ascend(self) -> float:
        """``w <- w + rho * g / ||g||`` from the gradients in ``.grad``; returns ``||g||``."""
        moved = [p for p in self.params if p.grad is not None]
        norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(p.grad.float()) for p in moved]))
        scale = self.rho / (float(norm) + 1e-12)
        self._saved = [(p, p.detach().clone()) for p in moved]
        for p in moved:
            p.add_(p.grad, alpha=scale)
        return float(norm)

    @torch.no_grad()
    def descend(self) -> None:
        """Back to the weights before ``ascend``, bit for bit (a copy, not a subtraction)."""
        for p, original in self._saved:
            p.copy_(original)
        self._saved = []
