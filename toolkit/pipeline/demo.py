"""``qadtr demo``: the pipeline with a built-in config on CIFAR-10, once per embedded checkpoint.

The settings are small enough for a 2-core CPU in under ten minutes per checkpoint: 500 test images, 150
crafting steps per patch on a 5000-image training subset, exports at 8/4/2 bits (32 scored in PyTorch),
bench at batch 1 and 64 on one thread with a few timed runs. The model is loaded, never trained.
"""
from __future__ import annotations

from pathlib import Path

from ..data.arrays import CACHE_ENV_VAR, ENV_VAR, cifar10_cache_dir, load_cifar10
from ..errors import DataError
from .config import PipelineConfig, load_config

DEMO_BITS = (32, 8, 4, 2)
DEMO = {
    "dataset": "cifar10", "n": 500, "attack_steps": 150, "attack_batch_size": 64, "attack_train_n": 5000,
    "check_threads": 1, "bench_batches": [1, 64], "bench_threads": [1], "bench_warmup": 3, "bench_iters": 10,
}
HOW_TO_GET_DATA = (f"qadtr demo needs CIFAR-10: pass --data-dir DIR or set {ENV_VAR} to a folder holding "
                   "cifar10_train.npz and cifar10_test.npz (or torchvision's cifar-10-batches-py), or run it "
                   f"once on a machine with a network, which downloads it into the cache (${CACHE_ENV_VAR})")


def holds_cifar10(root: Path) -> bool:
    npz = all((root / f"cifar10_{split}.npz").is_file() for split in ("train", "test"))
    return npz or (root / "cifar-10-batches-py").is_dir()


def download_cifar10(root: Path) -> None:
    """torchvision's CIFAR-10 download into ``root`` (one archive holds both splits)."""
    load_cifar10(root, "test", download=True)


def check_cifar10(data_dir) -> Path:
    """The CIFAR-10 folder: ``data_dir``, else ``$QADTR_DATA_DIR``, else the cache, else a download into the cache.

    A folder the user named must hold CIFAR-10 (no silent fallback). Otherwise a :class:`DataError` says in one
    sentence how to provide it. Only the files are looked for here: the stages load them, and this must fail
    before any work starts.
    """
    import os

    chosen = data_dir or os.environ.get(ENV_VAR)
    if chosen:
        root = Path(chosen).expanduser()
        if not root.is_dir():
            raise DataError(f"{HOW_TO_GET_DATA} ({root} does not exist)")
        if not holds_cifar10(root):
            raise DataError(f"{HOW_TO_GET_DATA} ({root} holds neither)")
        return root
    cache = cifar10_cache_dir()
    if holds_cifar10(cache):
        return cache
    try:
        download_cifar10(cache)
    except Exception as e:  # noqa: BLE001 - no network, a full disk, ...: one sentence either way
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise DataError(f"{HOW_TO_GET_DATA} (nothing in {cache}, and the download failed: {reason})") from None
    return cache


def demo_config(name: str, out, data_dir, dataset: str = "cifar10", cli: dict | None = None) -> PipelineConfig:
    """The demo's config for the embedded checkpoint ``name``; ``cli`` values override it."""
    from ..pretrained import load_pretrained

    model_bits = load_pretrained(name)["config"]["model_bits"]
    bits = [b for b in DEMO_BITS if b in model_bits]
    base = {**DEMO, "pretrained": name, "out": str(Path(out) / name), "dataset": dataset, "data_dir": data_dir,
            "bits": bits or None}
    return load_config(None, cli or {}, base=base)
