"""`qadtr pipeline` / `qadtr demo` (qadtr.pipeline) and embedded pretrained weights, on the tiny model with
synthetic data: end to end, stage skipping by content hash, partial reruns, a killed run, gates, bad input."""
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from qadtr.errors import QadtrError
from qadtr.pipeline import load_config, run_pipeline
from qadtr.pipeline.gates import evaluate, parse_gate

STAGES = ["model", "attack", "export", "check", "bench", "report"]
BITS = (2, 4, 8, 32)
FAST = {"dataset": "synthetic", "n": 48, "attack_steps": 2, "attack_batch_size": 32, "attack_train_n": 64,
        "check_threads": 1, "check_batch_size": 64, "bench_batches": [1, 4], "bench_threads": [1],
        "bench_warmup": 0, "bench_iters": 2, "fail_on": ["latency_ms>100000"]}


def _calibrated_tiny(path):
    """The tiny net trained one float epoch on synthetic data and calibrated at 2/4/8 bits (export parity holds)."""
    import qadtr
    import torch
    from qadtr.calibration import calibrate
    from qadtr.checkpoint import save_checkpoint
    from qadtr.data.arrays import synthetic
    from qadtr.data.loader import BatchLoader

    torch.manual_seed(0)
    model = qadtr.create_model("tiny", bits=BITS)
    qadtr.set_bits(model, 32)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    model.train()
    for x, y in BatchLoader(synthetic(512, seed=0), 32, shuffle=True, seed=0):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    calibrate(model, BatchLoader(synthetic(256, seed=0), 64, shuffle=True), [2, 4, 8], num_batches=2)
    qadtr.set_bits(model, 32)
    model.eval()
    save_checkpoint(path, {"config": {"arch": "tiny", "num_classes": 10, "model_bits": list(BITS),
                                      "defense": "ptq(float)"}, "trained_bits": list(BITS),
                           "model": model.state_dict(), "epoch": 1, "metrics": []})
    return path


def _toml(path, **values) -> Path:
    path.write_text("".join(f"{k} = {json.dumps(v)}\n" for k, v in values.items()))
    return path


def _stage_mtimes(run) -> dict:
    return {s: (Path(run) / s / "stage.json").stat().st_mtime_ns for s in STAGES}


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory):
    return _calibrated_tiny(tmp_path_factory.mktemp("ckpt") / "tiny.pt")


@pytest.fixture(scope="module")
def base_run(tiny_ckpt, tmp_path_factory):
    """One complete run; tests copy it (stage records hold content hashes, so a copy is up to date)."""
    folder = tmp_path_factory.mktemp("base")
    config = _toml(folder / "pipeline.toml", checkpoint=str(tiny_ckpt), out="run", **FAST)
    summary = run_pipeline(load_config(config), quiet=True)
    return folder / "run", config, summary


@pytest.fixture
def run_copy(base_run, tmp_path):
    run, config, _ = base_run
    shutil.copytree(run, tmp_path / "run")
    return tmp_path / "run", config


def test_pipeline_runs_every_stage_into_one_folder(base_run, tiny_ckpt):
    run, _, summary = base_run
    assert summary["ran"] == STAGES and summary["skipped"] == []
    on_disk = json.loads((run / "pipeline.json").read_text())
    assert on_disk["verdict"] == json.loads(json.dumps(summary["verdict"]))
    assert on_disk["seed"] == 0 and on_disk["versions"]["torch"] and on_disk["config"]["n"] == 48
    assert on_disk["stages"]["model"]["inputs"]["checkpoint"] == json.loads(
        (run / "model" / "stage.json").read_text())["inputs"]["checkpoint"]
    assert on_disk["resolved"] == {"bits": [32, 8, 4, 2], "export_bits": [8, 4, 2], "export_n": 48}
    for stage in STAGES:
        record = json.loads((run / stage / "stage.json").read_text())
        assert record["outputs"] and not (run / stage / ".stage-pending.json").exists()
    assert {p.name for p in (run / "attack").glob("*.npy")} == {
        "seen_6x6_b32.npy", "unseen_8x8_b4.npy", "unseen_10x10_b2.npy", "adaptive_6x6_aqapa.npy"}
    assert sorted(p.name for p in (run / "export").glob("*.onnx")) == [
        "tiny_w2a2.qcdq.onnx", "tiny_w4a4.qcdq.onnx", "tiny_w8a8.qcdq.onnx"]
    check = json.loads((run / "check" / "check.json").read_text())
    assert len(check["patches"]) == 4 and check["data"]["n"] == 48
    bench = json.loads((run / "bench" / "bench.json").read_text())
    assert {(r["batch"], r["threads"]) for e in bench["models"] for r in e["runs"]} == {(1, 1), (4, 1)}
    rows = summary["verdict"]["rows"]
    assert [(r["label"], r["engine"]) for r in rows] == [("fp32", "pytorch"), ("W8A8", "onnxruntime"),
                                                         ("W4A4", "onnxruntime"), ("W2A2", "onnxruntime")]
    assert all(len(r["patches"]) == 4 for r in rows) and rows[0]["acc_drop"] == 0
    assert all(len(r["latency"]) == 2 for r in rows[1:]) and summary["passed"]
    report = (run / "report" / "report.md").read_text()
    assert "## Pipeline verdict" in report and "W2A2" in report and (run / "report" / "report.html").is_file()


