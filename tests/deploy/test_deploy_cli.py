"""`qadtr check/bench/report` command lines: outputs, and one-line errors with exit code 2 for bad input."""
import numpy as np
import pytest


def _bad_models(tmp_path, good):
    import onnx
    from onnx import TensorProto, helper

    truncated = tmp_path / "truncated.onnx"
    truncated.write_bytes(good.read_bytes()[:700])
    text = tmp_path / "notes.onnx"
    text.write_text("this is not a model\n" * 20)

    def flat_model(name, shape):
        graph = helper.make_graph([helper.make_node("Flatten", ["x"], ["y"])], "g",
                                  [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
                                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", None])])
        path = tmp_path / name
        onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
        return path

    qonnx = onnx.load(str(good))
    qonnx.graph.node.append(helper.make_node("Quant", ["logits", "s", "z", "b"], ["q"],
                                             domain="qonnx.custom_op.general"))
    onnx.save(qonnx, str(tmp_path / "m.qonnx.onnx"))
    return {"missing model": tmp_path / "absent.onnx", "truncated model": truncated, "text as model": text,
            "qonnx model": tmp_path / "m.qonnx.onnx",
            "grayscale input": flat_model("gray.onnx", ["N", 1, 32, 32]),
            "flat input": flat_model("flat.onnx", ["N", 3072])}


def _bad_patches(tmp_path):
    np.save(tmp_path / "big.npy", np.full((3, 40, 40), 0.5, np.float32))
    np.save(tmp_path / "hwc.npy", np.full((8, 8, 3), 0.5, np.float32))
    np.save(tmp_path / "bright.npy", np.full((3, 8, 8), 2.0, np.float32))
    np.save(tmp_path / "ints.npy", np.full((3, 8, 8), 1, np.uint8))
    np.save(tmp_path / "pickled.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    (tmp_path / "img.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(40))
    return {"patch larger than input": tmp_path / "big.npy", "patch HWC": tmp_path / "hwc.npy",
            "patch out of range": tmp_path / "bright.npy", "patch of ints": tmp_path / "ints.npy",
            "pickled patch": tmp_path / "pickled.npy", "png patch": tmp_path / "img.png",
            "missing patch": tmp_path / "nope.npy"}


MODEL_CASES = ["missing model", "truncated model", "text as model", "grayscale input", "flat input", "qonnx model"]
PATCH_CASES = ["patch larger than input", "patch HWC", "patch out of range", "patch of ints", "pickled patch",
               "png patch", "missing patch"]


def _assert_one_line_exit_2(code, err):
    lines = err.strip().splitlines()
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith("error: "), err


@pytest.mark.parametrize("command", ["check", "bench"])
@pytest.mark.parametrize("case", MODEL_CASES)
def test_bad_model_is_one_line_and_exit_2(run_cli, deploy_models, tmp_path, command, case):
    model = _bad_models(tmp_path, deploy_models["fp32"])[case]
    extra = (["--patches", deploy_models["patches"][0], "--n", "8"] if command == "check"
             else ["--no-baselines", "--iters", "2", "--warmup", "0"])
    code, _, err = run_cli(command, model, *extra, "--dataset", "synthetic", "--out", tmp_path / "out", "--quiet")
    _assert_one_line_exit_2(code, err)


@pytest.mark.parametrize("case", PATCH_CASES)
def test_bad_patch_is_one_line_and_exit_2(run_cli, deploy_models, tmp_path, case):
    patch = _bad_patches(tmp_path)[case]
    code, _, err = run_cli("check", deploy_models["fp32"], "--patches", patch, "--dataset", "synthetic", "--n", "8",
                           "--out", tmp_path / "out", "--quiet")
    _assert_one_line_exit_2(code, err)


@pytest.mark.parametrize("args", [
    ("check", "{model}", "--patches", "{patch}", "--data-dir", "{empty}", "--n", "8"),
    ("bench", "{model}", "--data-dir", "{empty}", "--iters", "2"),  # the int8 baseline needs calibration images
    ("bench", "{model}", "--batch", "0", "--no-baselines"),
    ("bench", "{model}", "--threads", "one", "--no-baselines"),
    ("report", "{empty}/nowhere"),
], ids=["check empty data", "bench empty data", "bench batch 0", "bench threads text", "report missing folder"])
def test_bad_arguments_are_one_line_and_exit_2(run_cli, deploy_models, tmp_path, args):
    empty = tmp_path / "empty"
    empty.mkdir()
    values = {"model": deploy_models["fp32"], "patch": deploy_models["patches"][0], "empty": empty}
    code, _, err = run_cli(*(a.format(**values) for a in args), *(["--out", tmp_path / "o"] if args[0] != "report"
                                                                  else []))
    _assert_one_line_exit_2(code, err)


def test_check_takes_globbed_patches_after_the_option_and_writes_its_files(run_cli, deploy_models, tmp_path):
    out = tmp_path / "check"
    code, stdout, err = run_cli("check", deploy_models["int8"], "--patches", *deploy_models["patches"], "--dataset",
                                "synthetic", "--n", "16", "--out", out, "--quiet")
    assert code == 0, err
    assert {"check.json", "check.md", "check_heatmap.png"} <= {p.name for p in out.iterdir()}
    assert "masked6" in stdout and "square8" in stdout and err == ""


def test_help_shows_defaults(run_cli):
    for command in ("check", "bench", "report"):
        code, out, _ = run_cli(command, "--help")
        assert code == 0 and ("default:" in out or command == "report")
