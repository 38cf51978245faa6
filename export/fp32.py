"""The float ONNX export of the same network (float path, BN folded): the device's latency baseline."""
from __future__ import annotations

import onnx
import torch

from .onnx_io import IMAGE_SHAPE, OPSET, export_kwargs


def export_fp32(deploy_model: torch.nn.Module, path, opset: int = OPSET) -> None:
    """Write ``deploy_model`` built at bits 32 (every quantizer bypassed) as plain float ONNX."""
    kwargs = export_kwargs(opset)
    with torch.no_grad():
        torch.onnx.export(deploy_model, (torch.rand(1, *IMAGE_SHAPE),), str(path), **kwargs)
    onnx.checker.check_model(onnx.load(str(path)), full_check=True)