def test_second_run_skips_every_stage(run_cli, run_copy):
    run, config = run_copy
    before = _stage_mtimes(run)
    code, out, err = run_cli("pipeline", "--config", config, "--out", run, "--quiet")
    assert code == 0, err
    summary = json.loads((run / "pipeline.json").read_text())
    assert summary["ran"] == [] and summary["skipped"] == STAGES
    assert _stage_mtimes(run) == before
    assert "W4A4" in out and "worst ASR" in out and "skipped (up to date): model, attack" in out
    assert str(run / "report" / "report.html") in out


def test_changing_a_value_reruns_only_the_stages_that_depend_on_it(run_copy):
    run, config = run_copy
    summary = run_pipeline(load_config(config, {"out": str(run), "bench_iters": 3}), quiet=True)
    assert summary["ran"] == ["bench", "report"]
    assert summary["skipped"] == ["model", "attack", "export", "check"]
    summary = run_pipeline(load_config(config, {"out": str(run), "bench_iters": 3, "attack_steps": 3}), quiet=True)
    assert summary["ran"] == ["attack", "check", "report"] and summary["skipped"] == ["model", "export", "bench"]
    summary = run_pipeline(load_config(config, {"out": str(run), "bench_iters": 3, "attack_steps": 3,
                                                "fail_on": ["asr>0.99"]}), quiet=True)
    assert summary["ran"] == ["report"]


def test_a_failed_stage_is_not_done_and_the_rerun_keeps_the_finished_ones(run_copy, monkeypatch):
    from qadtr.pipeline import jobs

    run, config = run_copy
    real_check = jobs.check

    def crash(ctx, *args, **kwargs):
        (ctx.dir / "check.json").write_text("{half")
        raise RuntimeError("boom")

    monkeypatch.setattr(jobs, "check", crash)
    with pytest.raises(RuntimeError, match="boom"):
        run_pipeline(load_config(config, {"out": str(run), "check_batch_size": 32}), quiet=True)
    assert not (run / "check" / "stage.json").exists()
    monkeypatch.setattr(jobs, "check", real_check)
    summary = run_pipeline(load_config(config, {"out": str(run), "check_batch_size": 32}), quiet=True)
    assert summary["skipped"] == ["model", "attack", "export", "bench"] and summary["ran"] == ["check", "report"]
    assert json.loads((run / "check" / "check.json").read_text())["config"]["batch_size"] == 32


KILL_DURING_ATTACK = """
import os, signal, sys
from qadtr.attacks import protocol
from qadtr.pipeline import load_config, run_pipeline
real_save = protocol.save_patch
def save_then_die(*args, **kwargs):  # the first patch is on disk, the attack stage is not finished
    real_save(*args, **kwargs)
    os.kill(os.getpid(), signal.SIGKILL)
protocol.save_patch = save_then_die
run_pipeline(load_config(sys.argv[1], {"out": sys.argv[2]}), quiet=True)
"""


