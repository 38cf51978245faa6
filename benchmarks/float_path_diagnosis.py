"""Why is a checkpoint's float (32-bit) path less accurate than its quantized one?

In the fixed-4 ablation cross-entropy trains only the 4-bit path; the float path is GIR's partner and sees
no classification loss. Two hypotheses, each measured at 32 bits on test images:

* clipping: GIR made float-path activations exceed the ``--ref-bits`` clip thresholds, which the quantized
  path clips away. Measured: accuracy with every switchable ReLU clamped at those thresholds, and the
  fraction of activations above them per layer.
* BatchNorm: the float path's own BN affine parameters (trained by GIR alone) no longer suit the shared
  weights. Measured: accuracy with the float BNs' affine parameters and statistics copied from the
  ``--ref-bits`` BNs, and with the copied affine parameters but statistics re-estimated on training images.
  With ``--init``, also with the float BNs' affine parameters put back to those of the checkpoint training
  started from (statistics kept): separates "GIR moved them" from "the weights moved away from them".

    python benchmarks/float_path_diagnosis.py runs/def20/qadtr_fixed4_ptq.pt --ref-bits 4 \\
        --init benchmarks/carry/float30/checkpoint.pt --out runs/diag20/fixed4
"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch
from brevitas.nn import QuantReLU
from qadtr.calibration import reestimate_bn
from qadtr.checkpoint import load_checkpoint, model_from_checkpoint
from qadtr.data.arrays import load_dataset
from qadtr.data.loader import BatchLoader
from qadtr.evaluate import accuracy
from qadtr.io import sha256_file, versions, write_json, write_text
from qadtr.quant import FLOAT_BITS, ActThreshold
from qadtr.switchable import SwitchableBatchNorm2d, set_bits


def relu_thresholds(model, bits: int) -> dict[str, tuple[QuantReLU, float]]:
    """Each switchable ReLU with the float clip value of its ``bits`` threshold (fixed-width ones skipped)."""
    found = {}
    for name, module in model.named_modules():
        if not isinstance(module, QuantReLU):
            continue
        thresholds = [m for m in module.modules() if isinstance(m, ActThreshold)]
        if len(thresholds) == 1 and not thresholds[0].fixed_bits and str(bits) in thresholds[0].thresholds:
            found[name] = (module, float(thresholds[0].thresholds[str(bits)].detach().abs()))
    return found


@torch.no_grad()
def measure(model, loader, clip: dict[str, tuple[QuantReLU, float]], clamp: bool) -> dict:
    above = {name: [0, 0] for name in clip}
    hooks = []
    for name, (module, t) in clip.items():
        def hook(_m, _inputs, output, name=name, t=t):
            value = output.value if hasattr(output, "value") else output
            above[name][0] += int((value > t).sum())
            above[name][1] += value.numel()
            return value.clamp(max=t) if clamp else None
        hooks.append(module.register_forward_hook(hook))
    try:
        clean_acc = accuracy(model, loader)
    finally:
        for h in hooks:
            h.remove()
    return {"clean_acc": clean_acc, "above_fraction": {k: a / max(1, n) for k, (a, n) in above.items()}}


@torch.no_grad()
def borrow_bn(model, ref_bits: int, statistics: bool) -> None:
    """Copy each switchable BN's ``ref_bits`` affine parameters (and statistics) into its float BN."""
    for module in model.modules():
        if isinstance(module, SwitchableBatchNorm2d):
            target, source = module.bns[str(FLOAT_BITS)], module.bns[str(ref_bits)]
            target.weight.copy_(source.weight)
            target.bias.copy_(source.bias)
            if statistics:
                target.running_mean.copy_(source.running_mean)
                target.running_var.copy_(source.running_var)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint", type=Path)
    p.add_argument("--ref-bits", type=int, default=4)
    p.add_argument("--bn-images", type=int, default=2000, help="training images for BN re-estimation")
    p.add_argument("--init", type=Path, default=None, help="the checkpoint training started from")
    p.add_argument("--n", type=int, default=2000)
    p.add_argument("--data-dir", default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args()
    torch.manual_seed(args.seed)
    model = model_from_checkpoint(load_checkpoint(args.checkpoint)).eval()
    clip = relu_thresholds(model, args.ref_bits)
    test = load_dataset("cifar10", "test", args.data_dir, seed=args.seed).subset(args.n, args.seed)
    loader = BatchLoader(test, 250)
    set_bits(model, FLOAT_BITS)
    plain = measure(model, loader, clip, clamp=False)
    clamped = measure(model, loader, clip, clamp=True)
    original = {k: v.clone() for k, v in model.state_dict().items()}
    borrow_bn(model, args.ref_bits, statistics=True)
    borrowed = accuracy(model, loader)
    model.load_state_dict(original)
    borrow_bn(model, args.ref_bits, statistics=False)
    train = load_dataset("cifar10", "train", args.data_dir, seed=args.seed).subset(args.bn_images, args.seed + 1)
    reestimate_bn(model, [x for x, _ in BatchLoader(train, 250)])
    borrowed_reestimated = accuracy(model, loader)
    model.load_state_dict(original)
    initial_affine = None
    if args.init is not None:
        start = load_checkpoint(args.init)["model"]
        float_affine = (f".bns.{FLOAT_BITS}.weight", f".bns.{FLOAT_BITS}.bias")
        model.load_state_dict({**original, **{k: v for k, v in start.items() if k.endswith(float_affine)}})
        initial_affine = accuracy(model, loader)
    result = {"checkpoint": str(args.checkpoint), "checkpoint_sha256": sha256_file(args.checkpoint),
              "ref_bits": args.ref_bits, "bn_images": args.bn_images, "n": args.n, "seed": args.seed,
              "versions": versions(),
              "float_clean_acc": plain["clean_acc"], "float_clean_acc_clamped": clamped["clean_acc"],
              "above_fraction": plain["above_fraction"],
              "float_clean_acc_ref_bn": borrowed, "float_clean_acc_ref_bn_affine_reestimated": borrowed_reestimated,
              "init": str(args.init) if args.init else None,
              "init_sha256": sha256_file(args.init) if args.init else None,
              "float_clean_acc_initial_bn_affine": initial_affine}
    args.out.mkdir(parents=True, exist_ok=True)
    write_json(args.out / "float_path_diagnosis.json", result)
    rows = "\n".join(f"| {k} | {v:.2%} |" for k, v in plain["above_fraction"].items())
    text = (f"{args.checkpoint} at 32 bits, n = {args.n}: clean {plain['clean_acc']:.2%}, with ReLUs clamped at "
            f"the {args.ref_bits}-bit thresholds {clamped['clean_acc']:.2%}, with the {args.ref_bits}-bit BNs "
            f"{borrowed:.2%}, with their affine parameters and re-estimated statistics {borrowed_reestimated:.2%}"
            + (f", with the float BN affine parameters of {args.init} {initial_affine:.2%}" if args.init else "")
            + "\n\n| layer | above threshold |\n"
            f"| --- | --- |\n{rows}\n")
    write_text(args.out / "float_path_diagnosis.md", text)
    print(text)


if __name__ == "__main__":
    main()
