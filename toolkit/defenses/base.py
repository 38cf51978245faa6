"""What every defense shares: the step interface, its per-epoch random stream, and its epoch statistics."""
from __future__ import annotations

from collections import defaultdict
from contextlib import contextmanager
from typing import NamedTuple

import numpy as np
import torch

DEFENSE_STREAM = 0xDEF  # separates a defense's draws from every other use of the run's seed


class StepOutput(NamedTuple):
    loss: torch.Tensor    # what the trainer backpropagates
    logits: torch.Tensor  # logits of the training batch, for the running train accuracy
    bits: int             # the bit-width the batch was trained at


class Defense:
    """A per-batch training step. Subclasses implement ``step``; stateful ones extend ``state_dict``.

    Randomness comes from ``self.generator``, reseeded from ``(seed, epoch)`` at every epoch start.
    Checkpoints are written at epoch ends, so that plus ``state_dict`` is all a resumed run needs
    to draw exactly what an uninterrupted one would.
    """

    def __init__(self, cfg, model, criterion):
        self.cfg, self.model, self.criterion = cfg, model, criterion
        self.generator = torch.Generator()
        self._sums: dict[str, float] = defaultdict(float)
        self._counts: dict[str, int] = defaultdict(int)

    def start_epoch(self, epoch: int) -> None:
        seed = np.random.SeedSequence([DEFENSE_STREAM, int(self.cfg.seed), int(epoch)]).generate_state(1)[0]
        self.generator.manual_seed(int(seed))
        self._sums.clear()
        self._counts.clear()

    def step(self, x: torch.Tensor, y: torch.Tensor, step: int) -> StepOutput:
        raise NotImplementedError

    def replay(self) -> torch.Tensor:
        """The last ``step``'s loss recomputed at the current weights, for SAM; float and qat only."""
        raise NotImplementedError(f"{type(self).__name__} has no SAM second pass")

    def before_optimizer_step(self, step: int) -> None:
        """Called between ``loss.backward()`` and ``optimizer.step()``."""

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass

    def describe(self) -> dict:
        """Settings worth stating beside the metrics (e.g. DWQ's faithful/fast label)."""
        return {}

    def warnings(self) -> list[str]:
        """One-line warnings about the configuration, printed when training starts."""
        return []

    def log(self, name: str, value: float) -> None:
        self._sums[name] += float(value)
        self._counts[name] += 1

    def epoch_stats(self) -> dict:
        """Means of everything logged this epoch."""
        return {k: self._sums[k] / self._counts[k] for k in sorted(self._sums)}


@contextmanager
def eval_mode(model: torch.nn.Module):
    """Run as the deployed model: BN on running statistics, which crafting forwards must not move."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


@contextmanager
def batch_stats_mode(model: torch.nn.Module):
    """Train-mode BN (each forward normalises by its own batch's statistics) that leaves the running
    statistics where they are: momentum 0 keeps ``running = (1 - 0) * running``.

    For objectives that reward changing the deployed function (GIR): through running statistics,
    which lag the weights and are constants to autograd, the optimizer can lower such an objective
    by moving the weights away from the statistics instead of shaping the network (docs/method.md).
    """
    was_training = model.training
    bns = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    momenta = [bn.momentum for bn in bns]
    model.train()
    for bn in bns:
        bn.momentum = 0.0
    try:
        yield model
    finally:
        for bn, momentum in zip(bns, momenta):
            bn.momentum = momentum
        model.train(was_training)