def test_a_run_killed_mid_stage_resumes_without_redoing_finished_stages(base_run, tmp_path):
    _, config, _ = base_run
    run = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", KILL_DURING_ATTACK, str(config), str(run)], env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    assert (run / "model" / "stage.json").is_file() and not (run / "attack" / "stage.json").exists()
    assert (run / "attack" / "seen_6x6_b32.npy").is_file()
    summary = run_pipeline(load_config(config, {"out": str(run)}), quiet=True)
    assert summary["skipped"] == ["model"] and summary["ran"] == STAGES[1:]
    assert json.loads((run / "attack" / "stage.json").read_text())["resumed"] is True
    patches = json.loads((run / "attack" / "robustness.json").read_text())["patches"]
    assert patches["seen_6x6_b32"]["crafting"]["reused"] is True
    assert "reused" not in patches["unseen_8x8_b4"]["crafting"]


def test_a_failing_gate_exits_1_and_names_the_cell(run_cli, run_copy):
    run, config = run_copy
    code, out, err = run_cli("pipeline", "--config", config, "--out", run, "--quiet", "--fail-on", "asr>=0",
                             "--fail-on", "acc_drop>-1")
    assert code == 1
    assert "gate failed: W2A2 unseen 10x10@2: asr " in err and "gate failed: fp32: acc_drop 0 > -1" in err
    summary = json.loads((run / "pipeline.json").read_text())
    assert summary["ran"] == ["report"] and summary["passed"] is False
    names = {f["cell"] for f in summary["verdict"]["failures"]}
    assert {"W8A8 adaptive 6x6 A-QAPA", "fp32 seen 6x6@32", "W4A4"} <= names
    report = (run / "report" / "report.md").read_text()
    assert "FAILED" in report and "W2A2 unseen 10x10@2: asr" in report


BAD_CONFIGS = [
    ({"colour": "red"}, (), "unknown config key colour"),
    ({"bits": [32, 9]}, (), "bit-width 9 is not supported"),
    ({"n": -5}, (), "n in pipeline.toml must be at least 1, got -5"),
    ({}, ("--n", "-3"), "--n must be at least 1, got -3"),
    ({"checkpoint": "missing.pt"}, (), "not found"),
    ({}, ("--fail-on", "asr>>0.4"), "cannot read gate"),
    ({"export_bits": [32]}, (), "bit-width 32 is not supported: use 2..8"),
    ({"pretrained": "no-such-weights"}, (), "available:"),
]


@pytest.mark.parametrize("values, args, message", BAD_CONFIGS)
def test_bad_config_exits_2_with_one_line(run_cli, tiny_ckpt, tmp_path, values, args, message):
    values = {"checkpoint": str(tiny_ckpt), "out": "run", **FAST, **values}
    if "pretrained" in values:
        del values["checkpoint"]
    config = _toml(tmp_path / "pipeline.toml", **values)
    code, out, err = run_cli("pipeline", "--config", config, *args)
    assert code == 2 and message in err, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err and out == ""
    assert not (tmp_path / "run").exists()


def test_missing_config_file_and_train_table_errors(run_cli, tmp_path):
    code, _, err = run_cli("pipeline", "--config", tmp_path / "nope.toml")
    assert code == 2 and err.strip() == f"error: config file {tmp_path / 'nope.toml'} not found"
    config = tmp_path / "train.toml"
    config.write_text('out = "run"\ndataset = "synthetic"\n[train]\narch = "tiny"\nepochz = 2\n')
    code, _, err = run_cli("pipeline", "--config", config)
    assert code == 2 and "unknown training setting train.epochz (did you mean epochs?)" in err
    code, _, err = run_cli("pipeline", "--config", config, "--train", "epochz=1", "--checkpoint", config)
    assert code == 2 and len(err.strip().splitlines()) == 1


def test_config_tables_flat_keys_and_cli_precedence(tmp_path, tiny_ckpt):
    flat = _toml(tmp_path / "flat.toml", checkpoint=str(tiny_ckpt), out="r", attack_steps=7, bench_batches=[1, 2])
    tables = tmp_path / "tables.toml"
    tables.write_text(f'checkpoint = "{tiny_ckpt}"\nout = "r"\n[attack]\nsteps = 7\n[bench]\nbatches = "1,2"\n')
    a, b = load_config(flat), load_config(tables)
    assert a == b and a.attack_steps == 7 and a.bench_batches == [1, 2]
    assert a.out == str(tmp_path / "r")  # relative to the file, not the working directory
    assert load_config(flat, {"attack_steps": "9", "n": None}).attack_steps == 9
    assert load_config(flat, {"attack_unseen": "none"}).attack_unseen == []
    with pytest.raises(QadtrError, match="attack.steps in t.toml must be an integer"):
        load_config(_toml(tmp_path / "t.toml", attack_steps="x", out="r"))


