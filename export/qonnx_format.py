"""QONNX export: ``Quant`` nodes at the true bit-width, checked with qonnx's own executor.

QONNX keeps 2..8-bit quantizers as they are (FINN reads them); ORT cannot run ``Quant``, so the file is
also converted with qonnx's ``QuantToQCDQ`` and that conversion is what ORT checks.
"""
from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import onnx
import torch
from brevitas.export import export_qonnx
from qonnx.core.modelwrapper import ModelWrapper
from qonnx.core.onnx_exec import execute_onnx
from qonnx.transformation.fold_constants import FoldConstants
from qonnx.transformation.general import GiveUniqueNodeNames, RemoveStaticGraphInputs, RemoveUnusedTensors
from qonnx.transformation.infer_shapes import InferShapes
from qonnx.transformation.qonnx_to_qcdq import QuantToQCDQ

from .onnx_io import IMAGE_SHAPE, INPUT_NAME, OPSET, export_kwargs

QUANT_OP_TYPES = ("Quant", "BipolarQuant", "QuantizeLinear", "DequantizeLinear")


def export_qonnx_model(deploy_model: torch.nn.Module, path, opset: int = OPSET) -> None:
    """Write ``deploy_model`` (from ``build_deploy_model``; its biases stay float) as QONNX."""
    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "raw.onnx"
        export_qonnx(deploy_model, args=torch.rand(1, *IMAGE_SHAPE), export_path=str(raw), **export_kwargs(opset))
        model = _fold_constants(ModelWrapper(str(raw))).model
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def _fold_constants(model: ModelWrapper) -> ModelWrapper:
    """Fold the Identity nodes brevitas writes for shared bit-widths, so every Quant input is an initializer
    (as QuantToQCDQ and FINN expect). qonnx's ``cleanup_model`` does this too but renames the graph's
    input and output, which would break the I/O contract."""
    for t in (InferShapes(), FoldConstants(exclude_op_types=list(QUANT_OP_TYPES)), RemoveUnusedTensors(),
              RemoveStaticGraphInputs(), GiveUniqueNodeNames()):
        model = model.transform(t)
    return model


def quant_bit_widths(path) -> list[int]:
    """The bit-widths of the ``Quant`` nodes of a QONNX file."""
    model = ModelWrapper(str(path))
    return sorted({int(model.get_initializer(n.input[3])) for n in model.graph.node if n.op_type == "Quant"})


def run_qonnx(path, images: np.ndarray) -> np.ndarray:
    """Logits from qonnx's reference executor, one image at a time (it is slow, use a few)."""
    model = ModelWrapper(str(path))
    # The executor sizes tensors from the declared shapes and reads a symbolic batch as 0: pin it to 1.
    for value in [*model.graph.input, *model.graph.output, *model.graph.value_info]:
        dims = value.type.tensor_type.shape.dim
        if dims and dims[0].dim_param:
            dims[0].dim_value = 1
    out_name = model.graph.output[0].name
    return np.concatenate([execute_onnx(model, {INPUT_NAME: images[i:i + 1].astype(np.float32)})[out_name]
                           for i in range(len(images))])


def qonnx_to_qcdq(path, out_path) -> None:
    """qonnx's QuantToQCDQ conversion of a QONNX file, for ONNX Runtime."""
    model = ModelWrapper(str(path)).transform(QuantToQCDQ())
    onnx.checker.check_model(model.model)
    onnx.save(model.model, str(out_path))
