"""On the real CIFAR-10 (../shared/data/cifar10 or $QADTR_DATA_DIR); sized for CI's CPU budget."""
import json

import numpy as np
import pytest
from qadtr.data.arrays import load_dataset

pytestmark = pytest.mark.integration


def test_real_cifar10_loads_with_the_documented_shape_and_classes(cifar10_dir):
    test = load_dataset("cifar10", "test", cifar10_dir)
    assert test.x.shape == (10000, 32, 32, 3) and test.x.dtype == np.uint8
    assert np.bincount(test.y).tolist() == [1000] * 10
    assert test.classes[3] == "cat"


def test_short_qat_run_then_eval_and_calibrate_on_real_data(cifar10_dir, tmp_path, run_cli):
    """Float training on a subset, PTQ to 8/4 bits, then eval: the whole foundation path."""
    run = tmp_path / "float"
    code, out, err = run_cli("train", "--arch", "tiny", "--defense", "float", "--epochs", "2",
                             "--train-subset", "4000", "--eval-subset", "1000", "--batch-size", "64",
                             "--data-dir", cifar10_dir, "--out", run, "--quiet", "--lr", "0.05")
    assert code == 0, err
    metrics = json.loads((run / "metrics.json").read_text())
    float_acc = metrics["epochs"][-1]["test_acc"]["32"]
    assert float_acc > 0.25  # well above chance (10%) after 8k images
    assert metrics["epochs"][-1]["train_loss"] < metrics["epochs"][0]["train_loss"]

    code, out, err = run_cli("calibrate", run / "checkpoint.pt", "--bits", "8,4", "--data-dir", cifar10_dir,
                             "--num-batches", "4", "--eval-n", "1000", "--out", tmp_path / "ptq.pt", "--json")
    assert code == 0, err
    acc = json.loads(out)["accuracy"]
    assert acc["8"] >= float_acc - 0.03
    assert acc["4"] > 0.15

    code, out, err = run_cli("eval", tmp_path / "ptq.pt", "--bits", "32,8,4", "--n", "1000",
                             "--data-dir", cifar10_dir, "--out", tmp_path / "eval.json")
    assert code == 0, err
    result = json.loads((tmp_path / "eval.json").read_text())
    assert result["accuracy"]["8"] == pytest.approx(acc["8"])
