"""QONNX (Quant nodes at the true bit-width, qonnx's executor, QuantToQCDQ for ORT) and the fp32 baseline."""
import numpy as np
import onnx
import pytest
from qadtr.export.coverage import integer_coverage
from qadtr.export.deploy import build_deploy_model
from qadtr.export.fp32 import export_fp32
from qadtr.export.parity import ort_logits, ort_session
from qadtr.export.pipeline import torch_logits
from qadtr.export.qonnx_format import export_qonnx_model, qonnx_to_qcdq, quant_bit_widths, run_qonnx


@pytest.mark.parametrize("w, a", [(2, 2), (4, 8)])
def test_qonnx_keeps_true_bit_widths_and_matches_pytorch(calibrated_tiny, synthetic_images, tmp_path, w, a):
    _, model = calibrated_tiny
    images, _ = synthetic_images
    path = tmp_path / "m.qonnx.onnx"
    export_qonnx_model(build_deploy_model(model, w, a), path)
    onnx.checker.check_model(onnx.load(str(path)))
    # Low-bit weights and activations, plus the fixed 8-bit input, stem, classifier and add operands.
    assert quant_bit_widths(path) == sorted({w, a, 8})

    reference = torch_logits(model, images[:3], w, a)
    np.testing.assert_allclose(run_qonnx(path, images[:3]), reference, atol=1e-4, rtol=1e-4)

    converted = tmp_path / "m.as_qcdq.onnx"
    qonnx_to_qcdq(path, converted)
    assert not any(n.op_type == "Quant" for n in onnx.load(str(converted)).graph.node)
    logits = ort_logits(ort_session(converted), images)
    assert logits.shape == (len(images), 10) and np.isfinite(logits).all()


def test_fp32_export_is_the_float_path(calibrated_tiny, synthetic_images, tmp_path):
    _, model = calibrated_tiny
    images, _ = synthetic_images
    path = tmp_path / "m.fp32.onnx"
    export_fp32(build_deploy_model(model, 32), path)
    graph = onnx.load(str(path)).graph
    assert not any(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in graph.node)
    np.testing.assert_allclose(ort_logits(ort_session(path), images), torch_logits(model, images, 32, 32),
                               atol=1e-4, rtol=1e-4)
    assert integer_coverage(path)["share"] == 0.0
