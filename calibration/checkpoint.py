"""PTQ of a checkpoint: the model it holds, calibrated at the named bit-widths, as a new checkpoint payload.

The calibrated model's bit set is the source's plus the named widths: a width the source already has and
that is not named keeps its trained thresholds and BatchNorm, so calibrating a 4-bit QAT checkpoint at
8 and 2 bits adds those widths without touching the trained 4-bit one.
"""
from __future__ import annotations

from ..checkpoint import model_from_checkpoint
from ..data.loader import BatchLoader
from ..errors import QadtrError
from ..io import versions
from ..quant import FLOAT_BITS
from . import calibrate


def calibrate_checkpoint(payload: dict, bits, train_set, *, batch_size: int = 128, num_batches: int | None = None,
                         augment: bool = True, seed: int = 0, source_sha256: str | None = None,
                         bn_only: bool = False):
    """Return ``(model, payload)``: the calibrated model and the checkpoint payload that saves it.

    ``bits`` may include 32: the float path then gets fresh BN statistics (it has no thresholds), which a
    model trained only at a quantized width needs before it runs in float. ``bn_only`` re-estimates the BN
    statistics of widths the checkpoint was trained or calibrated at and keeps their thresholds.
    ``num_batches`` defaults to 8 for PTQ and to 80 (about 10,000 images, as SWA's re-estimate uses) for
    ``bn_only``, where BN statistics are the whole repair (docs/method.md, Calibration).
    """
    bits = sorted(set(bits), reverse=True)
    if num_batches is None:
        num_batches = 80 if bn_only else 8
    if bn_only:
        untrained = sorted(set(bits) - set(payload.get("trained_bits", [])) - {FLOAT_BITS})
        if untrained:
            raise QadtrError(f"--bn-only refreshes trained widths; the checkpoint was never trained or calibrated "
                             f"at {','.join(map(str, untrained))} bits (calibrate them without --bn-only)")
    model_bits = sorted(set(payload["config"]["model_bits"]) | set(bits) | {FLOAT_BITS})
    model = model_from_checkpoint(payload, bits=model_bits)
    # Augmented like training by default: the BN statistics being replaced were accumulated that way.
    calibrate(model, BatchLoader(train_set, batch_size, shuffle=True, augment=augment, seed=seed), bits,
              num_batches=num_batches, bn_only=bn_only)
    label = "bn" if bn_only else "ptq"
    config = {**payload["config"], "model_bits": model_bits, "defense": f"{label}({payload['config']['defense']})",
              "policy": model.policy.as_dict()}
    trained = sorted(set(payload.get("trained_bits", [])) | set(bits))  # a stale float path is not "trained"
    out = {"config": config, "trained_bits": trained, "classes": payload.get("classes"),
           "epoch": payload.get("epoch", 0), "model": model.state_dict(), "metrics": payload.get("metrics", []),
           "versions": versions(),
           "calibration": {"bits": bits, "bn_only": bn_only, "num_batches": num_batches, "batch_size": batch_size,
                           "augment": augment, "seed": seed, "source_sha256": source_sha256}}
    return model, out
