"""DWQ: Double-Win Quant (Fu et al., ICML 2021): random-precision adversarial training.

Each batch draws a bit-width (``--bit-schedule``, random by default as in DWQ's random precision
switch), crafts L-inf adversarial examples at that bit-width, and trains on them with that
bit-width's BatchNorm (switchable BN). PGD-7 at 8/255 (step 2/255, random start) is the paper's
setting; ``--dwq-attack fgsm-rs`` (one step of 1.25 eps from a random start, Wong et al. 2020) is a
faster setting, labelled as such in the config and metrics.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..switchable import set_bits
from .base import Defense, StepOutput, eval_mode
from .dbwt import BitWidthSchedule


def linf_attack(model, x, y, eps: float, steps: int, step_size: float, generator) -> torch.Tensor:
    """PGD from a uniform random start in the eps-ball (FGSM-RS is steps=1, step_size=1.25 eps)."""
    delta = (torch.rand(x.shape, generator=generator) * 2 - 1) * eps
    x_adv = (x + delta).clamp(0, 1)
    for _ in range(steps):
        x_adv.requires_grad_(True)
        grad, = torch.autograd.grad(F.cross_entropy(model(x_adv), y), x_adv)
        x_adv = torch.min(torch.max(x_adv.detach() + step_size * grad.sign(), x - eps), x + eps).clamp_(0, 1)
    return x_adv.detach()


class DWQ(Defense):
    def __init__(self, cfg, model, criterion):
        super().__init__(cfg, model, criterion)
        self.schedule = BitWidthSchedule(cfg.bits, cfg.bit_schedule)

    def describe(self):
        return {"dwq_setting": self.cfg.dwq_label()}

    def step(self, x, y, step):
        cfg = self.cfg
        bits = self.schedule.draw(step, self.generator)
        set_bits(self.model, bits)
        eps = cfg.dwq_epsilon / 255
        steps, size = (cfg.dwq_steps, cfg.dwq_step_size / 255) if cfg.dwq_attack == "pgd" else (1, 1.25 * eps)
        with eval_mode(self.model):
            x_adv = linf_attack(self.model, x, y, eps, steps, size, self.generator)
        logits = self.model(x_adv)
        return StepOutput(self.criterion(logits, y), logits, bits)
