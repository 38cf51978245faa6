"""ONNX rewrite: signed low-bit activation Clips become zero-point-shifted unsigned ones.

Below 8 bits, brevitas writes an activation as ``QuantizeLinear -> Clip -> DequantizeLinear`` with the
Clip in the integer domain. ONNX Runtime runs int8 activations through its S8-to-U8 rewrite, which needs
each QuantizeLinear to feed its DequantizeLinear directly, so a signed Clip in between leaves the
neighbouring convs as float ``Conv``. An unsigned Clip does not block fusion.

A signed ``b``-bit quantizer with zero-point ``z`` and range ``[lo, hi]`` is the same function as an
unsigned one with zero-point ``z + s`` and range ``[lo + s, hi + s]``, for the shift ``s = -lo``:
``clamp(round(x/scale) + z + s, lo + s, hi + s) - (z + s) = clamp(round(x/scale) + z, lo, hi) - z``
(the uint8 saturation at 0..255 never binds because ``lo + s = 0`` and ``hi + s <= 255``). So the rewrite
changes the integer encoding only, never a value (tested against the un-rewritten graph).
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper


def _consumers(graph: onnx.GraphProto) -> dict[str, list[onnx.NodeProto]]:
    out: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            out.setdefault(name, []).append(node)
    return out


def _constant(graph_inits: dict, name: str):
    return numpy_helper.to_array(graph_inits[name]) if name in graph_inits else None


def unsign_activation_clips(model: onnx.ModelProto) -> tuple[onnx.ModelProto, int]:
    """Rewrite every ``Q(int8) -> Clip -> DQ`` chain on an activation to its unsigned twin.

    Only chains whose Q output feeds just the Clip and whose Clip output feeds only DequantizeLinears with
    the same scale and zero-point are touched. Weights (int8 initializer -> Clip -> DQ) are left alone:
    they are constants that ORT folds. Returns the model (changed in place) and the number rewritten.
    """
    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    consumers = _consumers(graph)
    count = 0
    for q in list(graph.node):
        if q.op_type != "QuantizeLinear" or len(q.input) < 3:
            continue
        zp = _constant(inits, q.input[2])
        if zp is None or zp.dtype != np.int8 or zp.size != 1:
            continue
        users = consumers.get(q.output[0], [])
        if len(users) != 1 or users[0].op_type != "Clip" or len(users[0].input) < 3:
            continue
        clip = users[0]
        lo, hi = _constant(inits, clip.input[1]), _constant(inits, clip.input[2])
        dqs = consumers.get(clip.output[0], [])
        if lo is None or hi is None or not dqs or any(
                d.op_type != "DequantizeLinear" or d.input[1] != q.input[1] or d.input[2] != q.input[2]
                for d in dqs):
            continue
        shift = -int(lo)
        zp_u8 = int(zp.reshape(())) + shift
        if not (0 <= zp_u8 <= 255 and 0 <= int(hi) + shift <= 255):
            continue
        prefix = f"{q.name or q.output[0]}_unsigned"
        new = {
            "zero_point": np.array(zp_u8, dtype=np.uint8),
            "clip_min": np.array(int(lo) + shift, dtype=np.uint8),
            "clip_max": np.array(int(hi) + shift, dtype=np.uint8),
        }
        for key, value in new.items():
            graph.initializer.append(numpy_helper.from_array(value, f"{prefix}_{key}"))
        q.input[2] = f"{prefix}_zero_point"
        clip.input[1], clip.input[2] = f"{prefix}_clip_min", f"{prefix}_clip_max"
        for d in dqs:
            d.input[2] = f"{prefix}_zero_point"
        count += 1
    # Shape inference wrote int8 value_info for the rewritten tensors: drop stale entries.
    if count:
        del graph.value_info[:]
    return model, count
