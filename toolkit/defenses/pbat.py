"""PBAT: patch adversarial training at full precision (Rao et al. 2020, arXiv 2005.10884).

Half of each batch (``--patch-fraction``) stays clean and the other half gets one patch per image
at a random location, found by ``--pbat-steps`` signed-gradient steps from uniform noise on the
float model. Training is at 32 only; the model is quantized afterwards (``qadtr calibrate`` or a
``--defense qat --init`` fine-tune), which is exactly the gap QADT-R targets.
"""
from __future__ import annotations

import torch

from ..attacks.paste import paste_patch
from ..quant import FLOAT_BITS
from ..switchable import set_bits
from .base import Defense, StepOutput, eval_mode
from .patching import draw_patch_size, patched_subset, random_locations, signed_patch_steps


class PBAT(Defense):
    def step(self, x, y, step):
        cfg, g = self.cfg, self.generator
        set_bits(self.model, FLOAT_BITS)
        idx = patched_subset(len(x), cfg.patch_fraction, g)
        x_train = x
        if len(idx):
            size = draw_patch_size(cfg.patch_size_min, cfg.patch_size_max, x.shape[-2:], g)
            loc = random_locations(len(idx), x.shape[-2:], size, g)
            start = torch.rand(len(idx), 3, size, size, generator=g)
            with eval_mode(self.model):
                patches = signed_patch_steps(self.model, x[idx], y[idx], start, loc, cfg.pbat_steps,
                                             cfg.pbat_step_size / 255)
            x_train = x.clone()
            x_train[idx] = paste_patch(x[idx], patches, loc)
            self.log("patch_size", size)
        logits = self.model(x_train)
        return StepOutput(self.criterion(logits, y), logits, FLOAT_BITS)
