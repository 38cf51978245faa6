"""QCDQ export (QuantizeLinear -> Clip -> DequantizeLinear) for ONNX Runtime's integer kernels."""
from __future__ import annotations

import tempfile
from pathlib import Path

import onnx
import torch
from brevitas.export import export_onnx_qcdq

from .conv_integer import convs_to_conv_integer
from .integer_bias import quantize_biases
from .onnx_io import IMAGE_SHAPE, OPSET, export_kwargs
from .rewrite import unsign_activation_clips

# qlinearconv: ORT fuses DQ-Conv-Q into QLinearConv (fastest; the bias is rounded to int32).
# convinteger: ConvInteger + float scale and bias (the bias stays exact; see conv_integer).
CONV_KERNELS = ("qlinearconv", "convinteger")


def export_qcdq(deploy_model: torch.nn.Module, path, conv_kernel: str = "qlinearconv", opset: int = OPSET) -> dict:
    """Write ``deploy_model`` (from ``build_deploy_model``) as QCDQ ONNX at ``path``; return what was rewritten.

    Exact rewrites follow brevitas's export, in this order: signed low-bit activation Clips become
    zero-point-shifted unsigned ones (``rewrite``); with ``convinteger`` every conv becomes ConvInteger
    with a float epilogue (``conv_integer``); the remaining Conv/Gemm get int32 biases on a refined
    weight grid (``integer_bias``).
    """
    if conv_kernel not in CONV_KERNELS:
        raise ValueError(f"unknown conv kernel {conv_kernel!r}: choose from {', '.join(CONV_KERNELS)}")
    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "raw.onnx"
        export_onnx_qcdq(deploy_model, args=torch.rand(1, *IMAGE_SHAPE), export_path=str(raw), **export_kwargs(opset))
        model = onnx.load(str(raw))
    model, unsigned = unsign_activation_clips(model)
    conv_integer = 0
    if conv_kernel == "convinteger":
        model, conv_integer = convs_to_conv_integer(model)
    model, bias_stats = quantize_biases(model)
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(path))
    return {"conv_kernel": conv_kernel, "conv_integer_nodes": conv_integer, **bias_stats, "clips_unsigned": unsigned}
