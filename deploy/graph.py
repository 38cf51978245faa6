"""What ONNX Runtime actually runs: the optimized graph, its operator histogram, integer-kernel coverage.

Coverage is read from the graph ORT writes to ``SessionOptions.optimized_model_filepath``
after its own fusions, not from the exported graph: a QDQ pair around a Conv only
counts as integer if ORT really fused it into QLinearConv.
"""
from __future__ import annotations

import re
import tempfile
from collections import Counter
from pathlib import Path

from .session import OrtConfig, create_session

# Nodes that do the multiply-accumulate work, by op_type in any domain (ORT moves some into
# com.microsoft or com.microsoft.nchwc when it fuses or re-lays them out).
INTEGER_MAC_OPS = frozenset({"QLinearConv", "QGemm", "ConvInteger", "MatMulInteger", "QLinearMatMul",
                             "MatMulIntegerToFloat", "DynamicQuantizeMatMul", "NhwcQLinearConv"})
FLOAT_MAC_OPS = frozenset({"Conv", "FusedConv", "NhwcConv", "NhwcFusedConv", "Gemm", "FusedGemm", "MatMul",
                           "FusedMatMul", "ConvTranspose"})
QONNX_OPS = frozenset({"Quant", "BipolarQuant", "Trunc"})
QUANT_OPS = frozenset({"QuantizeLinear", "DequantizeLinear"}) | QONNX_OPS | INTEGER_MAC_OPS


def op_key(node) -> str:
    """``Conv`` for the default domain, ``com.microsoft.nchwc/Conv`` otherwise."""
    return f"{node.domain}/{node.op_type}" if node.domain not in ("", "ai.onnx") else node.op_type


def op_histogram(model) -> dict[str, int]:
    """Operator counts of an ``onnx.ModelProto``, most frequent first."""
    counts = Counter(op_key(n) for n in model.graph.node)
    return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))


def integer_coverage(histogram: dict[str, int]) -> dict:
    """Share of MAC nodes (Conv/Gemm/MatMul and their fused forms) that run as integer kernels."""
    integer = sum(c for k, c in histogram.items() if k.rsplit("/", 1)[-1] in INTEGER_MAC_OPS)
    floating = sum(c for k, c in histogram.items() if k.rsplit("/", 1)[-1] in FLOAT_MAC_OPS)
    total = integer + floating
    return {"integer_mac_nodes": integer, "float_mac_nodes": floating,
            "coverage": integer / total if total else None}


def is_quantized(model) -> bool:
    """True when the graph holds any quantization node (QDQ, QONNX Quant or an integer kernel)."""
    return any(n.op_type in QUANT_OPS for n in model.graph.node)


def optimized_graph_summary(path: str | Path, config: OrtConfig) -> dict:
    """Build a session that dumps its optimized graph; return its histogram and coverage."""
    import onnx

    with tempfile.TemporaryDirectory(prefix="qadtr-opt-") as tmp:
        dumped = Path(tmp) / "optimized.onnx"
        create_session(path, config, str(dumped))
        optimized = onnx.load(str(dumped), load_external_data=False)
    hist = op_histogram(optimized)
    return {"graph_optimization": config.graph_optimization, "op_histogram": hist, **integer_coverage(hist)}


def bits_from_name(name: str) -> dict | None:
    """``resnet20_w4a8.qcdq`` -> {"weight": 4, "activation": 8}; ``...fp32`` -> 32/32; else None."""
    m = re.search(r"(?:^|[^a-z0-9])w(\d{1,2})a(\d{1,2})(?:$|[^0-9])", name.lower())
    if m:
        return {"weight": int(m.group(1)), "activation": int(m.group(2))}
    if re.search(r"(?:^|[^a-z0-9])(fp32|float32|float)(?:$|[^a-z0-9])", name.lower()):
        return {"weight": 32, "activation": 32}
    return None


def computed_weight_bytes(model, weight_bits: int | None) -> int:
    """Weight storage at the nominal bit-width, computed from the graph (the manifest's figure wins).

    Counts the weights of MAC nodes, as the exporter's ``packed_weight_bytes`` does (biases left out):
    an integer initializer that a DequantizeLinear turns into a weight counts at ``weight_bits``, a
    float initializer read directly as a weight counts at 32 bits. Scales and zero points are left
    out, as FINN-style hardware folds them into thresholds.
    """
    from onnx import helper

    inits = {i.name: i for i in model.graph.initializer}
    dequantized = {n.output[0]: n.input[0] for n in model.graph.node
                   if n.op_type == "DequantizeLinear" and n.input and n.input[0] in inits}
    counted: dict[str, int] = {}
    for node in model.graph.node:
        if node.op_type not in FLOAT_MAC_OPS or len(node.input) < 2:
            continue
        name = node.input[1]
        if name in dequantized:
            t = inits[dequantized[name]]
            width = helper.tensor_dtype_to_np_dtype(t.data_type).itemsize * 8
            # Nominal bits only narrow a stored integer tensor (a 4-bit weight kept in int8), never widen it.
            counted[t.name] = _numel(t) * (min(weight_bits, width) if weight_bits else width)
        elif name in inits and inits[name].data_type == 1:  # FLOAT
            counted[name] = _numel(inits[name]) * 32
    return (sum(counted.values()) + 7) // 8


def _numel(tensor) -> int:
    n = 1
    for d in tensor.dims:
        n *= d
    return n
