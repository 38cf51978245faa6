"""The torch device a command runs on, checked before any work (one line for a bad name or missing CUDA)."""
from __future__ import annotations

from .errors import QadtrError


def torch_device(name: str):
    import torch

    try:
        device = torch.device(name)
    except RuntimeError:
        raise QadtrError(f"unknown torch device {name!r}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise QadtrError(f"device {device} requested but CUDA is not available")
    return device
