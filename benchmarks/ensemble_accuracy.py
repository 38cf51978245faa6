"""Test accuracy of float checkpoints alone and as an ensemble (the mean of their softmaxes).

An ensemble is what ``qadtr train --teacher A --teacher B ...`` distils from, so its accuracy is the ceiling
the student is pulled towards; this measures it on the same test images the training runs report.

    python benchmarks/ensemble_accuracy.py benchmarks/carry/float{120,190,220}/checkpoint.pt --out runs/ensemble
"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch
from qadtr.data import load_dataset
from qadtr.data.loader import BatchLoader
from qadtr.distill import ensemble_logits, load_teacher
from qadtr.io import sha256_file, versions, write_json, write_text


@torch.no_grad()
def ensemble_accuracy(paths: list[Path], data_dir, temperature: float = 1.0) -> dict:
    """{"members": {path: acc}, "ensemble": acc, "n": test images}; each member at its float path."""
    test = load_dataset("cifar10", "test", data_dir)
    models = [load_teacher(p, len(test.classes))[0] for p in paths]
    hits, member_hits, n = 0, [0] * len(models), 0
    for x, y in BatchLoader(test, 500):
        logits = [m(x) for m in models]
        hits += (ensemble_logits(logits, temperature).argmax(1) == y).sum().item()
        for i, z in enumerate(logits):
            member_hits[i] += (z.argmax(1) == y).sum().item()
        n += len(y)
    return {"members": {str(p): h / n for p, h in zip(paths, member_hits)}, "ensemble": hits / n, "n": n}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkpoints", type=Path, nargs="+")
    ap.add_argument("--data-dir", default=None, help="CIFAR-10 folder (default: QADTR_DATA_DIR)")
    ap.add_argument("--temperature", type=float, default=1.0, help="Softmax temperature of the mean.")
    ap.add_argument("--out", type=Path, required=True, help="Folder for ensemble.json and ensemble.md.")
    ap.add_argument("--seed", type=int, default=0, help="Recorded only: evaluation has no randomness.")
    args = ap.parse_args()
    result = ensemble_accuracy(args.checkpoints, args.data_dir, args.temperature)
    record = {**result, "temperature": args.temperature, "seed": args.seed, "versions": versions(),
              "inputs": {str(p): sha256_file(p) for p in args.checkpoints}}
    lines = ["| model | test acc |", "| --- | --- |"]
    lines += [f"| `{p}` | {a:.2%} |" for p, a in result["members"].items()]
    lines.append(f"| ensemble of {len(args.checkpoints)} (mean softmax, T={args.temperature:g}) | "
                 f"**{result['ensemble']:.2%}** |")
    args.out.mkdir(parents=True, exist_ok=True)
    write_json(args.out / "ensemble.json", record)
    write_text(args.out / "ensemble.md", "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
