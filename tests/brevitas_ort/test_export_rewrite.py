"""The signed low-bit Clip pitfall and its rewrite: zero-point-shifted unsigned Clips keep every conv integer."""
import numpy as np
import onnx
import onnxruntime as ort
import pytest
import qadtr
import torch
from brevitas.export import export_onnx_qcdq
from qadtr.calibration import calibrate
from qadtr.export.coverage import integer_coverage
from qadtr.export.deploy import build_deploy_model
from qadtr.export.integer_bias import quantize_biases
from qadtr.export.onnx_io import export_kwargs
from qadtr.export.parity import ort_logits, ort_session
from qadtr.export.qcdq import export_qcdq
from qadtr.export.rewrite import unsign_activation_clips
from qadtr.layers import QuantPolicy


@pytest.fixture(scope="module")
def signed_low_bit_add_model():
    """Residual-add operands quantized at 4 signed bits: brevitas writes Q(int8) -> Clip -> DQ there."""
    from qadtr.data.arrays import synthetic
    from qadtr.data.loader import BatchLoader

    torch.manual_seed(0)
    model = qadtr.create_model("tiny", bits=(2, 4, 32), policy=QuantPolicy(add_bits=4))
    calibrate(model, BatchLoader(synthetic(128, seed=0), 64), (4, 2), num_batches=2)
    return model


def _run_unoptimized(path, images):
    """ONNX semantics as written (no fusion), to compare two graphs value for value."""
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"]).run(None, {"input": images})[0]


@pytest.mark.parametrize("bits", [4, 2])
def test_unsigned_clip_rewrite_is_exact_and_restores_fusion(signed_low_bit_add_model, synthetic_images, tmp_path,
                                                            bits):
    images = synthetic_images[0][:16]
    deploy = build_deploy_model(signed_low_bit_add_model, bits)
    raw = tmp_path / "raw.onnx"
    export_onnx_qcdq(deploy, args=torch.rand(1, 3, 32, 32), export_path=str(raw), **export_kwargs())
    plain, unsigned = tmp_path / "plain.onnx", tmp_path / "unsigned.onnx"
    onnx.save(quantize_biases(onnx.load(str(raw)))[0], str(plain))
    model, rewritten = unsign_activation_clips(onnx.load(str(raw)))
    assert rewritten > 0
    model, _ = quantize_biases(model)
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(unsigned))

    # The pitfall is real: with signed Clips some convs stay float ...
    assert integer_coverage(plain)["share"] < 1.0
    # ... and the rewrite makes every Conv/Gemm integer ...
    assert integer_coverage(unsigned)["share"] == 1.0
    # ... without changing a single value of the graph's function.
    np.testing.assert_array_equal(_run_unoptimized(unsigned, images), _run_unoptimized(plain, images))
    # And the ORT graph, fused, is what brevitas computes.
    with torch.no_grad():
        trained = deploy(torch.from_numpy(images)).numpy()
    np.testing.assert_allclose(ort_logits(ort_session(unsigned), images), trained, atol=1e-5, rtol=1e-5)


def test_shipped_graph_of_a_signed_low_bit_model_is_fully_integer(signed_low_bit_add_model, synthetic_images,
                                                                   tmp_path):
    images = synthetic_images[0][:16]
    path = tmp_path / "m.onnx"
    stats = export_qcdq(build_deploy_model(signed_low_bit_add_model, 2), path, conv_kernel="convinteger")
    assert stats["clips_unsigned"] > 0
    assert integer_coverage(path)["share"] == 1.0
    with torch.no_grad(), qadtr.bits(signed_low_bit_add_model, 2):
        trained = signed_low_bit_add_model(torch.from_numpy(images)).numpy()
    onnx_logits = ort_logits(ort_session(path), images)
    np.testing.assert_allclose(onnx_logits, trained, atol=1e-5, rtol=1e-5)
