"""Where a quantized network sits on its rounding boundaries: per activation quantizer, the share of values
within a hair of a level boundary, computed in float64.

A value ``x`` with scale ``s`` rounds to ``round(x / s)``; when ``x / s`` lies within ``tau`` (in steps) of a
half-integer, float32 rounding noise decides which level it gets, and at 4 bits one level is 1/15 of the
range. Uniformly spread values put a share ``2 * tau`` there; a network whose activations pile up on the
boundaries flips decisions between float32 and exact arithmetic (docs/method.md, Export: the
rounding-sensitive gate). Writes JSON and Markdown.

    QADTR_DATA_DIR=../shared/data/cifar10 python benchmarks/rounding_margin.py \\
        toolkit/weights/qadtr-cifar10.pt toolkit/weights/qat-cifar10.pt --bits 4 --n 500 --out runs/margin
"""
from __future__ import annotations

import argparse
import os
from pathlib import Path

import torch
from qadtr.checkpoint import load_checkpoint, model_from_checkpoint
from qadtr.data.arrays import load_dataset
from qadtr.data.loader import to_tensor
from qadtr.export.pipeline import torch_logits
from qadtr.io import sha256_file, versions, write_json, write_text
from qadtr.quant import ActThreshold
from qadtr.switchable import bits as bits_ctx

TAUS = (1e-6, 1e-4)


@torch.no_grad()
def boundary_shares(model, images: torch.Tensor, bits: int) -> dict:
    """Per activation quantizer: values in range, and the share within each tau of a rounding boundary."""
    model = model.double().eval()
    counts: dict[str, dict] = {}
    hooks = []
    for name, module in model.named_modules():
        if not isinstance(module, ActThreshold):
            continue

        def hook(mod, inputs, scale, name=name):
            x, int_threshold = inputs[0], inputs[1]
            steps = x / scale
            high = float(int_threshold)
            low = -high if mod.signed else 0.0
            inside = steps[(steps > low) & (steps < high)]  # clipped and zero values round nowhere
            margin = (inside - torch.floor(inside) - 0.5).abs()
            c = counts.setdefault(name, {"bits": mod.fixed_bits or int(mod.active), "values": 0,
                                         **{f"within_{t:g}": 0 for t in TAUS}})
            c["values"] += inside.numel()
            for t in TAUS:
                c[f"within_{t:g}"] += int((margin < t).sum())

        hooks.append(module.register_forward_hook(hook))
    try:
        with bits_ctx(model, bits):
            for batch in images.double().split(250):
                model(batch)
    finally:
        for h in hooks:
            h.remove()
    return counts


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("checkpoints", nargs="+")
    ap.add_argument("--bits", type=int, default=4)
    ap.add_argument("--n", type=int, default=500)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="runs/margin")
    args = ap.parse_args()
    data = load_dataset("cifar10", "test", os.environ.get("QADTR_DATA_DIR")).subset(args.n, args.seed)
    images = to_tensor(data.x)
    record = {"bits": args.bits, "images": len(data), "data_sha256": data.sha256(), "seed": args.seed,
              "taus_in_steps": list(TAUS), "versions": versions(), "models": {}}
    lines = [f"Share of activations within tau steps of a rounding boundary (float64), W{args.bits}A{args.bits}, "
             f"{len(data)} test images. Uniform values give 2*tau.", ""]
    for path in args.checkpoints:
        model = model_from_checkpoint(load_checkpoint(path))
        x = images.numpy()
        f64, f32 = torch_logits(model, x, args.bits, args.bits), torch_logits(model, x, args.bits, args.bits,
                                                                           dtype=torch.float32)
        agreement = float((f64.argmax(1) == f32.argmax(1)).mean())
        layers = boundary_shares(model, images, args.bits)
        record["models"][path] = {"sha256": sha256_file(path), "torch_float32_vs_float64_top1": agreement,
                                  "layers": layers}
        lines += [f"**{path}**: float32 PyTorch agrees with float64 on {agreement:.2%} of top-1 decisions.", "",
                  "| quantizer | bits | values | " + " | ".join(f"share < {t:g}" for t in TAUS) + " |",
                  "| --- | --- | --- | " + " | ".join("---" for _ in TAUS) + " |"]
        for name, c in layers.items():
            shares = " | ".join(f"{c[f'within_{t:g}'] / max(1, c['values']):.2e}" for t in TAUS)
            lines.append(f"| {name} | {c['bits']} | {c['values']} | {shares} |")
        lines.append("")
    out = Path(args.out)
    write_json(out / "rounding_margin.json", record)
    write_text(out / "rounding_margin.md", "\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
