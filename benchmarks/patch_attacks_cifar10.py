"""Issue 3's measurements on one multi-bit checkpoint (e.g. the PTQ ResNet-20 with bits {32, 8, 4, 2}), or on a
precision family of separately trained checkpoints, ``32=float.pt,8=qat8.pt,4=qat4.pt,2=qat2.pt``.

Crafts 6x6 and 10x10 patches at 32, 8, 4 and 2 bits, an A-QAPA patch of each size across {32, 8, 4, 2} with
the same step budget, and an 8x8 patch from 4 bits; scores every patch at every bit-width with its
random-noise control (the transfer matrix); computes the gradient-alignment table; and reports each patch's
worst-case ASR over the bit-widths (the A-QAPA acceptance check). Resumable: a patch already on disk is reused
when it was crafted with the same size, bit-widths, steps and seed on the same checkpoint. The crafting and scoring
are `qadtr.attacks.protocol.craft_plan`/`score_plan`, shared with `qadtr robustness`.

    QADTR_DATA_DIR=../shared/data/cifar10 python benchmarks/patch_attacks_cifar10.py runs/ptq.pt --out runs/patches

writes OUT/<patch>.npy/.png/.json, OUT/results.json and OUT/results.md.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from qadtr.attacks.analysis import gradient_alignment
from qadtr.attacks.protocol import PatchSpec, craft_plan, score_plan
from qadtr.data.arrays import load_dataset
from qadtr.family import load_model_or_family
from qadtr.io import versions, write_json, write_text
from qadtr.transfer import matrix_markdown, to_float_nchw

BITS = [32, 8, 4, 2]
# Per comparison size: a single-bit patch at every bit-width and A-QAPA with the same step budget. 6x6 is the
# paper's seen size; at 10x10 (also the "unseen" 2-bit size) the 2-bit network is attackable at all, so the
# worst case over the bit-widths measures the attack rather than the 2-bit network's floor. Plus 8x8 from 4 bits.
SIZES = (6, 10)
PLAN = [*(spec for size in SIZES for spec in (
            *(PatchSpec(f"p{size}_b{b}", "single-bit", size, (b,)) for b in BITS),
            PatchSpec(f"aqapa{size}", "A-QAPA", size, tuple(BITS), quant_aware=True))),
        PatchSpec("p8_b4", "single-bit", 8, (4,))]


def aqapa_verdict(worst: dict, size: int) -> str:
    """Issue 3's check at one size: A-QAPA's worst case against the best single-bit patch's, same steps."""
    single = {p: v for p, v in worst.items() if p.startswith(f"p{size}_b")}
    best = max(single, key=single.get)
    margin = (worst[f"aqapa{size}"] - single[best]) * 100
    return (f"- {size}x{size}: A-QAPA worst case {worst[f'aqapa{size}']:.1%} vs best single-bit patch "
            f"{single[best]:.1%} ({best}): {margin:+.1f} points.")


def main(argv=None) -> None:
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
    args = ap.parse_args(argv)
    out = Path(args.out)
    torch.manual_seed(args.seed)
    _, model, ckpt_sha = load_model_or_family(args.ckpt)
    model = model.to(args.device)
    train = load_dataset(args.dataset, "train", args.data_dir, seed=args.seed)
    test = load_dataset(args.dataset, "test", args.data_dir, seed=args.seed).subset(args.n, args.seed)
    images, labels = to_float_nchw(test.x), test.y

    # Resumable: craft_plan reuses a patch already in OUT that was crafted the same way on this checkpoint.
    patches, crafting = craft_plan(model, train, PLAN, steps=args.steps, batch_size=args.batch_size, lr=args.lr,
                                   seed=args.seed, out_dir=out, reuse=True, progress=True,
                                   metadata={"source_checkpoint": args.ckpt,
                                             "source_checkpoint_sha256": ckpt_sha,
                                             "versions": versions()},
                                   log=lambda line: print(line, flush=True))
    scored = score_plan(model, patches, images, labels, BITS, seed=args.seed)
    matrix = scored["transfer"]
    # NaN (no originally-correct image at any bit-width) fails the finiteness check at the end.
    worst = {p: float("nan") if v["worst_case_asr"] is None else v["worst_case_asr"]
             for p, v in scored["per_patch"].items()}
    align = gradient_alignment(model, images[:args.n_align], labels[:args.n_align], BITS)
    result = {"checkpoint": args.ckpt, "checkpoint_sha256": ckpt_sha, "steps": args.steps,
              "batch_size": args.batch_size, "lr": args.lr, "seed": args.seed, "test_data_sha256": test.sha256(),
              "crafting": crafting, "transfer": matrix, "worst_case_asr": worst, "gradient_alignment": align,
              "versions": versions()}
    write_json(out / "results.json", result)
    lines = [f"# Patch attacks on `{args.ckpt}` ({args.steps} steps, batch {args.batch_size}, seed {args.seed})", "",
             matrix_markdown(matrix), "", "| patch | worst-case ASR over 32/8/4/2 |", "| --- | --- |",
             *(f"| {p} | {v:.1%} |" for p, v in worst.items()), "",
             *(aqapa_verdict(worst, size) for size in SIZES), "",
             f"Gradient alignment (mean cosine of input gradients, n={align['n']})", "",
             "| bits | " + " | ".join(map(str, BITS)) + " |", "| --- |" + " --- |" * len(BITS),
             *(f"| {b} | " + " | ".join(f"{v:.3f}" for v in row) + " |" for b, row in zip(BITS, align["cosine"]))]
    write_text(out / "results.md", "\n".join(lines) + "\n")
    print("\n".join(lines))
    assert np.isfinite(list(worst.values())).all()


if __name__ == "__main__":
    main()