def test_export_formats_mirror_the_exporter():
    from qadtr.export.pipeline import FORMATS
    from qadtr.pipeline.config import FORMATS as CONFIG_FORMATS

    assert CONFIG_FORMATS == FORMATS


def test_gates_parse_and_name_failing_cells():
    assert parse_gate("asr>0.4").threshold == 0.4 and parse_gate(" acc_drop > 2% ").threshold == 0.02
    assert str(parse_gate("latency_ms>=5")) == "latency_ms>=5"
    for bad in ("asr", "speed>3", "latency_ms>5%", "asr>0.4x"):
        with pytest.raises(QadtrError):
            parse_gate(bad)
    row = {"label": "W2A2", "clean_acc": 0.8, "acc_drop": 0.1,
           "patches": [{"name": "unseen 10x10@2", "asr": 0.53}, {"name": "seen 6x6@32", "asr": float("nan")}],
           "latency": [{"batch": 1, "threads": 1, "p50_ms": 2.5}]}
    failures = evaluate(["asr>0.4", "acc_drop>0.02", "latency_ms>2", "acc<0.5"], [row])
    assert [f["message"] for f in failures] == ["W2A2 unseen 10x10@2: asr 0.53 > 0.4", "W2A2: acc_drop 0.1 > 0.02",
                                                "W2A2 batch 1: latency_ms 2.5 > 2"]


def test_pretrained_unshipped_name_is_one_line(monkeypatch, tmp_path):
    import qadtr
    from qadtr import pretrained

    monkeypatch.setattr(pretrained, "WEIGHTS_DIR", tmp_path)
    with pytest.raises(QadtrError) as e:
        qadtr.create_model("resnet20", pretrained="ptq-cifar10")
    assert "not shipped" in str(e.value) and "available: none" in str(e.value) and "\n" not in str(e.value)


def test_pretrained_loads_embedded_weights(monkeypatch, tmp_path, tiny_ckpt):
    import qadtr
    import torch
    from qadtr import pretrained
    from qadtr.checkpoint import load_checkpoint

    monkeypatch.setattr(pretrained, "WEIGHTS_DIR", tmp_path)
    shutil.copyfile(tiny_ckpt, tmp_path / "tiny-demo.pt")
    assert pretrained.available() == ["tiny-demo"]
    model = qadtr.create_model("tiny", pretrained="tiny-demo")
    assert model.bit_choices == BITS
    state = load_checkpoint(tiny_ckpt)["model"]
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    with pytest.raises(QadtrError, match="available: tiny-demo"):
        qadtr.create_model("tiny", pretrained="ptq-cifar10")
    with pytest.raises(QadtrError, match="not 'resnet20'"):
        qadtr.create_model("resnet20", pretrained="tiny-demo")


def test_demo_without_data_says_how_to_provide_it(run_cli, monkeypatch, tmp_path):
    from qadtr.pipeline import demo

    monkeypatch.delenv("QADTR_DATA_DIR", raising=False)
    monkeypatch.setenv("QADTR_CACHE_DIR", str(tmp_path / "cache"))
    attempts = []

    def offline(root):
        attempts.append(root)
        raise OSError("<urlopen error [Errno -3] Temporary failure in name resolution>\nsecond line")

    monkeypatch.setattr(demo, "download_cifar10", offline)
    code, out, err = run_cli("demo", "--out", tmp_path / "demo")
    assert code == 2 and "QADTR_DATA_DIR" in err and len(err.strip().splitlines()) == 1 and out == ""
    assert "download failed" in err and attempts == [tmp_path / "cache" / "cifar10"]
    code, _, err = run_cli("demo", "--data-dir", tmp_path, "--out", tmp_path / "demo")
    assert code == 2 and "--data-dir" in err and len(err.strip().splitlines()) == 1
    assert len(attempts) == 1  # a folder the user named is never replaced by a download


