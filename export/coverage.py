"""Integer-kernel coverage: how many Conv/Gemm nodes ONNX Runtime really runs as integer ops.

Read from the graph ORT writes after its optimizations (``SessionOptions.optimized_model_filepath``),
which is what runs: a QCDQ graph only states intent, ORT decides what fuses.
"""
from __future__ import annotations

import collections
import tempfile
from pathlib import Path

import onnx
import onnxruntime as ort

INTEGER_OPS = frozenset({"QLinearConv", "NhwcQLinearConv", "QGemm", "ConvInteger", "MatMulInteger",
                         "QLinearMatMul", "MatMulIntegerToFloat", "DynamicQuantizeMatMul"})
FLOAT_OPS = frozenset({"Conv", "FusedConv", "NhwcFusedConv", "Gemm", "FusedGemm", "MatMul", "FusedMatMul"})


def optimized_graph(path, level=ort.GraphOptimizationLevel.ORT_ENABLE_ALL) -> onnx.ModelProto:
    with tempfile.TemporaryDirectory() as tmp:
        so = ort.SessionOptions()
        so.graph_optimization_level = level
        so.optimized_model_filepath = str(Path(tmp) / "optimized.onnx")
        so.intra_op_num_threads = 1
        so.log_severity_level = 3  # ORT warns that an NCHWc-optimized graph is machine-specific: expected here
        ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        return onnx.load(so.optimized_model_filepath)


def integer_coverage(path) -> dict:
    """Share of Conv/Gemm-like nodes that run as integer kernels in ORT's optimized graph of ``path``."""
    ops = collections.Counter(n.op_type for n in optimized_graph(path).graph.node)
    integer = sum(v for k, v in ops.items() if k in INTEGER_OPS)
    floating = sum(v for k, v in ops.items() if k in FLOAT_OPS)
    total = integer + floating
    return {
        "integer_nodes": integer,
        "float_nodes": floating,
        "share": integer / total if total else 0.0,
        "optimized_ops": dict(sorted(ops.items())),
    }
