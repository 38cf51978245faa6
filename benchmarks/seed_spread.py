"""Seed-to-seed spread of the defense table: mean, standard deviation and range over several runs.

One ``reproduce_cifar10.py`` run per seed, each in its own folder (``--seed S --runs runs/seedS``); this
reads their ``reproduce.json`` files and states, per defense, bit-width and cell (clean accuracy, each
patch's ASR), the mean, the sample standard deviation and the min..max over the seeds that have the cell.
One-epoch QADT-R runs differing only in training precision landed 10-12 ASR points apart (results 6b), so
a difference between two defenses means little until it is compared with this spread.

    python benchmarks/seed_spread.py runs/seed0 runs/seed1 runs/seed2 --out runs/seed_spread
"""
from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from qadtr.io import sha256_file, write_json, write_text

CELLS = ("clean", "seen", "unseen_8", "unseen_10", "adaptive")


def cells_of(row: dict) -> dict[str, float]:
    """One table row (a defense at one bit-width) as {cell: value}; ASR cells absent from the row are skipped."""
    values = {"clean": row["clean_acc"]}
    for key in CELLS[1:]:
        hit = next((v for k, v in row["asr"].items() if k.startswith(key)), None)
        if hit is not None and hit["asr"] is not None:
            values[key] = hit["asr"]
    return values


def spread(results: list[dict]) -> dict:
    """{defense: {bits: {cell: {mean, std, min, max, n, seeds}}}} over the runs' evaluations."""
    collected: dict = {}
    for result in results:
        for name, evaluation in result["evals"].items():
            for row in evaluation["table"]:
                for cell, value in cells_of(row).items():
                    entry = collected.setdefault(name, {}).setdefault(str(row["bits"]), {}).setdefault(cell, [])
                    entry.append((result["seed"], value))
    out: dict = {}
    for name, by_bits in collected.items():
        for bits, by_cell in by_bits.items():
            for cell, pairs in by_cell.items():
                values = [v for _, v in pairs]
                out.setdefault(name, {}).setdefault(bits, {})[cell] = {
                    "mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else None,
                    "min": min(values), "max": max(values), "n": len(values), "seeds": [s for s, _ in pairs]}
    return out


def markdown(table: dict) -> str:
    lines = ["| defense | bits | clean acc | seen 6x6@32 | unseen 8x8@4 | unseen 10x10@2 | adaptive | seeds |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for name, by_bits in table.items():
        for bits, by_cell in sorted(by_bits.items(), key=lambda kv: -int(kv[0])):
            cells = []
            for cell in CELLS:
                s = by_cell.get(cell)
                if s is None:
                    cells.append("-")
                    continue
                std = "n/a" if s["std"] is None else f"{100 * s['std']:.1f}"
                cells.append(f"{100 * s['mean']:.1f} ± {std} ({100 * s['min']:.1f}..{100 * s['max']:.1f})")
            seeds = max((s["n"] for s in by_cell.values()), default=0)
            lines.append(f"| {name} | {bits} | " + " | ".join(cells) + f" | {seeds} |")
    lines += ["", "Percent: mean ± sample standard deviation (min..max) over the seeds; ASR over originally-correct "
              "images, as in the single-seed table."]
    return "\n".join(lines) + "\n"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+", type=Path, help="Folders holding a reproduce.json, one per seed.")
    p.add_argument("--out", type=Path, default=Path("runs/seed_spread"))
    args = p.parse_args(argv)
    files = [run / "reproduce.json" for run in args.runs]
    missing = [str(f) for f in files if not f.exists()]
    if missing:
        raise SystemExit(f"error: no reproduce.json in {', '.join(missing)}")
    results = [json.loads(f.read_text()) for f in files]
    seeds = [r["seed"] for r in results]
    if len(set(seeds)) != len(seeds):
        raise SystemExit(f"error: the runs repeat a seed ({seeds}); the spread needs one run per seed")
    table = spread(results)
    write_json(args.out / "seed_spread.json", {"inputs": {str(f): sha256_file(f) for f in files}, "seeds": seeds,
                                               "spread": table})
    write_text(args.out / "seed_spread.md", markdown(table))
    print(markdown(table))


if __name__ == "__main__":
    main()