def test_demo_data_comes_from_the_cache_or_a_download_into_it(monkeypatch, tmp_path):
    import numpy as np
    from qadtr.pipeline import demo

    monkeypatch.delenv("QADTR_DATA_DIR", raising=False)
    monkeypatch.setenv("QADTR_CACHE_DIR", str(tmp_path))
    cache = tmp_path / "cifar10"

    def fake_download(root):
        root.mkdir(parents=True)
        for split in ("train", "test"):
            np.savez(root / f"cifar10_{split}.npz", x=np.zeros((2, 32, 32, 3), np.uint8), y=np.zeros(2, np.uint8))

    monkeypatch.setattr(demo, "download_cifar10", fake_download)
    assert demo.check_cifar10(None) == cache  # downloaded
    monkeypatch.setattr(demo, "download_cifar10", lambda root: pytest.fail("the cache holds it: no download"))
    assert demo.check_cifar10(None) == cache  # found in the cache


def test_demo_runs_the_pipeline_per_embedded_checkpoint(run_cli, monkeypatch, tmp_path, tiny_ckpt, base_run):
    """The demo's wiring: one pipeline per shipped checkpoint, with the built-in config (the pipeline itself is
    tested above; running it again here would only cost time)."""
    from qadtr import pipeline, pretrained

    monkeypatch.setattr(pretrained, "WEIGHTS_DIR", tmp_path / "weights")
    (tmp_path / "weights").mkdir()
    code, _, err = run_cli("demo", "--dataset", "synthetic", "--out", tmp_path / "demo")
    assert code == 2 and "no embedded checkpoint is shipped" in err
    shutil.copyfile(tiny_ckpt, tmp_path / "weights" / "tiny-demo.pt")
    seen = []

    def fake_run(cfg, **kwargs):
        seen.append(cfg)
        return base_run[2]

    monkeypatch.setattr(pipeline, "run_pipeline", fake_run)
    code, out, err = run_cli("demo", "--dataset", "synthetic", "--out", tmp_path / "demo", "--steps", "7", "--quiet")
    assert code == 0, err
    (cfg,) = seen
    assert cfg.pretrained == "tiny-demo" and cfg.out == str(tmp_path / "demo" / "tiny-demo") and not cfg.train
    assert (cfg.n, cfg.attack_steps, cfg.bits, cfg.bench_batches, cfg.bench_threads, cfg.check_threads) == (
        500, 7, [32, 8, 4, 2], [1, 64], [1], 1)
    assert "W2A2" in out and "worst ASR" in out


def test_demo_defaults_to_the_hardened_model_and_its_baseline(monkeypatch, tmp_path):
    from qadtr import pretrained

    monkeypatch.setattr(pretrained, "WEIGHTS_DIR", tmp_path)
    for name in ("ptq-cifar10", "tiny-demo"):
        (tmp_path / f"{name}.pt").write_bytes(b"")
    assert pretrained.demo_default() == ["ptq-cifar10", "tiny-demo"]   # neither of the pair: every shipped one
    for name in ("qat-cifar10", "qadtr-cifar10"):
        (tmp_path / f"{name}.pt").write_bytes(b"")
        assert pretrained.demo_default() == [n for n in pretrained.DEMO_PAIR if (tmp_path / f"{n}.pt").exists()]
    assert pretrained.demo_default() == ["qadtr-cifar10", "qat-cifar10"]


@pytest.mark.integration
@pytest.mark.parametrize("name", ["ptq-cifar10", "qat-cifar10", "qadtr-cifar10"])
def test_shipped_checkpoint_classifies_real_cifar10(cifar10_dir, name):
    """The weights `qadtr demo` ships are working models, not placeholders: on 1,000 real test images they are
    far above chance at every precision the demo scores (full-test-set figures: docs/results.md)."""
    import qadtr
    import torch
    from qadtr.data.arrays import load_dataset
    from qadtr.evaluate import accuracy_per_bits
    from qadtr.pretrained import available

    if name not in available():
        pytest.skip(f"{name} is not shipped with this install")
    model = qadtr.create_model("resnet20", pretrained=name)
    test = load_dataset("cifar10", "test", cifar10_dir).subset(1000, seed=0)
    x = torch.from_numpy(test.x).permute(0, 3, 1, 2).float().div(255)
    loader = list(zip(x.split(250), torch.from_numpy(test.y).split(250), strict=True))
    acc = accuracy_per_bits(model, loader, [32, 8, 4, 2])
    assert acc[32] > 0.8 and acc[8] > 0.8 and acc[4] > 0.8 and acc[2] > 0.5, acc
