"""How a checkpoint's quantized weights use their levels: dead output channels and zero fractions.

A channel is dead at a bit-width when every one of its weights rounds to zero there (its threshold sits
above 2 max|w| at 2 bits), so it outputs only its BN bias. The zero fraction is compared with what the
MSE-optimal threshold of the same weights would give (``qadtr.quant.mse_threshold``, the initialisation).

    python benchmarks/weight_levels.py benchmarks/carry/qat120/w2a2/checkpoint.pt --bits 2 --out runs/levels
"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch
from qadtr.checkpoint import load_checkpoint, model_from_checkpoint
from qadtr.io import sha256_file, versions, write_json, write_text
from qadtr.quant import mse_threshold
from qadtr.switchable import set_bits


@torch.no_grad()
def weight_levels(model, bits: int) -> list[dict]:
    """Per switchable conv/linear layer at ``bits``: channels, dead channels, zero fraction (actual, MSE-optimal)."""
    set_bits(model, bits)
    rows = []
    for name, layer in model.named_modules():
        quant = getattr(layer, "weight_quant", None)
        if quant is None or getattr(layer, "weight", None) is None:
            continue
        qw = layer.quant_weight()
        if int(qw.bit_width) != bits:
            continue  # a fixed-precision layer (first or last), not this width's
        ints = (qw.value / qw.scale).round().flatten(1)
        w = layer.weight.detach()
        dims = tuple(range(1, w.dim()))
        mse_ints = (w / mse_threshold(w, bits, True, True, dims) * (2 ** (bits - 1) - 1)).round()
        rows.append({"layer": name, "channels": ints.shape[0], "dead": int((ints == 0).all(1).sum()),
                     "zero_fraction": float((ints == 0).float().mean()),
                     "zero_fraction_mse_optimal": float((mse_ints == 0).float().mean())})
    return rows


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoints", nargs="+", type=Path)
    p.add_argument("--bits", type=int, default=2)
    p.add_argument("--out", type=Path, default=Path("runs/weight_levels"))
    args = p.parse_args()
    result = {"bits": args.bits, "versions": versions(), "checkpoints": {}}
    lines = [f"Weights at {args.bits} bits.", "", "| checkpoint | dead channels | zero fraction | MSE-optimal zero "
             "fraction |", "| --- | --- | --- | --- |"]
    for path in args.checkpoints:
        model = model_from_checkpoint(load_checkpoint(path)).eval()
        rows = weight_levels(model, args.bits)
        channels, dead = sum(r["channels"] for r in rows), sum(r["dead"] for r in rows)
        zero = sum(r["zero_fraction"] * r["channels"] for r in rows) / channels
        mse = sum(r["zero_fraction_mse_optimal"] * r["channels"] for r in rows) / channels
        result["checkpoints"][str(path)] = {"sha256": sha256_file(path), "layers": rows, "channels": channels,
                                            "dead": dead, "zero_fraction": zero, "zero_fraction_mse_optimal": mse}
        lines.append(f"| `{path}` | {dead} / {channels} | {zero:.2f} | {mse:.2f} |")
    write_json(args.out / "weight_levels.json", result)
    write_text(args.out / "weight_levels.md", "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
