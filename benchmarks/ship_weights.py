"""Copy a finished run's checkpoint into the package as an embedded pretrained model (or a carried run).

Keeps what loading needs (config, model state, trained bits, classes, epoch, metrics, versions) and drops
the optimizer, scheduler and defense state, which only resuming uses; refuses a result over the size cap.

    python benchmarks/ship_weights.py runs/foundation/qadtr/checkpoint.pt toolkit/weights/qadtr-cifar10.pt
"""
from __future__ import annotations

import argparse
from pathlib import Path

from qadtr.checkpoint import load_checkpoint, save_checkpoint

KEEP = ("config", "model", "trained_bits", "classes", "epoch", "metrics", "versions")


def ship(src: Path, dst: Path, max_bytes: int) -> int:
    """Write the stripped checkpoint to ``dst``; an existing ``dst`` is only replaced by one under the cap."""
    payload = load_checkpoint(src)
    staged = dst.with_name(f".{dst.name}.staged")
    save_checkpoint(staged, {k: payload[k] for k in KEEP if k in payload})
    size = staged.stat().st_size
    if size > max_bytes:
        staged.unlink()
        raise SystemExit(f"error: {dst} would be {size:,} bytes, over the {max_bytes:,}-byte cap")
    staged.replace(dst)
    return size


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("src", type=Path)
    ap.add_argument("dst", type=Path)
    ap.add_argument("--max-bytes", type=int, default=2_000_000, help="Embedded models stay under 2 MB.")
    args = ap.parse_args()
    print(f"{args.dst}: {ship(args.src, args.dst, args.max_bytes):,} bytes")


if __name__ == "__main__":
    main()
