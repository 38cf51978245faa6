"""float and qat: plain cross-entropy at the run's one bit-width (the foundation's step, unchanged)."""
from __future__ import annotations

from ..switchable import set_bits
from .base import Defense, StepOutput


class PlainTraining(Defense):
    def step(self, x, y, step):
        bits = self.cfg.bits[0]
        set_bits(self.model, bits)
        logits = self.model(x)
        return StepOutput(self.criterion(logits, y), logits, bits)
