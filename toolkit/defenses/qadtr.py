"""QADT-R: A-QAPA patches inside the quantized model + DBWT + GIR (arXiv 2503.07058).

Per batch: DBWT draws a bit-width b; a ``--patch-fraction`` share of the batch gets a patch of a
drawn size at random locations, crafted at b (or at 32 with ``--patch-source float``) from the
persistent pool of universal patches for that bit-width (refreshed ``--pool-steps`` steps) plus
``--fresh-steps`` per-image steps; the model trains at b on the mixed batch; GIR adds
``lambda * mean cos^2`` of the input gradients at b and at another bit-width of the model's set
on the patched images. Formula and defaults: docs/method.md, "QADT-R training".
"""
from __future__ import annotations

import torch

from ..attacks.paste import paste_patch
from ..quant import FLOAT_BITS
from ..switchable import bits as bits_ctx
from ..switchable import set_bits
from .base import Defense, StepOutput, eval_mode
from .dbwt import BitWidthSchedule
from .gir import GradientNoise, gir_penalty
from .patch_pool import PatchPool
from .patching import draw_patch_size, patched_subset, random_locations, signed_patch_steps


class QADTR(Defense):
    def __init__(self, cfg, model, criterion):
        super().__init__(cfg, model, criterion)
        self.schedule = BitWidthSchedule(cfg.bits, cfg.bit_schedule)
        self.craft_bits = list(cfg.bits) if cfg.patch_source == "quantized" else [FLOAT_BITS]
        self.pool = PatchPool(self.craft_bits, cfg.pool_size, cfg.patch_size_max, cfg.seed)
        self.model_bits = sorted(model.bit_choices)
        self.noise = GradientNoise(cfg.gir_noise)

    def gir_only_bits(self) -> list[int]:
        """Widths that GIR uses as partners but cross-entropy never trains (e.g. 32 under ``--bits 4``)."""
        return sorted(set(self.model_bits) - set(self.cfg.bits)) if self.cfg.gir_lambda > 0 else []

    def describe(self):
        return {"patch_source": self.cfg.patch_source, "craft_bits": self.craft_bits,
                "gir_only_bits": self.gir_only_bits()}

    def warnings(self):
        # GIR lowers its penalty most cheaply through parameters that only it trains (that width's BN
        # affine parameters): measured, the fixed-4 ablation's float path fell to 57.75% (docs/results.md 6e).
        return [f"qadtr: GIR uses {b}-bit as a partner width, but cross-entropy never trains {b}-bit; "
                f"that width will not be usable (deploy only --bits {','.join(map(str, self.cfg.bits))})"
                for b in self.gir_only_bits()]

    def state_dict(self):
        return self.pool.state_dict()

    def load_state_dict(self, state):
        self.pool.load_state_dict(state)

    def craft(self, x, y, bits: int) -> torch.Tensor:
        """``x`` with an A-QAPA patch pasted on each image, crafted inside the model at ``bits``."""
        cfg, g = self.cfg, self.generator
        size = draw_patch_size(cfg.patch_size_min, cfg.patch_size_max, x.shape[-2:], g)
        loc = random_locations(len(x), x.shape[-2:], size, g)
        index = self.pool.draw(bits, len(x), g)
        fresh_size = cfg.fresh_step_size / 255
        with eval_mode(self.model), bits_ctx(self.model, bits):
            grad = self.pool.refresh(self.model, x, y, loc, bits, index, size, cfg.pool_steps, cfg.pool_step_size / 255)
            patches, fresh_steps = self.pool.patches_for(bits, index, size), cfg.fresh_steps
            if grad is not None and fresh_steps > 0:
                # The first per-image step reuses the pool step's backward pass: one pass, two updates.
                patches, fresh_steps = (patches + fresh_size * grad.sign()).clamp_(0.0, 1.0), fresh_steps - 1
            patches = signed_patch_steps(self.model, x, y, patches, loc, fresh_steps, fresh_size)
        self.log("patch_size", size)
        return paste_patch(x, patches, loc)

    def gir_partner(self, bits: int) -> int | None:
        others = [b for b in self.model_bits if b != bits]
        return others[int(torch.randint(len(others), (1,), generator=self.generator))] if others else None

    def step(self, x, y, step):
        cfg = self.cfg
        bits = self.schedule.draw(step, self.generator)
        idx = patched_subset(len(x), cfg.patch_fraction, self.generator)
        x_train = x
        if len(idx):
            x_train = x.clone()
            x_train[idx] = self.craft(x[idx], y[idx], bits if cfg.patch_source == "quantized" else FLOAT_BITS)
        set_bits(self.model, bits)
        logits = self.model(x_train)
        loss = self.criterion(logits, y)
        self.log("patched_loss" if len(idx) else "clean_loss",
                 self.criterion(logits[idx], y[idx]).item() if len(idx) else loss.item())
        partner = self.gir_partner(bits)
        if cfg.gir_lambda > 0 and partner is not None:
            # GIR on patched images (clean ones when --patch-fraction is 0): the inputs an attacker shapes.
            sample = (idx if len(idx) else torch.arange(len(x)))[:cfg.gir_samples]
            penalty = gir_penalty(self.model, x_train[sample].detach(), y[sample], bits, partner)
            self.log("gir_cos2", penalty.item())
            loss = loss + cfg.gir_lambda * penalty
        return StepOutput(loss, logits, bits)

    def before_optimizer_step(self, step):
        self.noise.apply(self.model, step, self.generator)
