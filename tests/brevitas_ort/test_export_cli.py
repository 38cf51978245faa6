"""`qadtr export`: files, manifest, refusal without leftovers, and one-line errors with exit code 2."""
import json

import pytest
from qadtr.io import sha256_file

COMMON = ("--n", 16, "--dataset", "synthetic")


def test_export_writes_checked_models_and_manifest(calibrated_tiny, run_cli, tmp_path):
    ckpt, _ = calibrated_tiny
    out = tmp_path / "export"
    code, stdout, stderr = run_cli("export", ckpt, "--bits", "8,2", "--format", "qcdq,qonnx,fp32", "--out", out,
                                   *COMMON, "--json")
    assert code == 0, stderr
    manifest = json.loads((out / "manifest.json").read_text())
    assert json.loads(stdout)["models"] == manifest["models"]
    names = {m["file"] for m in manifest["models"]}
    assert names == {"tiny_w8a8.qcdq.onnx", "tiny_w2a2.qcdq.onnx", "tiny_w8a8.qonnx.onnx", "tiny_w2a2.qonnx.onnx",
                     "tiny.fp32.onnx"}
    assert sorted(p.name for p in out.iterdir()) == sorted(names | {"manifest.json"})  # no staging leftovers
    assert manifest["io"]["input"]["shape"] == ["N", 3, 32, 32] and manifest["io"]["output"]["shape"] == ["N", 10]
    assert len(manifest["io"]["classes"]) == 10
    for m in manifest["models"]:
        path = out / m["file"]
        assert m["sha256"] == sha256_file(path) and m["file_bytes"] == path.stat().st_size
        assert m["opset"] == 17 and m["parity"]["top1_agreement"] >= 0.995
        if m["format"] == "qcdq":
            assert m["integer_kernel_coverage"]["share"] == 1.0
            assert m["weight_bits"] == m["act_bits"] and m["parity"]["images"] == 16
            assert m["parity_reference"] == "PyTorch (brevitas) in float64"
            f32 = m["float32_reference"]
            assert 0.9 <= f32["torch_float32_vs_float64_top1_agreement"] <= 1.0
            assert f32["onnx_vs_torch_float32"]["images"] == 16
    by_name = {m["file"]: m for m in manifest["models"]}
    # Packed size follows the nominal bit-width; the 8-bit stem and classifier stay at 8 bits.
    assert by_name["tiny_w2a2.qcdq.onnx"]["packed_weight_bytes"] < by_name["tiny_w8a8.qcdq.onnx"]["packed_weight_bytes"]
    assert by_name["tiny.fp32.onnx"]["packed_weight_bytes"] == 4 * by_name["tiny_w8a8.qcdq.onnx"]["packed_weight_bytes"]
    assert by_name["tiny_w2a2.qonnx.onnx"]["quant_bit_widths"] == [2, 8]


def test_act_bits_sets_every_models_activation_width(calibrated_tiny, run_cli, tmp_path):
    ckpt, _ = calibrated_tiny
    code, _, stderr = run_cli("export", ckpt, "--bits", "4", "--act-bits", "8", "--format", "qcdq", "--out",
                              tmp_path / "o", *COMMON)
    assert code == 0, stderr
    entry = json.loads((tmp_path / "o" / "manifest.json").read_text())["models"][0]
    assert entry["file"] == "tiny_w4a8.qcdq.onnx" and (entry["weight_bits"], entry["act_bits"]) == (4, 8)


@pytest.fixture
def ckpt_8bit_only(tmp_path):
    import qadtr
    from qadtr.checkpoint import save_checkpoint

    model = qadtr.create_model("tiny", bits=(8, 32))
    path = tmp_path / "w8.pt"
    save_checkpoint(path, {"config": {"arch": "tiny", "num_classes": 10, "model_bits": [8, 32]},
                           "trained_bits": [8, 32], "model": model.state_dict()})
    return path


