"""Stochastic weight averaging (SWA; Izmailov et al. 2018, https://arxiv.org/abs/1803.05407).

The last ``swa_epochs`` epochs of a run train at a constant LR and the weights at the end of each are
averaged. The average sits nearer the centre of the wide, flat region that constant-LR SGD circles, which
generalises better than any single iterate. BatchNorm statistics of an average are not the average of the
statistics, so each trained bit-width's BN is re-estimated for the averaged weights before it is evaluated
or saved.
"""
from __future__ import annotations

import copy
import itertools

import torch
from torch import nn

from .calibration import reestimate_bn
from .precision import autocast
from .quant import project_weight_thresholds
from .switchable import bits as bits_ctx

# Training images the BN statistics of an averaged model are re-estimated from: 10,000 give statistics
# within noise of the full set at a fifth of the cost of a pass over CIFAR-10's 50,000.
BN_IMAGES = 10_000


class WeightAverage:
    """The running mean of a model's parameters (not its buffers), one ``update`` per averaged epoch."""

    def __init__(self):
        self.count = 0
        self.mean: dict[str, torch.Tensor] = {}

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        self.count += 1
        for name, p in model.named_parameters():
            current = p.detach().float()
            if name not in self.mean:
                self.mean[name] = current.clone()
            else:
                self.mean[name] += (current - self.mean[name]) / self.count

    @torch.no_grad()
    def averaged_model(self, model: nn.Module, bn_batches, bit_list, precision: str = "fp32",
                       fit_thresholds=project_weight_thresholds) -> nn.Module:
        """A copy of ``model`` holding the mean weights, with BN re-estimated at every width in ``bit_list``.

        ``bn_batches`` is an iterable of images (or ``(images, labels)``) augmented as in training; it is
        iterated once per bit-width. ``fit_thresholds(model)`` makes the averaged weight thresholds fit the
        averaged weights, as the trainer does after every step.
        """
        if not self.count:
            raise ValueError("no weights averaged yet")
        averaged = copy.deepcopy(model)
        for name, p in averaged.named_parameters():
            p.copy_(self.mean[name].to(p.dtype))
        fit_thresholds(averaged)  # e.g. a mean of projected thresholds can exceed the mean weights' max
        for b in bit_list:
            with bits_ctx(averaged, b), autocast(precision):
                reestimate_bn(averaged, (item[0] if isinstance(item, (tuple, list)) else item for item in bn_batches))
        averaged.eval()
        return averaged

    def state_dict(self) -> dict:
        return {"count": self.count, "mean": dict(self.mean)}

    def load_state_dict(self, state: dict) -> None:
        self.count, self.mean = int(state["count"]), dict(state["mean"])


def bn_batches(loader, batch_size: int):
    """The first ``BN_IMAGES`` images of ``loader``'s epoch 0 (a fixed, seeded sample)."""
    loader.set_epoch(0)
    return list(itertools.islice(loader, max(1, -(-BN_IMAGES // batch_size))))
