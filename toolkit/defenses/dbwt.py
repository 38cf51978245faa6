"""DBWT: dynamic bit-width training, one bit-width per batch drawn from the training set."""
from __future__ import annotations

import torch


class BitWidthSchedule:
    """``random``: uniform over ``bits`` from the defense's generator; ``cyclic``: ``bits[step % len]``.

    Cyclic is a pure function of the global step, so it needs no state to resume; random draws
    from the per-epoch generator, which the trainer reseeds from ``(seed, epoch)``.
    """

    def __init__(self, bits, mode: str = "random"):
        if mode not in ("random", "cyclic"):
            raise ValueError(f"unknown bit schedule {mode!r}")
        self.bits, self.mode = [int(b) for b in bits], mode

    def draw(self, step: int, generator: torch.Generator) -> int:
        if len(self.bits) == 1:  # a fixed width: no draw, so the generator's stream is left untouched
            return self.bits[0]
        if self.mode == "cyclic":
            return self.bits[step % len(self.bits)]
        return self.bits[int(torch.randint(len(self.bits), (1,), generator=generator))]
