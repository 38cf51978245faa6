"""Post-training calibration: a float checkpoint becomes a working quantized model without training.

For each bit-width: quantizer thresholds are set from data (MSE-optimal per
tensor / per channel, layer by layer so each sees the already-quantized
upstream), then that bit-width's BatchNorm statistics are re-estimated, and
both steps run once more because new BN statistics move the activations.

Feed it batches augmented the way training augmented them (``BatchLoader(...,
augment=True)``, the CLI default): the float model's BN statistics were
accumulated over augmented batches, and re-estimating them from plain images
measured 2 to 3 points worse at 8 and 4 bits on ResNet-20 (docs/results.md).
"""
from __future__ import annotations

import itertools

import torch
from torch import nn

from ..quant import FLOAT_BITS, SwitchableThreshold
from ..switchable import SwitchableBatchNorm2d, set_bits

__all__ = ["calibrate", "reestimate_bn"]


def _reset_thresholds(model: nn.Module) -> None:
    for m in model.modules():
        if isinstance(m, SwitchableThreshold):
            m.reset()


@torch.no_grad()
def reestimate_bn(model: nn.Module, batches) -> None:
    """Recompute the active bit-width's BatchNorm statistics as a plain average over ``batches``.

    Each BN keeps its own momentum for later training; the model is left in eval mode.
    """
    bns = [m.bns[m.active] for m in model.modules() if isinstance(m, SwitchableBatchNorm2d)]
    momenta = [bn.momentum for bn in bns]
    model.eval()
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None  # cumulative average over all calibration batches
        bn.train()
    for x in batches:
        model(x)
    for bn, momentum in zip(bns, momenta):
        bn.momentum = momentum
    model.eval()


@torch.no_grad()
def calibrate(model: nn.Module, loader, bits, num_batches: int = 8, rounds: int = 2,
              bn_only: bool = False) -> nn.Module:
    """Calibrate ``model`` in place at every bit-width in ``bits`` from ``loader`` images in [0, 1].

    ``loader`` yields ``(images, labels)`` or images; ``num_batches`` of them are used. ``bn_only`` keeps
    the (trained) quantizer thresholds and only re-estimates BN statistics: after QAT, the running
    statistics that training's momentum left behind lag the final weights, most at 2 bits, where a
    re-estimate measured several points of test accuracy (docs/results.md 1f).
    """
    batches = []
    for item in itertools.islice(loader, num_batches):
        batches.append(item[0] if isinstance(item, (tuple, list)) else item)
    if not batches:
        raise ValueError("calibration needs at least one batch of images")
    previous = model.active_bits
    for b in bits:
        set_bits(model, b)
        if bn_only:
            reestimate_bn(model, batches)
            continue
        for _ in range(rounds if b != FLOAT_BITS else 1):
            if b != FLOAT_BITS:
                _reset_thresholds(model)
                model.eval()
                model(torch.cat(batches[:2]))  # thresholds initialise on this forward
            reestimate_bn(model, batches)
    set_bits(model, *previous)
    return model
