"""Does `qadtr check` (ONNX Runtime) agree with `qadtr transfer` (PyTorch) within a tolerance?

    python benchmarks/ort_agreement.py RUN/transfer.json DEVICE/check.json [--tol 1.0]

Run both with the same --n, --seed, data and patch files (check on the exported W8A8/W4A4/W2A2 models,
transfer at --target-bits 8,4,2). Cells pair up by patch name and (weight, activation) bits. Prints every
pair and exits 1 when a difference exceeds --tol percentage points, or when no cell pairs up.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("transfer", type=Path)
    ap.add_argument("check", type=Path)
    ap.add_argument("--tol", type=float, default=1.0, help="largest allowed difference, percentage points")
    args = ap.parse_args(argv)
    from qadtr.deploy.report import agreement

    rows = agreement(json.loads(args.transfer.read_text()), json.loads(args.check.read_text()))
    if not rows:
        print("error: no cell pairs up (different --n or --seed, patch names, or bit-widths)", file=sys.stderr)
        return 1
    worst = max(r["max_diff_points"] for r in rows)
    for r in rows:
        asr = r["values"]["asr"]
        print(f"{r['patch']:>24}  W{r['precision'][0]}A{r['precision'][1]:<3}  PyTorch ASR {asr[0]:7.2%}  "
              f"ORT ASR {asr[1]:7.2%}  max |diff| {r['max_diff_points']:.2f} points")
    print(f"{len(rows)} cells, worst difference {worst:.2f} points (tolerance {args.tol})")
    return 0 if worst <= args.tol else 1


if __name__ == "__main__":
    sys.exit(main())
