"""`qadtr check` on ONNX models equals the PyTorch-side transfer matrix; model, patch and manifest reading."""
import json

import numpy as np
import pytest
from conftest import N_IMAGES, SEED
from qadtr.deploy.check import run_check
from qadtr.deploy.inputs import describe_model, load_patches
from qadtr.deploy.session import OrtConfig


def _torch_predictor(net):
    import torch

    def predict(images):
        with torch.no_grad():
            return net(torch.from_numpy(images)).numpy()

    return predict


def test_ort_check_equals_the_pytorch_transfer_matrix_on_the_same_float_model(deploy_models):
    from qadtr.data.arrays import load_dataset
    from qadtr.transfer import to_float_nchw, transfer_matrix

    result = run_check([deploy_models["fp32"]], deploy_models["patches"], dataset="synthetic", n=N_IMAGES,
                       seed=SEED, batch_size=16, config=OrtConfig(intra_op_threads=1))
    # The PyTorch path: the same subset call, the same seed, the same shared loop; only the predictor differs.
    data = load_dataset("synthetic", "test", seed=SEED).subset(N_IMAGES, SEED)
    patches = {p.stem: np.load(p) for p in deploy_models["patches"]}
    label = "tinynet_fp32"
    expected = transfer_matrix({label: _torch_predictor(deploy_models["torch"])}, patches, to_float_nchw(data.x),
                               data.y, seed=SEED, batch_size=32)
    assert result["data"]["sha256"] == data.sha256()
    assert result["transfer"]["clean_acc"] == expected["clean_acc"]
    assert 0.3 < expected["clean_acc"][label] <= 1.0  # a trained net, so the cells below are not degenerate
    got = {(c["patch"], c["target"]): c for c in result["transfer"]["cells"]}
    assert len(got) == len(expected["cells"]) == 2
    for cell in expected["cells"]:
        assert got[cell["patch"], cell["target"]] == cell


def test_check_scores_every_model_against_every_patch_with_all_asr_variants(deploy_models):
    result = run_check([deploy_models["fp32"], deploy_models["int8"]], [deploy_models["patches"][0].parent],
                       dataset="synthetic", n=32, seed=0, config=OrtConfig(intra_op_threads=1))
    cells = result["transfer"]["cells"]
    assert {(c["patch"], c["target"]) for c in cells} == {
        (p, m) for p in ("masked6", "square8") for m in ("tinynet_fp32", "tinynet_w8a8.qdq")}
    for c in cells:
        for key in ("asr", "asr_all", "flip_rate", "robust_acc", "clean_acc"):
            assert key in c["patch_metrics"] and key in c["control_metrics"]
    assert result["models"]["tinynet_w8a8.qdq"]["bits"] == {"weight": 8, "activation": 8}
    assert result["models"]["tinynet_fp32"]["quantized"] is False
    assert result["patches"]["square8"]["area_percent"] == pytest.approx(100 * 64 / 1024)
    assert result["environment"]["versions"]["onnxruntime"]


def test_manifest_entry_supplies_bits_and_packed_size(manifest_dir):
    info = describe_model(manifest_dir / "tinynet_w8a8.qdq.onnx")
    assert info.extra["bits"] == {"weight": 8, "activation": 8}
    assert info.extra["packed_weight_bytes"] == 1242 and info.extra["packed_weight_source"] == "manifest"


def test_packed_size_without_manifest_counts_weights_at_their_width(deploy_models):
    fp32, int8 = describe_model(deploy_models["fp32"]), describe_model(deploy_models["int8"])
    weights = 8 * 3 * 9 + 16 * 8 * 9 + 10 * 16
    assert fp32.extra["packed_weight_bytes"] == 4 * weights
    assert int8.extra["packed_weight_bytes"] == weights


@pytest.mark.parametrize("name, bits", [("resnet20_w4a4.qcdq", {"weight": 4, "activation": 4}),
                                        ("resnet20_w8a4.qcdq", {"weight": 8, "activation": 4}),
                                        ("resnet20_fp32", {"weight": 32, "activation": 32}),
                                        ("resnet20", None)])
def test_bits_from_file_name(name, bits):
    from qadtr.deploy.graph import bits_from_name

    assert bits_from_name(name) == bits


def test_patch_target_comes_from_its_metadata(tmp_path):
    from qadtr.patchfile import save_patch

    save_patch(tmp_path, np.full((3, 4, 4), 0.5, np.float32), {"target": 7}, name="aimed")
    (patch,) = load_patches([tmp_path / "aimed.npy"], (32, 32))
    assert patch.target == 7 and json.loads((tmp_path / "aimed.json").read_text())["target"] == 7


def test_fixed_batch_model_is_fed_whole_batches(deploy_models, tmp_path):
    import onnx
    from qadtr.deploy.bench import run_bench

    model = onnx.load(str(deploy_models["fp32"]))
    for value in (model.graph.input[0], model.graph.output[0]):
        value.type.tensor_type.shape.dim[0].dim_value = 4
    fixed = tmp_path / "tinynet_fp32.onnx"
    onnx.save(model, str(fixed))
    kwargs = {"dataset": "synthetic", "n": 30, "seed": 1, "batch_size": 16, "config": OrtConfig(intra_op_threads=1)}
    padded = run_check([fixed], deploy_models["patches"], **kwargs)  # 30 images: 7 full batches of 4 and one padded
    dynamic = run_check([deploy_models["fp32"]], deploy_models["patches"], **kwargs)
    assert padded["transfer"] == dynamic["transfer"]
    bench = run_bench([fixed], batches=(4, 8), threads=(1,), warmup=0, iters=2, baselines=False, out_dir=tmp_path)
    runs = bench["models"][0]["runs"]
    assert "latency_ms" in runs[0] and runs[1]["skipped"] == "the model's batch dimension is fixed to 4"
