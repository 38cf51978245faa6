import importlib.util
import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_CIFAR = REPO.parent / "shared" / "data" / "cifar10"


def cifar_dir() -> Path | None:
    env = os.environ.get("QADTR_DATA_DIR")
    for cand in ([Path(env)] if env else []) + [SHARED_CIFAR]:
        if (cand / "cifar10_test.npz").is_file():
            return cand
    return None


@pytest.fixture(scope="session")
def cifar10_dir():
    path = cifar_dir()
    if path is None:
        if os.environ.get("CI"):
            pytest.fail("CI needs the real CIFAR-10 at ../shared/data/cifar10 or $QADTR_DATA_DIR")
        pytest.skip("real CIFAR-10 not available")
    return path


@pytest.fixture(scope="session")
def load_benchmark():
    """Import a script from benchmarks/ (a folder of scripts, not a package): ``load_benchmark("seed_spread")``."""

    def load(name: str):
        spec = importlib.util.spec_from_file_location(name, REPO / "benchmarks" / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module

    return load


@pytest.fixture
def run_cli(monkeypatch, capsys):
    """Run the `qadtr` entry point in-process; returns (exit_code, stdout, stderr)."""
    from qadtr.cli import main

    def run(*args):
        monkeypatch.setattr(sys, "argv", ["qadtr", *map(str, args)])
        with pytest.raises(SystemExit) as exc:
            main()
        out = capsys.readouterr()
        return exc.value.code, out.out, out.err

    return run


@pytest.fixture
def tiny_model():
    import qadtr
    import torch

    torch.manual_seed(0)
    return qadtr.create_model("tiny", bits=(2, 4, 8, 32))


@pytest.fixture
def train_cut_after_first_epoch(monkeypatch):
    """``cut(cfg, out)``: run ``qadtr.train.train`` and die right after epoch 1's checkpoint is written."""
    import qadtr.train as train_module
    from qadtr.checkpoint import load_checkpoint

    def crash(*args, **kwargs):  # metrics.json is written after the checkpoint, so failing here loses nothing saved
        raise RuntimeError("killed")

    def cut(cfg, out):
        with monkeypatch.context() as patch:
            patch.setattr(train_module, "write_json", crash)
            with pytest.raises(RuntimeError, match="killed"):
                train_module.train(cfg, out, quiet=True)
        assert load_checkpoint(Path(out) / "checkpoint.pt")["epoch"] == 1

    return cut
