"""float and qat: plain cross-entropy, no adversary.

One bit-width trains the foundation's fixed-precision model. qat with several ``--bits`` trains a
switchable model with plain cross-entropy, one bit-width per batch from ``--bit-schedule`` (DBWT with
no patches and no GIR): the undefended baseline that has the same bit-width set as dwq and qadtr.
Either can distil from a teacher checkpoint (``--teacher``, :mod:`qadtr.distill`) and train on mixup
batches (``--mixup``, :func:`mixup`).
"""
from __future__ import annotations

import numpy as np
import torch

from ..switchable import set_bits
from .base import Defense, StepOutput
from .dbwt import BitWidthSchedule


def mixup(x: torch.Tensor, alpha: float, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Mixup (Zhang et al. 2018, https://arxiv.org/abs/1710.09412): ``lam * x + (1 - lam) * x[perm]``.

    ``lam ~ Beta(alpha, alpha)``, folded to ``lam >= 0.5`` so that each image's own label stays the larger
    share (its running train accuracy stays meaningful). Returns the mixed batch, ``perm`` and ``lam``.
    Images stay in [0, 1]: a convex combination of two images in range is in range.
    """
    rng = np.random.default_rng(int(torch.randint(2**62, (1,), generator=generator)))
    lam = float(rng.beta(alpha, alpha))
    lam = max(lam, 1.0 - lam)
    perm = torch.randperm(len(x), generator=generator)
    return lam * x + (1.0 - lam) * x[perm], perm, lam


class PlainTraining(Defense):
    def __init__(self, cfg, model, criterion, distill=None):
        super().__init__(cfg, model, criterion)
        self.schedule = BitWidthSchedule(cfg.bits, cfg.bit_schedule)
        self.distill = distill

    def step(self, x, y, step):
        bits = self.schedule.draw(step, self.generator)
        set_bits(self.model, bits)
        perm, lam = None, 1.0
        if self.cfg.mixup > 0:
            # The teacher sees the same mixed images: distillation then matches the teacher's function
            # between training images as well as on them (Beyer et al. 2022, "function matching").
            x, perm, lam = mixup(x, self.cfg.mixup, self.generator)
            self.log("mixup_lambda", lam)
        teacher_logits = self.distill.teacher_logits(x) if self.distill is not None else None
        self._batch = (x, y, perm, lam, teacher_logits)
        logits, loss = self._loss(*self._batch)
        return StepOutput(loss, logits, bits)

    def _loss(self, x, y, perm, lam, teacher_logits):
        logits = self.model(x)
        loss = self.criterion(logits, y)
        if perm is not None:
            loss = lam * loss + (1.0 - lam) * self.criterion(logits, y[perm])
        if teacher_logits is not None:
            loss = self.distill.mix(logits, teacher_logits, loss)
        return logits, loss

    def replay(self) -> torch.Tensor:
        """The last batch's loss again at the model's current weights (SAM's second pass): same images,
        mixup partners, bit-width and teacher logits."""
        return self._loss(*self._batch)[1]
