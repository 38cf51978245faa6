"""ONNX rewrite: a quantized conv as ``ConvInteger`` plus a float epilogue, so its bias is not rounded.

``QLinearConv`` adds the bias as int32 on the accumulator grid ``input_scale * weight_scale``. Below 8-bit
activations that rounding is not negligible: measured on ResNet-20 (CIFAR-10, W4A4), with the weight grid
already refined 18x (``integer_bias``), 2% of top-1 decisions changed, because each activation that flips
moves by 1/15 of its range. ``ConvInteger`` accumulates the same integers exactly and leaves the rest to
float ops: ``Cast -> Mul(input_scale * weight_scale) -> Add(float bias)``, which is the trained conv up to
float rounding. It is still an integer kernel (ORT runs the conv as integer GEMM).
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

CONV_ATTRIBUTES = ("dilations", "group", "kernel_shape", "pads", "strides", "auto_pad")
WEIGHT_ZERO_POINT = 128


def _remove_dead(graph: onnx.GraphProto) -> None:
    """Drop nodes whose outputs nobody reads, then unused initializers."""
    outputs = {o.name for o in graph.output}
    while True:
        used = {name for n in graph.node for name in n.input} | outputs
        dead = [n for n in graph.node if not any(o in used for o in n.output)]
        if not dead:
            break
        for n in dead:
            graph.node.remove(n)
    used = {name for n in graph.node for name in n.input}
    for init in [i for i in graph.initializer if i.name not in used]:
        graph.initializer.remove(init)


def convs_to_conv_integer(model: onnx.ModelProto, select=None) -> tuple[onnx.ModelProto, int]:
    """Rewrite each ``DQ(x) -> Conv(DQ(Clip(int8 W)), float bias)`` chosen by ``select(conv_node)``.

    Expects brevitas's QCDQ layout (float biases, per-channel weight scales on axis 0). Returns the model
    (changed in place) and the number of convs rewritten.
    """
    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    producers = {out: node for node in graph.node for out in node.output}
    count = 0
    for conv in list(graph.node):
        if conv.op_type != "Conv" or len(conv.input) < 3 or (select is not None and not select(conv)):
            continue
        dq_x, dq_w = producers.get(conv.input[0]), producers.get(conv.input[1])
        if dq_x is None or dq_w is None or dq_x.op_type != "DequantizeLinear" or dq_w.op_type != "DequantizeLinear":
            continue
        clip = producers.get(dq_w.input[0])
        if clip is None or clip.op_type != "Clip" or clip.input[0] not in inits or conv.input[2] not in inits:
            continue
        lo, hi = (int(numpy_helper.to_array(inits[n])) for n in clip.input[1:3])
        w_int = np.clip(numpy_helper.to_array(inits[clip.input[0]]), lo, hi)
        s_in = numpy_helper.to_array(inits[dq_x.input[1]]).astype(np.float32)
        s_w = numpy_helper.to_array(inits[dq_w.input[1]]).astype(np.float32)
        bias = numpy_helper.to_array(inits[conv.input[2]]).astype(np.float32)
        if w_int.dtype != np.int8 or s_in.size != 1:
            continue
        channels = w_int.shape[0]
        prefix = conv.name or conv.output[0]
        # Weights as uint8 with zero-point 128: the same integers (w + 128 - 128), but ORT's ConvInteger has
        # a fast u8u8 path and a slow s8 one (measured 7x on a 32-channel 3x3 conv).
        w_uint8 = (w_int.astype(np.int16) + WEIGHT_ZERO_POINT).astype(np.uint8)
        for name, value in ((f"{prefix}_weight_uint8", w_uint8),
                            (f"{prefix}_weight_zero_point", np.array(WEIGHT_ZERO_POINT, dtype=np.uint8)),
                            (f"{prefix}_accumulator_scale", (s_in * s_w).reshape(1, channels, 1, 1)),
                            (f"{prefix}_bias", bias.reshape(1, channels, 1, 1))):
            graph.initializer.append(numpy_helper.from_array(value, name))
        attrs = {a.name: helper.get_attribute_value(a) for a in conv.attribute if a.name in CONV_ATTRIBUTES}
        x_zero_point = dq_x.input[2] if len(dq_x.input) > 2 else ""
        nodes = [
            helper.make_node("ConvInteger", [dq_x.input[0], f"{prefix}_weight_uint8", x_zero_point,
                                             f"{prefix}_weight_zero_point"],
                             [f"{prefix}_int32"], name=f"{prefix}_integer", **attrs),
            helper.make_node("Cast", [f"{prefix}_int32"], [f"{prefix}_float"], name=f"{prefix}_cast",
                             to=onnx.TensorProto.FLOAT),
            helper.make_node("Mul", [f"{prefix}_float", f"{prefix}_accumulator_scale"], [f"{prefix}_scaled"],
                             name=f"{prefix}_scale"),
            helper.make_node("Add", [f"{prefix}_scaled", f"{prefix}_bias"], [conv.output[0]],
                             name=f"{prefix}_bias_add"),
        ]
        index = list(graph.node).index(conv)
        graph.node.remove(conv)
        for offset, node in enumerate(nodes):
            graph.node.insert(index + offset, node)
        count += 1
    if count:
        _remove_dead(graph)
        del graph.value_info[:]
    return model, count
