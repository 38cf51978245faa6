"""ONNX rewrite: int32 biases on a grid fine enough that the integer model stays the trained one.

QLinearConv/QGemm add an int32 bias on the accumulator's grid ``g = input_scale * weight_scale``, so a
float bias (the folded BN shift) is rounded by up to ``g/2``. At low bit-widths ``g`` is coarse (2-bit
weights have one level, so ``weight_scale`` is the whole threshold) and the rounding flips activations at
the next quantizer: measured on the tiny net at W2A2, 8% of top-1 decisions changed.

The weights are constants, so their integers can be stored multiplied by ``K = floor(127 / qmax)`` with
the scale divided by ``K``: the dequantized weights are the same values (``(k*K) * (s/K)``), the int8
range is used in full, and ``g`` shrinks by ``K`` (127x at 2 bits), which makes the bias rounding as fine
as at 8 bits. Nominal bit-width is unchanged: the weights still take ``2^w - 1`` values per channel.

A layer whose output is not requantized (the classifier, whose output is the logits) keeps its bias as a
float ``Add`` after the integer ``QGemm`` instead: nothing downstream rounds it, so int32 would only add error.
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

INT8_MAX = 127
INT32 = np.iinfo(np.int32)


def _producers(graph: onnx.GraphProto) -> dict[str, onnx.NodeProto]:
    return {out: node for node in graph.node for out in node.output}


def _add_initializer(graph: onnx.GraphProto, name: str, value: np.ndarray) -> str:
    graph.initializer.append(numpy_helper.from_array(value, name))
    return name


def quantize_biases(model: onnx.ModelProto) -> tuple[onnx.ModelProto, dict]:
    """Refine the int8 weight grid of every Conv/Gemm and turn its float bias into an int32 DequantizeLinear.

    Expects brevitas's QCDQ layout: input ``DequantizeLinear`` (per-tensor scale), weight ``int8 initializer
    -> Clip -> DequantizeLinear`` (per-channel scale, axis 0), float bias initializer. Returns the model
    (changed in place) and ``{"int32_biases": n, "weight_multipliers": {K: layers}}``.
    """
    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    producers = _producers(graph)
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for n in graph.node:
        for name in n.input:
            consumers.setdefault(name, []).append(n)
    new_nodes: list[tuple[onnx.NodeProto, onnx.NodeProto]] = []
    float_after: list[tuple[onnx.NodeProto, onnx.NodeProto]] = []
    multipliers: dict[int, int] = {}
    biases = 0
    for node in graph.node:
        if node.op_type not in ("Conv", "Gemm"):
            continue
        dq_x, dq_w = producers.get(node.input[0]), producers.get(node.input[1])
        if dq_x is None or dq_w is None or dq_x.op_type != "DequantizeLinear" or dq_w.op_type != "DequantizeLinear":
            continue
        clip = producers.get(dq_w.input[0])
        if clip is None or clip.op_type != "Clip" or clip.input[0] not in inits:
            continue
        w_int = numpy_helper.to_array(inits[clip.input[0]])
        lo, hi = (int(numpy_helper.to_array(inits[n])) for n in clip.input[1:3])
        s_in = numpy_helper.to_array(inits[dq_x.input[1]]).astype(np.float32)
        s_w = numpy_helper.to_array(inits[dq_w.input[1]]).astype(np.float32)
        if w_int.dtype != np.int8 or s_in.size != 1:
            continue
        k = max(1, INT8_MAX // max(abs(lo), abs(hi), 1))
        prefix = node.name or node.output[0]
        if k > 1:
            scaled = (np.clip(w_int.astype(np.int32), lo, hi) * k).astype(np.int8)
            clip.input[0] = _add_initializer(graph, f"{prefix}_weight_int8", scaled)
            clip.input[1] = _add_initializer(graph, f"{prefix}_weight_min", np.array(lo * k, dtype=np.int8))
            clip.input[2] = _add_initializer(graph, f"{prefix}_weight_max", np.array(hi * k, dtype=np.int8))
            s_w = (s_w / np.float32(k)).astype(np.float32)
            dq_w.input[1] = _add_initializer(graph, f"{prefix}_weight_scale", s_w)
        multipliers[k] = multipliers.get(k, 0) + 1
        users = consumers.get(node.output[0], [])
        requantized = bool(users) and all(c.op_type in ("QuantizeLinear", "Relu") for c in users)
        if len(node.input) > 2 and node.input[2] in inits and not requantized:
            bias_name, out = node.input[2], node.output[0]
            del node.input[2]
            node.output[0] = f"{prefix}_without_bias"
            float_after.append((node, helper.make_node("Add", [node.output[0], bias_name], [out],
                                                       name=f"{prefix}_float_bias")))
        elif len(node.input) > 2 and node.input[2] in inits:
            bias = numpy_helper.to_array(inits[node.input[2]]).astype(np.float64)
            scale = np.broadcast_to(s_in * s_w, bias.shape).astype(np.float32)
            q = np.clip(np.round(bias / scale.astype(np.float64)), INT32.min, INT32.max).astype(np.int32)
            names = [_add_initializer(graph, f"{prefix}_bias_int32", q),
                     _add_initializer(graph, f"{prefix}_bias_scale", scale),
                     _add_initializer(graph, f"{prefix}_bias_zero_point", np.zeros_like(q))]
            out = f"{prefix}_bias_dequantized"
            new_nodes.append((node, helper.make_node("DequantizeLinear", names, [out], name=f"{prefix}_bias_dq",
                                                     axis=0)))
            node.input[2] = out
            biases += 1
    for consumer, dq in new_nodes:
        graph.node.insert(list(graph.node).index(consumer), dq)
    for producer, add in float_after:
        graph.node.insert(list(graph.node).index(producer) + 1, add)
    used = {name for n in graph.node for name in n.input}
    unused = [i for i in graph.initializer if i.name not in used]
    for init in unused:
        graph.initializer.remove(init)
    if float_after:
        del graph.value_info[:]  # the Gemm output was renamed
    return model, {"int32_biases": biases, "float_biases": len(float_after),
                   "weight_multipliers": {str(k): v for k, v in sorted(multipliers.items())}}
