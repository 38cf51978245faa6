"""``qadtr demo``: the pipeline with a built-in config on CIFAR-10, once per embedded checkpoint.

The settings are small enough for a 2-core CPU in under ten minutes per checkpoint: 500 test images, 150
crafting steps per patch on a 5000-image training subset, exports at 8/4/2 bits (32 scored in PyTorch),
bench at batch 1 and 64 on one thread with a few timed runs. The model is loaded, never trained.
"""
from __future__ import annotations

from pathlib import Path

from ..data.arrays import ENV_VAR
from ..errors import DataError
from .config import PipelineConfig, load_config

DEMO_BITS = (32, 8, 4, 2)
DEMO = {
    "dataset": "cifar10", "n": 500, "attack_steps": 150, "attack_batch_size": 64, "attack_train_n": 5000,
    "check_threads": 1, "bench_batches": [1, 64], "bench_threads": [1], "bench_warmup": 3, "bench_iters": 10,
}
HOW_TO_GET_DATA = (f"qadtr demo needs CIFAR-10: pass --data-dir DIR or set {ENV_VAR} to a folder holding "
                   "cifar10_train.npz and cifar10_test.npz (or torchvision's cifar-10-batches-py), e.g. from "
                   "`qadtr train --download --epochs 1 ...` on a machine with a network")


def check_cifar10(data_dir) -> Path:
    """The CIFAR-10 folder, or a :class:`DataError` that says in one sentence how to provide it.

    Only the files are looked for here: the stages load them, and this must fail before any work starts.
    """
    import os

    chosen = data_dir or os.environ.get(ENV_VAR)
    root = Path(chosen).expanduser() if chosen else None
    if root is None or not root.is_dir():
        where = f" ({root} does not exist)" if root is not None else ""
        raise DataError(HOW_TO_GET_DATA + where)
    npz = all((root / f"cifar10_{split}.npz").is_file() for split in ("train", "test"))
    if not (npz or (root / "cifar-10-batches-py").is_dir()):
        raise DataError(f"{HOW_TO_GET_DATA} ({root} holds neither)")
    return root


def demo_config(name: str, out, data_dir, dataset: str = "cifar10", cli: dict | None = None) -> PipelineConfig:
    """The demo's config for the embedded checkpoint ``name``; ``cli`` values override it."""
    from ..pretrained import load_pretrained

    model_bits = load_pretrained(name)["config"]["model_bits"]
    bits = [b for b in DEMO_BITS if b in model_bits]
    base = {**DEMO, "pretrained": name, "out": str(Path(out) / name), "dataset": dataset, "data_dir": data_dir,
            "bits": bits or None}
    return load_config(None, cli or {}, base=base)
