"""Issue 3's measurements on one multi-bit checkpoint (e.g. the PTQ ResNet-20 with bits {32, 8, 4, 2}).

Crafts 6x6 patches at 32, 8, 4 and 2 bits, an A-QAPA 6x6 patch across {32, 8, 4, 2} with the same step budget,
an 8x8 patch from 4 bits and a 10x10 patch from 2 bits; scores every patch at every bit-width with its
random-noise control (the transfer matrix); computes the gradient-alignment table; and reports each patch's
worst-case ASR over the bit-widths (the A-QAPA acceptance check). Resumable: a patch already on disk is reused.

    QADTR_DATA_DIR=../shared/data/cifar10 python benchmarks/patch_attacks_cifar10.py runs/ptq.pt --out runs/patches

writes OUT/<patch>.npy/.png/.json, OUT/results.json and OUT/results.md.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from qadtr.attacks import PatchAttack, QuantAwarePatchAttack
from qadtr.attacks.analysis import gradient_alignment, score_patches
from qadtr.checkpoint import load_checkpoint, model_from_checkpoint
from qadtr.data.arrays import load_dataset
from qadtr.io import sha256_file, versions, write_json, write_text
from qadtr.patchfile import load_patch, save_patch
from qadtr.transfer import matrix_markdown, to_float_nchw

BITS = [32, 8, 4, 2]
# name -> (size, crafting bits, A-QAPA?)
PLAN = {"p6_b32": (6, [32], False), "p6_b8": (6, [8], False), "p6_b4": (6, [4], False), "p6_b2": (6, [2], False),
        "aqapa6": (6, BITS, True), "p8_b4": (8, [4], False), "p10_b2": (10, [2], False)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("ckpt")
    ap.add_argument("--out", required=True)
    ap.add_argument("--steps", type=int, default=500)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--lr", type=float, default=0.05)
    ap.add_argument("--n", type=int, default=2000, help="Test images for the transfer matrix.")
    ap.add_argument("--n-align", type=int, default=500, help="Test images for gradient alignment.")
    ap.add_argument("--dataset", default="cifar10")
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    out = Path(args.out)
    torch.manual_seed(args.seed)
    payload = load_checkpoint(args.ckpt)
    model = model_from_checkpoint(payload).to(args.device)
    train = load_dataset(args.dataset, "train", args.data_dir, seed=args.seed)
    test = load_dataset(args.dataset, "test", args.data_dir, seed=args.seed).subset(args.n, args.seed)
    images, labels = to_float_nchw(test.x), test.y

    patches, crafting = {}, {}
    for name, (size, bits, quant_aware) in PLAN.items():
        path = out / f"{name}.npy"
        if path.is_file():
            patches[name], meta = load_patch(path)
            crafting[name] = (meta or {}).get("crafting", {})
            continue
        common = {"size": size, "steps": args.steps, "batch_size": args.batch_size, "lr": args.lr, "seed": args.seed,
                  "progress": True}
        attack = QuantAwarePatchAttack(bits=bits, **common) if quant_aware else PatchAttack(bits=bits[0], **common)
        patches[name] = attack.generate(model, train)
        crafting[name] = {"attack": type(attack).__name__, "source_bits": bits, "craft_s": attack.elapsed_s,
                          "steps_per_s": args.steps / attack.elapsed_s}
        if quant_aware:
            crafting[name]["bit_counts"] = {str(b): c for b, c in attack.bit_counts.items()}
        save_patch(out, patches[name], {"size": size, "shape": "square", "area_percent": attack.area_percent(),
                                        "source_checkpoint": args.ckpt, "source_checkpoint_sha256":
                                        sha256_file(args.ckpt), "source_bits": bits, "steps": args.steps,
                                        "seed": args.seed, "target": None, "crafting": crafting[name],
                                        "versions": versions()}, name)
        print(f"{name}: {crafting[name]['steps_per_s']:.2f} steps/s", flush=True)

    matrix = score_patches(model, patches, images, labels, BITS, seed=args.seed)
    by = {(c["patch"], c["target"]): c for c in matrix["cells"]}
    worst = {p: min(by[p, str(b)]["patch_metrics"]["asr"] for b in BITS) for p in patches}
    align = gradient_alignment(model, images[:args.n_align], labels[:args.n_align], BITS)
    result = {"checkpoint": args.ckpt, "checkpoint_sha256": sha256_file(args.ckpt), "steps": args.steps,
              "batch_size": args.batch_size, "lr": args.lr, "seed": args.seed, "test_data_sha256": test.sha256(),
              "crafting": crafting, "transfer": matrix, "worst_case_asr": worst, "gradient_alignment": align,
              "versions": versions()}
    write_json(out / "results.json", result)
    single = {p: v for p, v in worst.items() if p.startswith("p6_")}
    lines = [f"# Patch attacks on `{args.ckpt}` ({args.steps} steps, batch {args.batch_size}, seed {args.seed})", "",
             matrix_markdown(matrix), "", "| patch | worst-case ASR over 32/8/4/2 |", "| --- | --- |",
             *(f"| {p} | {v:.1%} |" for p, v in worst.items()), "",
             f"A-QAPA worst case {worst['aqapa6']:.1%} vs best single-bit 6x6 patch {max(single.values()):.1%} "
             f"({max(single, key=single.get)}).", "",
             f"Gradient alignment (mean cosine of input gradients, n={align['n']})", "",
             "| bits | " + " | ".join(map(str, BITS)) + " |", "| --- |" + " --- |" * len(BITS),
             *(f"| {b} | " + " | ".join(f"{v:.3f}" for v in row) + " |" for b, row in zip(BITS, align["cosine"]))]
    write_text(out / "results.md", "\n".join(lines) + "\n")
    print("\n".join(lines))
    assert np.isfinite(list(worst.values())).all()


if __name__ == "__main__":
    main()
