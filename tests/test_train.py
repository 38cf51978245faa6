"""Training runs: metrics, resume after SIGKILL, refusal to mix configs."""
import json
import signal
import subprocess
import sys
import time

import pytest
import torch
from qadtr.checkpoint import load_checkpoint
from qadtr.errors import QadtrError
from qadtr.train import TrainConfig, lr_multiplier, train

EPOCHS = 4
ARGS = ["train", "--arch", "tiny", "--defense", "qat", "--bits", "4", "--dataset", "synthetic",
        "--epochs", str(EPOCHS), "--batch-size", "32", "--seed", "3", "--quiet"]


def _cli(*args):
    return [sys.executable, "-c", "from qadtr.cli import main; main()", *map(str, args)]


def _epochs_done(run):
    try:
        return len(json.loads((run / "metrics.json").read_text())["epochs"])
    except (FileNotFoundError, json.JSONDecodeError):
        return 0


def test_sigkill_mid_epoch_then_resume_matches_an_uninterrupted_run(tmp_path):
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    subprocess.run(_cli(*ARGS, "--out", straight), check=True, capture_output=True)

    proc = subprocess.Popen(_cli(*ARGS, "--out", killed), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while _epochs_done(killed) < 1 and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    time.sleep(0.3)  # into the next epoch
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = _epochs_done(killed)
    assert 1 <= done < EPOCHS, "the kill must land mid-run"
    assert load_checkpoint(killed / "checkpoint.pt")["epoch"] == done  # the last completed epoch survives

    subprocess.run(_cli(*ARGS, "--out", killed, "--resume"), check=True, capture_output=True)
    a, b = load_checkpoint(straight / "checkpoint.pt"), load_checkpoint(killed / "checkpoint.pt")
    assert b["epoch"] == EPOCHS and [m["epoch"] for m in b["metrics"]] == list(range(1, EPOCHS + 1))
    for key, value in a["model"].items():
        assert torch.allclose(value.float(), b["model"][key].float(), atol=1e-5), key


def test_metrics_and_checkpoint_contents(tmp_path):
    record = train(TrainConfig(arch="tiny", defense="qat", bits=[2], dataset="synthetic", epochs=2,
                               batch_size=64, seed=1), tmp_path, quiet=True)
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert [e["epoch"] for e in metrics["epochs"]] == [1, 2]
    assert metrics["epochs"][0]["bits_visits"] == {"2": 8}
    assert metrics["versions"]["brevitas"] and metrics["inputs"]["train_data_sha256"]
    ckpt = load_checkpoint(tmp_path / "checkpoint.pt")
    assert ckpt["config"]["model_bits"] == [2, 32] and ckpt["trained_bits"] == [2]
    assert record["epochs"][-1]["train_loss"] < record["epochs"][0]["train_loss"] * 1.5


def test_existing_run_needs_resume_and_resume_needs_same_config(tmp_path):
    cfg = TrainConfig(arch="tiny", defense="float", dataset="synthetic", epochs=1, batch_size=64)
    train(cfg, tmp_path, quiet=True)
    with pytest.raises(QadtrError, match="--resume"):
        train(cfg, tmp_path, quiet=True)
    with pytest.raises(QadtrError, match="batch_size"):
        train(TrainConfig(**{**cfg.__dict__, "batch_size": 32}), tmp_path, resume=True, quiet=True)


@pytest.mark.parametrize("schedule", ["cosine", "onecycle"])
def test_lr_schedules_start_low_or_peak_and_end_near_zero(schedule):
    total = 1000
    values = [lr_multiplier(s, total, 50, schedule) for s in range(total)]
    assert max(values) == pytest.approx(1.0, abs=0.01)
    assert values[-1] < 0.01
    assert values[0] < max(values)


@pytest.mark.parametrize("defense,bits", [("float", None), ("qat", [4]), ("qadtr", [32, 4, 2])])
def test_bf16_training_runs_changes_the_numerics_and_checkpoints_fp32(tmp_path, defense, bits):
    def run(precision):
        cfg = TrainConfig(arch="tiny", defense=defense, bits=bits, dataset="synthetic", epochs=1, batch_size=64,
                          train_subset=256, seed=2, precision=precision)
        return train(cfg, tmp_path / precision, quiet=True)

    fp32, bf16 = run("fp32"), run("bf16")
    loss32, loss16 = fp32["epochs"][0]["train_loss"], bf16["epochs"][0]["train_loss"]
    assert torch.isfinite(torch.tensor(loss16)) and loss16 != loss32  # same seed: only the precision differs
    ckpt = load_checkpoint(tmp_path / "bf16" / "checkpoint.pt")
    assert ckpt["config"]["precision"] == "bf16"
    assert all(v.dtype != torch.bfloat16 for v in ckpt["model"].values())


@pytest.mark.parametrize("native", [True, False])
def test_bf16_on_a_cpu_without_bf16_units_prints_a_note(tmp_path, monkeypatch, capsys, native):
    import qadtr.precision as precision

    monkeypatch.setattr(precision, "bf16_native", lambda: native)
    assert precision.bf16_warning("fp32") is None
    cfg = TrainConfig(arch="tiny", defense="float", dataset="synthetic", epochs=1, batch_size=64, train_subset=64,
                      seed=0, precision="bf16")
    train(cfg, tmp_path, quiet=True)
    err = capsys.readouterr().err
    assert ("emulated" in err) is not native


def test_unknown_precision_is_refused():
    with pytest.raises(QadtrError, match="unknown precision 'fp16'"):
        TrainConfig(arch="tiny", defense="float", precision="fp16").resolved()


def _weight_threshold_gaps(model, bits):
    """Per switching weight quantizer: max |stored threshold - MSE-optimal threshold for its weights|."""
    from qadtr.quant import WeightThreshold, mse_threshold

    gaps = []
    for layer in model.modules():
        quant = getattr(layer, "weight_quant", None)
        for m in quant.modules() if quant is not None else ():
            if isinstance(m, WeightThreshold) and m.role == "weight":
                best = mse_threshold(layer.weight, bits, True, True, m.reduce_dims).view(-1)
                gaps.append((m.thresholds[str(bits)].detach().view(-1) - best).abs().max().item())
    return gaps


@pytest.mark.parametrize("swa_epochs", [0, 1])
def test_mse_weight_thresholds_follow_the_saved_weights_and_learned_ones_do_not(tmp_path, swa_epochs):
    from qadtr.checkpoint import model_from_checkpoint

    gaps = {}
    for mode in ("learned", "mse"):
        cfg = TrainConfig(arch="tiny", defense="qat", bits=[2], dataset="synthetic", epochs=2, batch_size=32,
                          lr=0.05, swa_epochs=swa_epochs, weight_thresholds=mode, seed=0)
        train(cfg, tmp_path / mode, quiet=True)
        saved = load_checkpoint(tmp_path / mode / "checkpoint.pt")
        gaps[mode] = _weight_threshold_gaps(model_from_checkpoint(saved), 2)
    assert gaps["mse"] and max(gaps["mse"]) < 1e-6
    assert max(gaps["learned"]) > 1e-3


def test_unknown_weight_threshold_mode_is_refused():
    with pytest.raises(QadtrError, match="--weight-thresholds"):
        TrainConfig(arch="tiny", weight_thresholds="max").resolved()


def test_trivial_augment_run_records_it_and_resumes_to_the_uninterrupted_result(tmp_path, train_cut_after_first_epoch):
    cfg = TrainConfig(arch="tiny", defense="float", dataset="synthetic", epochs=2, batch_size=64,
                      trivial_augment=True, seed=3)
    whole = train(cfg, tmp_path / "whole", quiet=True)
    assert load_checkpoint(tmp_path / "whole" / "checkpoint.pt")["config"]["trivial_augment"] is True
    plain = train(TrainConfig(arch="tiny", defense="float", dataset="synthetic", epochs=1, batch_size=64, seed=3),
                  tmp_path / "plain", quiet=True)
    assert plain["epochs"][0]["train_loss"] != whole["epochs"][0]["train_loss"]

    train_cut_after_first_epoch(cfg, tmp_path / "cut")
    resumed = train(cfg, tmp_path / "cut", resume=True, quiet=True)
    assert resumed["epochs"][-1]["train_loss"] == pytest.approx(whole["epochs"][-1]["train_loss"], rel=1e-6)
