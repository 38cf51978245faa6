"""Patch-attack plumbing on the real CIFAR-10 with a randomly initialised ResNet-20 (CI-sized: under a minute)."""
import json

import numpy as np
import pytest
import qadtr
import torch
from qadtr.checkpoint import load_checkpoint, model_from_checkpoint, save_checkpoint
from qadtr.data.arrays import load_dataset
from qadtr.data.loader import BatchLoader
from qadtr.evaluate import accuracy_per_bits

pytestmark = pytest.mark.integration


def test_attack_then_transfer_on_real_cifar10(cifar10_dir, tmp_path, run_cli):
    torch.manual_seed(0)
    ckpt = tmp_path / "resnet20.pt"
    save_checkpoint(ckpt, {"config": {"arch": "resnet20", "model_bits": [2, 4, 8, 32], "num_classes": 10,
                                      "defense": "float"},
                           "trained_bits": [32], "model": qadtr.create_model("resnet20").state_dict()})
    out = tmp_path / "patches"
    code, _, err = run_cli("attack", ckpt, "--bits", "32", "--size", "6", "--steps", "3", "--batch-size", "32",
                           "--train-n", "256", "--eval-n", "200", "--data-dir", cifar10_dir, "--out", out,
                           "--seed", "1", "--quiet")
    assert code == 0, err
    meta = json.loads((out / "patch.json").read_text())
    assert meta["size"] == 6 and meta["area_percent"] == pytest.approx(100 * 36 / 1024)
    assert meta["source_bits"] == [32] and meta["steps"] == 3 and meta["seed"] == 1
    assert len(meta["source_checkpoint_sha256"]) == 64 and meta["asr_on_source"]["n"] == 200
    patch = np.load(out / "patch.npy")
    assert patch.shape == (3, 6, 6) and 0 <= patch.min() and patch.max() <= 1

    code, _, err = run_cli("transfer", ckpt, "--patches", out / "patch.npy", "--target-bits", "32,8", "--n", "200",
                           "--data-dir", cifar10_dir, "--out", tmp_path / "transfer", "--seed", "1", "--quiet")
    assert code == 0, err
    result = json.loads((tmp_path / "transfer" / "transfer.json").read_text())
    assert [(c["patch"], c["target"]) for c in result["cells"]] == [("patch", "32"), ("patch", "8")]
    for cell in result["cells"]:
        for key in ("asr", "asr_all", "robust_acc", "clean_acc", "flip_rate"):
            assert 0.0 <= cell["patch_metrics"][key] <= 1.0 or np.isnan(cell["patch_metrics"][key])
            assert key in cell["control_metrics"]
    assert (tmp_path / "transfer" / "transfer.md").is_file() and (tmp_path / "transfer" / "transfer.png").is_file()

    # The numpy predictor path the matrix used agrees with qadtr.evaluate on the same seeded subset.
    model = model_from_checkpoint(load_checkpoint(ckpt))
    test = load_dataset("cifar10", "test", cifar10_dir, seed=1).subset(200, 1)
    expected = accuracy_per_bits(model, BatchLoader(test, 256), [32, 8])
    assert result["clean_acc"] == {str(b): pytest.approx(a) for b, a in expected.items()}
    assert result["test_data_sha256"] == test.sha256()
