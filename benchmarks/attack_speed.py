"""Patch crafting cost (steps/s) on this machine: PatchAttack at each bit-width and A-QAPA, on ResNet-20.

Crafting cost does not depend on the weights or the pixels, so by default this uses a randomly initialised
ResNet-20 and uniform random images; pass --ckpt to time a trained checkpoint instead.

    python benchmarks/attack_speed.py --steps 20 --batch-size 128 --out runs/attack_speed.json
"""
from __future__ import annotations

import argparse

import numpy as np
import torch
from qadtr import create_model
from qadtr.attacks import PatchAttack, QuantAwarePatchAttack
from qadtr.deploy.env import cpu_model
from qadtr.io import versions, write_json


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ckpt", default=None, help="Time this checkpoint's model (default: random ResNet-20).")
    ap.add_argument("--bits", default="32,8,4,2")
    ap.add_argument("--size", type=int, default=6)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's choice).")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None, help="Write the JSON result here.")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    bit_list = [int(b) for b in args.bits.split(",")]
    torch.manual_seed(args.seed)
    if args.ckpt:
        from qadtr.checkpoint import load_checkpoint, model_from_checkpoint

        model = model_from_checkpoint(load_checkpoint(args.ckpt))
    else:
        model = create_model("resnet20", bits=sorted(set(bit_list) | {32}))
    rng = np.random.default_rng(args.seed)
    images = rng.random((max(4 * args.batch_size, 512), 3, 32, 32), dtype=np.float32)
    labels = rng.integers(0, 10, len(images))
    # One warm-up run per bit-width: the first forward at a bit-width initialises its thresholds.
    for b in bit_list:
        PatchAttack(bits=b, steps=1, batch_size=8).generate(model, images, labels)
    rows = []
    common = {"size": args.size, "steps": args.steps, "batch_size": args.batch_size, "seed": args.seed}
    for b in bit_list:
        attack = PatchAttack(bits=b, **common)
        attack.generate(model, images, labels)
        rows.append({"attack": f"PatchAttack@{b}", "steps_per_s": args.steps / attack.elapsed_s,
                     "images_per_s": args.steps * args.batch_size / attack.elapsed_s})
    aqapa = QuantAwarePatchAttack(bits=bit_list, **common)
    aqapa.generate(model, images, labels)
    rows.append({"attack": f"A-QAPA{bit_list}", "steps_per_s": args.steps / aqapa.elapsed_s,
                 "images_per_s": args.steps * args.batch_size / aqapa.elapsed_s,
                 "bit_counts": {str(k): v for k, v in aqapa.bit_counts.items()}})
    result = {"model": args.ckpt or "resnet20 (random init)", "size": args.size, "steps": args.steps,
              "batch_size": args.batch_size, "threads": torch.get_num_threads(), "cpu": cpu_model(),
              "rows": rows, "versions": versions()}
    print(f"{'attack':<24} {'steps/s':>8} {'img/s':>8}   (batch {args.batch_size}, {torch.get_num_threads()} threads)")
    for r in rows:
        print(f"{r['attack']:<24} {r['steps_per_s']:>8.2f} {r['images_per_s']:>8.0f}")
    if args.out:
        write_json(args.out, result)


if __name__ == "__main__":
    main()
