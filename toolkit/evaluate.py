"""Clean accuracy per bit-width."""
from __future__ import annotations

import torch

from .switchable import bits as bits_ctx


@torch.no_grad()
def accuracy(model, loader) -> float:
    model.eval()
    correct = total = 0
    for x, y in loader:
        correct += (model(x).argmax(1) == y).sum().item()
        total += len(y)
    return correct / max(total, 1)


def accuracy_per_bits(model, loader, bit_list) -> dict[int, float]:
    out = {}
    for b in bit_list:
        with bits_ctx(model, b):
            out[int(b)] = accuracy(model, loader)
    return out
