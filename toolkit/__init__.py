"""qadtr: harden quantized image classifiers against adversarial patches, export them
as integer ONNX models, and check robustness and latency on the device.

Importing ``qadtr`` does not import torch: the training API loads on first use,
so the device side (``qadtr.deploy``) runs where only onnxruntime is installed.
"""
from __future__ import annotations

import importlib
import logging
import warnings

# brevitas imports torch.utils.cpp_extension, which warns "No CUDA runtime is found" on CPU-only
# machines. It is noise on every CLI call and breaks the one-line error contract, so hush it.
logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
# brevitas.graph warns that an optional CUDA-only package is missing; it changes nothing here.
warnings.filterwarnings("ignore", message="fast_hadamard_transform package not found")

__version__ = "0.1.0"

_LAZY = {
    "set_bits": "qadtr.switchable",
    "bits": "qadtr.switchable",
    "get_bits": "qadtr.switchable",
    "create_model": "qadtr.models",
    "list_models": "qadtr.models",
    "register_model": "qadtr.models",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'qadtr' has no attribute {name!r}")