@pytest.mark.parametrize("args, message", [
    (("--bits", "9"), "bit-width 9 is not supported"),
    (("--bits", "4", "--act-bits", "1"), "bit-width 1 is not supported"),
    (("--bits", "4"), "bit-width 4 is not in this checkpoint's set [8]"),
    (("--bits", "8", "--format", "qcdq,tflite"), "unknown export format 'tflite'"),
])
def test_bad_input_is_one_line_and_exit_code_2(ckpt_8bit_only, run_cli, tmp_path, args, message):
    code, _, stderr = run_cli("export", ckpt_8bit_only, "--out", tmp_path / "o", *COMMON, *args)
    assert code == 2
    assert message in stderr and len(stderr.strip().splitlines()) == 1
    assert not (tmp_path / "o").exists()


def test_unwritable_output_folder_is_refused(calibrated_tiny, run_cli, tmp_path):
    ckpt, _ = calibrated_tiny
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    code, _, stderr = run_cli("export", ckpt, "--bits", "8", "--format", "qcdq", "--out", blocker / "sub", *COMMON)
    assert code == 2 and "cannot write to output folder" in stderr and len(stderr.strip().splitlines()) == 1


def test_bad_parity_refuses_and_leaves_nothing(calibrated_tiny, run_cli, tmp_path, monkeypatch):
    """An export that no longer computes the trained function (here: perturbed weights) is refused, after the
    fp32 model already passed: neither it nor anything else may remain."""
    import torch
    from qadtr.export import pipeline
    from qadtr.quant import FLOAT_BITS

    build = pipeline.build_deploy_model

    def broken_build(model, w, a=None):
        deploy = build(model, w, a)
        if w != FLOAT_BITS:
            with torch.no_grad():
                for p in deploy.parameters():
                    if p.dim() == 4:
                        p.add_(torch.randn_like(p) * p.abs().mean())
        return deploy

    monkeypatch.setattr(pipeline, "build_deploy_model", broken_build)
    ckpt, _ = calibrated_tiny
    out = tmp_path / "existing"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    code, _, stderr = run_cli("export", ckpt, "--bits", "4", "--format", "fp32,qcdq", "--out", out, *COMMON)
    assert code == 2 and "refusing to export tiny qcdq W4A4" in stderr and len(stderr.strip().splitlines()) == 1
    assert sorted(p.name for p in out.iterdir()) == ["keep.txt"]

    fresh = tmp_path / "fresh"
    code, _, _ = run_cli("export", ckpt, "--bits", "4", "--format", "qcdq", "--out", fresh, *COMMON)
    assert code == 2 and not fresh.exists()


def test_a_rounding_sensitive_export_is_written_and_says_so(calibrated_tiny, run_cli, tmp_path, monkeypatch):
    """When only the rounding-sensitive gate passes, the model is written, and the manifest and the table say
    which gate it was, with PyTorch float32's own agreement beside ORT's."""
    from qadtr.export import pipeline

    gated = pipeline.gated_parity

    def only_sensitive(refs, candidate, labels):
        exact, as_run, _ = gated(refs, candidate, labels)
        return exact, as_run, "rounding-sensitive"

    monkeypatch.setattr(pipeline, "gated_parity", only_sensitive)
    ckpt, _ = calibrated_tiny
    out = tmp_path / "export"
    code, stdout, stderr = run_cli("export", ckpt, "--bits", "4", "--format", "qcdq", "--out", out, *COMMON)
    assert code == 0, stderr
    entry = json.loads((out / "manifest.json").read_text())["models"][0]
    assert entry["parity_gate"] == "rounding-sensitive" and "rounding flips" in entry["parity_gate_passed_with"]
    assert (out / entry["file"]).exists()
    assert f"note: {entry['file']} is rounding-sensitive" in stdout
    assert "torch_float32_vs_float64_top1_agreement" in entry["float32_reference"]
