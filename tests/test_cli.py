"""CLI behaviour: help, and one-line errors with exit code 2 for bad input."""
import pytest
import qadtr
import torch
from qadtr.checkpoint import save_checkpoint


def test_help_lists_commands_and_shows_defaults(run_cli):
    code, out, _ = run_cli("--help")
    assert code == 0
    for cmd in ("train", "eval", "calibrate", "models"):
        assert cmd in out
    for cmd in ("train", "eval", "calibrate"):
        code, out, _ = run_cli(cmd, "--help")
        assert code == 0 and "default:" in out


@pytest.fixture
def tiny_ckpt(tmp_path):
    torch.manual_seed(0)
    model = qadtr.create_model("tiny", bits=(4, 32))
    path = tmp_path / "tiny.pt"
    save_checkpoint(path, {"config": {"arch": "tiny", "model_bits": [4, 32], "num_classes": 10,
                                      "defense": "float"},
                           "trained_bits": [32], "model": model.state_dict()})
    return path


def _bad_inputs(tmp_path, ckpt):
    empty = tmp_path / "empty"
    empty.mkdir()
    truncated = tmp_path / "trunc.pt"
    truncated.write_bytes(ckpt.read_bytes()[:500])
    out = tmp_path / "run"
    return {
        "unknown arch": ("train", "--arch", "resnet21", "--dataset", "synthetic", "--out", out),
        "bits 9": ("train", "--arch", "tiny", "--bits", "9", "--dataset", "synthetic", "--out", out),
        "bits 1": ("eval", ckpt, "--bits", "1", "--dataset", "synthetic"),
        "bits not in set": ("eval", ckpt, "--bits", "2", "--dataset", "synthetic"),
        "bits garbage": ("eval", ckpt, "--bits", "four", "--dataset", "synthetic"),
        "missing data folder": ("eval", ckpt, "--data-dir", tmp_path / "nope"),
        "empty data folder": ("eval", ckpt, "--data-dir", empty),
        "truncated checkpoint": ("eval", truncated, "--dataset", "synthetic"),
        "missing checkpoint": ("eval", tmp_path / "none.pt", "--dataset", "synthetic"),
        "checkpoint for another arch": ("train", "--arch", "resnet20", "--init", ckpt, "--dataset", "synthetic",
                                        "--out", out),
        "calibrate bits 16": ("calibrate", ckpt, "--bits", "16", "--out", tmp_path / "c.pt"),
        "teacher for a patch defense": ("train", "--arch", "tiny", "--defense", "pbat", "--teacher", ckpt,
                                        "--dataset", "synthetic", "--out", out),
        "missing teacher": ("train", "--arch", "tiny", "--teacher", tmp_path / "none.pt", "--dataset", "synthetic",
                            "--out", out),
        "negative crop pad": ("train", "--arch", "tiny", "--crop-pad", "-1", "--dataset", "synthetic", "--out", out),
    }


@pytest.mark.parametrize("case", [
    "unknown arch", "bits 9", "bits 1", "bits not in set", "bits garbage", "missing data folder",
    "empty data folder", "truncated checkpoint", "missing checkpoint", "checkpoint for another arch",
    "calibrate bits 16", "teacher for a patch defense", "missing teacher", "negative crop pad"])
def test_bad_input_is_one_line_and_exit_2(run_cli, tmp_path, tiny_ckpt, case):
    code, out, err = run_cli(*_bad_inputs(tmp_path, tiny_ckpt)[case])
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    assert not (tmp_path / "run" / "checkpoint.pt").exists()


def test_eval_writes_json_and_table(run_cli, tmp_path, tiny_ckpt):
    code, out, _ = run_cli("eval", tiny_ckpt, "--bits", "32,4", "--dataset", "synthetic", "--out",
                           tmp_path / "e.json")
    assert code == 0 and "accuracy" in out
    import json

    result = json.loads((tmp_path / "e.json").read_text())
    assert set(result["accuracy"]) == {"32", "4"} and result["checkpoint_sha256"]
    assert result["versions"]["torch"]


def test_calibrate_bn_only_at_32_refreshes_the_float_bn_and_keeps_the_rest(run_cli, tmp_path, tiny_ckpt):
    # A model trained only at a quantized width carries stale float BN statistics; --bits 32 --bn-only repairs
    # them from the CLI, as calibrate_checkpoint does from the API.
    from qadtr.checkpoint import load_checkpoint

    source = load_checkpoint(tiny_ckpt)["model"]
    out = tmp_path / "bn.pt"
    code, stdout, err = run_cli("calibrate", tiny_ckpt, "--bits", "32", "--bn-only", "--num-batches", "2",
                                "--batch-size", "32", "--dataset", "synthetic", "--out", out)
    assert code == 0, err
    payload = load_checkpoint(out)
    state = payload["model"]
    float_bn = [k for k in state if k.endswith("bns.32.running_mean")]
    four_bn = [k for k in state if k.endswith("bns.4.running_mean")]
    assert float_bn and four_bn
    assert any(not torch.equal(state[k], source[k]) for k in float_bn)  # re-estimated
    assert all(torch.equal(state[k], source[k]) for k in four_bn)  # not named, untouched
    assert payload["calibration"]["bits"] == [32] and payload["calibration"]["bn_only"] is True
