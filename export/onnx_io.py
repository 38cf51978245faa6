"""The ONNX input/output contract every exported model follows, and the torch.onnx arguments that give it."""
from __future__ import annotations

INPUT_NAME = "input"
OUTPUT_NAME = "logits"
OPSET = 17
IMAGE_SHAPE = (3, 32, 32)


def export_kwargs(opset: int = OPSET) -> dict:
    """TorchScript exporter (``dynamo=False``), dynamic batch, initializers not graph inputs.

    ``keep_initializers_as_inputs=True`` (brevitas's default) makes every weight an overridable input,
    which ORT then cannot treat as constant, so it cannot fold the weight quantization or fuse QLinearConv.
    """
    return {
        "dynamo": False,
        "keep_initializers_as_inputs": False,
        "opset_version": opset,
        "input_names": [INPUT_NAME],
        "output_names": [OUTPUT_NAME],
        "dynamic_axes": {INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
    }


def io_contract(num_classes: int, classes) -> dict:
    return {
        "input": {"name": INPUT_NAME, "dtype": "float32", "shape": ["N", *IMAGE_SHAPE], "range": [0.0, 1.0],
                  "layout": "NCHW", "color": "RGB", "normalization": "inside the model"},
        "output": {"name": OUTPUT_NAME, "dtype": "float32", "shape": ["N", num_classes], "meaning": "logits"},
        "dynamic_batch": True,
        "classes": list(classes),
    }
