"""float and qat: plain cross-entropy, no adversary.

One bit-width trains the foundation's fixed-precision model. qat with several ``--bits`` trains a
switchable model with plain cross-entropy, one bit-width per batch from ``--bit-schedule`` (DBWT with
no patches and no GIR): the undefended baseline that has the same bit-width set as dwq and qadtr.
Either can distil from a teacher checkpoint (``--teacher``, :mod:`qadtr.distill`).
"""
from __future__ import annotations

from ..switchable import set_bits
from .base import Defense, StepOutput
from .dbwt import BitWidthSchedule


class PlainTraining(Defense):
    def __init__(self, cfg, model, criterion, distill=None):
        super().__init__(cfg, model, criterion)
        self.schedule = BitWidthSchedule(cfg.bits, cfg.bit_schedule)
        self.distill = distill

    def step(self, x, y, step):
        bits = self.schedule.draw(step, self.generator)
        set_bits(self.model, bits)
        logits = self.model(x)
        loss = self.criterion(logits, y)
        if self.distill is not None:
            loss = self.distill(logits, x, loss)
        return StepOutput(loss, logits, bits)
