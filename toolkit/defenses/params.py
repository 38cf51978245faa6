"""Hyperparameters of the defenses: one dataclass, the single source of CLI options and defaults.

Torch-free, so the CLI can build its options at import time. ``TrainConfig`` inherits these
fields, which is what stores them in every checkpoint. Pixel step sizes and radii are in
units of 1/255 (``--dwq-epsilon 8`` means 8/255), the convention of the adversarial-training
literature.
"""
from __future__ import annotations

from dataclasses import dataclass, field, fields

import click

from ..errors import QadtrError

BIT_SCHEDULES = ("random", "cyclic")
PATCH_SOURCES = ("quantized", "float")
DWQ_ATTACKS = ("pgd", "fgsm-rs")


def _opt(default, help: str, choices=None):
    return field(default=default, metadata={"help": help, "choices": choices})


@dataclass
class DefenseParams:
    """Every knob of pbat, dwq and qadtr. float ignores them; qat reads only --bit-schedule."""

    bit_schedule: str = _opt("random", "DBWT (dwq, qadtr, qat with several --bits): draw each batch's "
                                       "bit-width from --bits at random, or cycle through it in order.",
                             BIT_SCHEDULES)
    patch_fraction: float = _opt(0.5, "pbat, qadtr: share of each batch that gets an adversarial patch.")
    patch_size_min: int = _opt(4, "pbat, qadtr: smallest training patch side in pixels (drawn per batch).")
    patch_size_max: int = _opt(8, "pbat, qadtr: largest training patch side in pixels.")
    patch_source: str = _opt("quantized", "qadtr: craft patches inside the model at the batch's bit-width "
                                          "(A-QAPA), or at 32 only (the 'without A-QAPA' ablation).", PATCH_SOURCES)
    pool_size: int = _opt(8, "qadtr: universal patches kept per bit-width in the persistent pool.")
    pool_steps: int = _opt(1, "qadtr: signed-gradient steps on the pool patches per batch.")
    pool_step_size: float = _opt(4.0, "qadtr: pool step size, in 1/255.")
    fresh_steps: int = _opt(1, "qadtr: per-image signed-gradient steps per batch, starting from the pool patch.")
    fresh_step_size: float = _opt(16.0, "qadtr: per-image step size, in 1/255.")
    gir_lambda: float = _opt(0.5, "qadtr: weight of GIR, the squared cosine of input gradients at two "
                                  "bit-widths (0 turns GIR off).")
    gir_samples: int = _opt(32, "qadtr: patched images per batch that GIR is computed on (double backprop).")
    gir_noise: float = _opt(0.0, "qadtr: gradient-noise injection eta; N(0, eta/(1+t)^0.55) is added to "
                                 "every weight gradient at step t (0 = off).")
    pbat_steps: int = _opt(10, "pbat: signed-gradient steps per batch on the per-image patches.")
    pbat_step_size: float = _opt(16.0, "pbat: patch step size, in 1/255.")
    dwq_attack: str = _opt("pgd", "dwq: pgd (the paper's setting, PGD-k) or fgsm-rs (fast FGSM with random "
                                  "start, Wong et al. 2020; not the paper's setting).", DWQ_ATTACKS)
    dwq_epsilon: float = _opt(8.0, "dwq: L-inf radius, in 1/255.")
    dwq_steps: int = _opt(7, "dwq: PGD steps (fgsm-rs takes one step of 1.25 x epsilon).")
    dwq_step_size: float = _opt(2.0, "dwq: PGD step size, in 1/255.")

    def validate_params(self) -> None:
        """Raise QadtrError with one line naming the first bad value."""
        def bad(name, rule):
            raise QadtrError(f"--{name.replace('_', '-')} must be {rule}, got {getattr(self, name)!r}")

        for f in fields(DefenseParams):
            choices = f.metadata.get("choices")
            if choices and getattr(self, f.name) not in choices:
                bad(f.name, f"one of {', '.join(choices)}")
        if not 0.0 <= self.patch_fraction <= 1.0:
            bad("patch_fraction", "in [0, 1]")
        if self.patch_size_min < 1:
            bad("patch_size_min", "at least 1")
        if self.patch_size_max < self.patch_size_min:
            bad("patch_size_max", f"at least --patch-size-min ({self.patch_size_min})")
        for name in ("pool_size", "gir_samples"):
            if getattr(self, name) < 1:
                bad(name, "at least 1")
        for name in ("pool_steps", "fresh_steps", "pbat_steps", "dwq_steps"):
            if getattr(self, name) < 0:
                bad(name, "0 or more")
        for name in ("pool_step_size", "fresh_step_size", "pbat_step_size", "dwq_step_size", "dwq_epsilon"):
            if not getattr(self, name) > 0:
                bad(name, "positive")
        for name in ("gir_lambda", "gir_noise"):
            if not getattr(self, name) >= 0:
                bad(name, "0 or more")

    def dwq_label(self) -> str:
        """What a DWQ run is, stated in its config and metrics: faithful or the fast CPU setting."""
        eps = f"eps {self.dwq_epsilon:g}/255"
        if self.dwq_attack == "pgd":
            faithful = self.dwq_steps == 7 and self.dwq_epsilon == 8.0
            return f"{'faithful' if faithful else 'non-default'}: PGD-{self.dwq_steps}, {eps}, " \
                   f"step {self.dwq_step_size:g}/255"
        return f"fast (not the paper's setting): FGSM-RS, {eps}, step {1.25 * self.dwq_epsilon:g}/255"


def defense_options(command):
    """Add one click option per DefenseParams field, with its default and help."""
    for f in reversed(fields(DefenseParams)):
        choices = f.metadata.get("choices")
        kind = click.Choice(list(choices)) if choices else type(f.default)
        command = click.option(f"--{f.name.replace('_', '-')}", f.name, default=f.default, type=kind,
                               help=f.metadata["help"])(command)
    return command
