"""Issue 4's defense table on CIFAR-10 from scratch: every defense from one float ResNet-20, then the protocol.

Stages, each resumable (a finished run is reused, an unfinished one continues with --resume, a PTQ file or an
evaluation is reused when it was made from the same checkpoint, by sha256) and each with its wall time:

1. ``float``: float ResNet-20 (shared with ``foundation_cifar10.py`` when --runs is the same folder);
2. ``qat``: plain QAT at 8, 4 and 2 bits from the float checkpoint; the "plain QAT" row is the precision
   family ``32=float, 8=qat_w8a8, 4=qat_w4a4, 2=qat_w2a2`` (each precision its own run, as deployed);
   ``qat_switchable`` is plain QAT on one switchable model over 32/8/4/2 (a bit-width per batch, no
   adversary): the same model and schedule as QADT-R without its defense, and the shipped ``qat-cifar10``;
3. ``pbat``: patch adversarial training of the float model, then PTQ (calibration) to 8/4/2 bits;
4. ``dwq``: random-precision adversarial training with switchable BN, from the float checkpoint;
5. ``qadtr``: A-QAPA + DBWT + GIR, from the float checkpoint; ablations ``qadtr_no_gir`` (--gir-lambda 0),
   ``qadtr_fixed4`` (no DBWT: --bits 4, then PTQ at 32, 8 and 2) and ``qadtr_float_patches`` (no A-QAPA:
   --patch-source float);
6. ``eval``: ``qadtr.attacks.protocol.robustness`` on each model: clean accuracy, seen 6x6@32, unseen
   8x8@4 and 10x10@2, adaptive A-QAPA 6x6 over the model's bit-widths, each with its control.

Writes ``<runs>/reproduce.json`` and ``<runs>/reproduce.md`` after every stage, with the acceptance checks
(QADT-R's unseen ASR at least 25 points below PBAT's and DWQ's at every bit-width; QADT-R's 2-bit unseen ASR
at most 30%; QADT-R's clean accuracy within 2 points of plain QAT).

    QADTR_DATA_DIR=../shared/data/cifar10 python benchmarks/reproduce_cifar10.py --runs runs/foundation
"""
from __future__ import annotations

import argparse
import json
import time
from datetime import datetime, timezone
from pathlib import Path

import torch
from foundation_cifar10 import per_bits, run_ptq, run_training
from qadtr.attacks.protocol import robustness
from qadtr.checkpoint import load_checkpoint
from qadtr.data.arrays import load_dataset
from qadtr.deploy.env import cpu_model
from qadtr.family import load_model_or_family
from qadtr.io import sha256_file, versions, write_json, write_text
from qadtr.train import TrainConfig

BITS = [32, 8, 4, 2]
DEFENSES = {  # name -> (defense, TrainConfig overrides)
    "qat_switchable": ("qat", {"bits": BITS}),   # plain QAT on QADT-R's switchable model: DBWT, no adversary
    "pbat": ("pbat", {}),
    "dwq": ("dwq", {}),
    "qadtr": ("qadtr", {}),
    "qadtr_no_gir": ("qadtr", {"gir_lambda": 0.0}),
    "qadtr_fixed4": ("qadtr", {"bits": [4]}),
    "qadtr_float_patches": ("qadtr", {"patch_source": "float"}),
}
# Widths a run never trained, calibrated afterwards (PTQ) as a user would before deploying at them: PBAT
# trains at full precision; the fixed-4 ablation (no DBWT) trains at 4 bits only, so even its float (32)
# BN statistics are stale (the shared weights moved under 4-bit training: 10.9% clean at 32 before this).
PTQ_AFTER = {"pbat": [8, 4, 2], "qadtr_fixed4": [32, 8, 2]}
ROWS = ["qat", "qat_switchable", "pbat", "dwq", "qadtr", "qadtr_no_gir", "qadtr_fixed4", "qadtr_float_patches"]


def evaluate(name: str, spec: str, args, out: Path) -> dict:
    """The robustness protocol on ``spec`` (a checkpoint or a family), reused when made on the same model."""
    path = out / "robustness.json"
    _, model, sha = load_model_or_family(spec)
    if path.exists() and (done := json.loads(path.read_text())).get("model_sha256") == sha:
        return done  # evaluated before, on this very model
    t0 = time.time()
    bits = [b for b in BITS if b in model.bit_choices]
    train = load_dataset("cifar10", "train", args.data_dir, seed=args.seed)
    test = load_dataset("cifar10", "test", args.data_dir, seed=args.seed).subset(args.n, args.seed)
    result = robustness(model, train, test, bits=bits, steps=args.attack_steps, batch_size=64, seed=args.seed,
                        out_dir=out / "patches", reuse=True,
                        metadata={"source_checkpoint": spec, "source_checkpoint_sha256": sha},
                        log=lambda line: print(f"[{name}] {line}", flush=True))
    result.update({"model": spec, "model_sha256": sha, "eval_seconds": time.time() - t0, "versions": versions()})
    write_json(path, result)
    return result


def unseen_asr(row: dict) -> float | None:
    """The worse of the two unseen patches' ASR in one table row (None when the row has neither)."""
    values = [v["asr"] for k, v in row["asr"].items() if k.startswith("unseen") and v["asr"] is not None]
    return max(values) if values else None


def acceptance(evals: dict) -> list[str]:
    lines = []
    if not all(k in evals for k in ("qadtr", "pbat", "dwq", "qat")):
        return ["acceptance: not all of qat, pbat, dwq and qadtr are evaluated yet"]
    by = {name: {r["bits"]: r for r in e["table"]} for name, e in evals.items()}
    for b in BITS:
        q = unseen_asr(by["qadtr"].get(b, {"asr": {}}))
        others = {d: unseen_asr(by[d].get(b, {"asr": {}})) for d in ("pbat", "dwq")}
        if q is None or None in others.values():
            lines.append(f"{b}-bit: unseen ASR missing for a defense")
            continue
        gaps = {d: (v - q) * 100 for d, v in others.items()}
        ok = all(g >= 25 for g in gaps.values())
        lines.append(f"{b}-bit unseen ASR: QADT-R {q:.1%}, PBAT {others['pbat']:.1%}, DWQ {others['dwq']:.1%} "
                     f"-> {'meets' if ok else 'misses'} the 25-point floor")
        qat_row, q_row = by["qat"].get(b), by["qadtr"].get(b)
        if qat_row and q_row:
            drop = (qat_row["clean_acc"] - q_row["clean_acc"]) * 100
            lines.append(f"{b}-bit clean: QADT-R {q_row['clean_acc']:.2%} vs plain QAT {qat_row['clean_acc']:.2%} "
                         f"({drop:+.2f} points; {'within' if drop <= 2 else 'beyond'} 2)")
    q2 = unseen_asr(by["qadtr"].get(2, {"asr": {}}))
    if q2 is not None:
        lines.append(f"goal: QADT-R 2-bit unseen ASR {q2:.1%} ({'<=' if q2 <= 0.30 else '>'} 30%)")
    return lines


def markdown(results: dict) -> str:
    lines = [f"Machine: {results['machine']}; date {results['date']}; seed {results['seed']}; "
             f"attack steps {results['args']['attack_steps']}; n = {results['args']['n']} test images.", "",
             "| defense | bits | clean acc | seen 6x6@32 | unseen 8x8@4 | unseen 10x10@2 | adaptive A-QAPA | "
             "train wall | eval wall |", "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for name in ROWS:
        e = results["evals"].get(name)
        if e is None:
            continue
        train_min = results["train"].get(name, {}).get("train_seconds", 0.0) / 60
        for r in e["table"]:
            cells = []
            for key in ("seen", "unseen_8", "unseen_10", "adaptive"):
                hit = next((v for k, v in r["asr"].items() if k.startswith(key)), None)
                cells.append("-" if hit is None or hit["asr"] is None
                             else f"{hit['asr']:.1%} ({hit['control_asr']:.1%})")
            lines.append(f"| {name} | {r['bits']} | {r['clean_acc']:.2%} | " + " | ".join(cells)
                         + f" | {train_min:.0f} min | {e['eval_seconds'] / 60:.0f} min |")
    lines += ["", "ASR over originally-correct images, random-noise control in brackets.", "",
              *(f"- {line}" for line in results["acceptance"])]
    return "\n".join(lines) + "\n"


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", default="runs/foundation", type=Path)
    p.add_argument("--data-dir", default=None)
    p.add_argument("--float-epochs", type=int, default=30)
    p.add_argument("--float-warmup-epochs", type=float, default=1.0)
    p.add_argument("--qat-epochs", default="8:3,4:6,2:10", help="bits:epochs pairs, or one number.")
    p.add_argument("--defense-epochs", type=int, default=10)
    p.add_argument("--dwq-attack", default="fgsm-rs", choices=["pgd", "fgsm-rs"],
                   help="fgsm-rs fits the CPU budget (labelled 'fast, not the paper's setting'); pgd is DWQ's.")
    p.add_argument("--defenses", default=",".join(DEFENSES), help="Which defense runs to train and evaluate.")
    p.add_argument("--attack-steps", type=int, default=500)
    p.add_argument("--n", type=int, default=2000, help="Test images the protocol scores on.")
    p.add_argument("--precision", default="fp32", choices=["fp32", "bf16"],
                   help="Training precision of runs this invocation trains (bf16: 1.7-2.2x faster on bf16 CPUs).")
    p.add_argument("--weight-thresholds", default="learned", choices=["learned", "mse"],
                   help="Weight thresholds of every quantized run (qat and the defenses): learned (LSQ) or mse "
                        "(refit every step; docs/method.md). One setting for all rows keeps the comparison fair.")
    p.add_argument("--train-only", action="store_true", help="Train every run, evaluate none (evaluate later).")
    p.add_argument("--skip-qat-eval", action="store_true",
                   help="Do not evaluate the plain-QAT family (adding rows, e.g. ablations, to a table that has it).")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    runs = args.runs
    results = {"machine": f"{cpu_model()}, {torch.get_num_threads()} threads",
               "date": datetime.now(timezone.utc).strftime("%Y-%m-%d"), "seed": args.seed, "versions": versions(),
               "args": {k: str(v) for k, v in vars(args).items()}, "train": {}, "evals": {}, "acceptance": []}

    def save():
        results["acceptance"] = acceptance(results["evals"])
        write_json(runs / "reproduce.json", results)
        write_text(runs / "reproduce.md", markdown(results))

    common = {"arch": "resnet20", "data_dir": args.data_dir, "seed": args.seed, "precision": args.precision}
    quantized = {**common, "weight_thresholds": args.weight_thresholds}  # the float model has no thresholds
    float_ckpt = runs / "float" / "checkpoint.pt"
    results["train"]["float"] = run_training(TrainConfig(defense="float", epochs=args.float_epochs,
                                                         warmup_epochs=args.float_warmup_epochs, **common),
                                             runs / "float")
    save()
    plan = per_bits(args.qat_epochs, [8, 4, 2])
    qat_seconds = 0.0
    for b in (8, 4, 2):
        r = run_training(TrainConfig(defense="qat", bits=[b], epochs=plan[b], init=str(float_ckpt), **quantized),
                         runs / f"qat_w{b}a{b}")
        qat_seconds += r["train_seconds"]
    results["train"]["qat"] = {"train_seconds": qat_seconds, "note": "sum of the three QAT runs"}
    family = ",".join([f"32={float_ckpt}"] + [f"{b}={runs / f'qat_w{b}a{b}' / 'checkpoint.pt'}" for b in (8, 4, 2)])
    if not (args.train_only or args.skip_qat_eval):
        results["evals"]["qat"] = evaluate("qat", family, args, runs / "eval" / "qat")
    save()
    for name in [d for d in args.defenses.split(",") if d]:
        defense, overrides = DEFENSES[name]
        extra = {"dwq_attack": args.dwq_attack} if defense == "dwq" else {}
        cfg = TrainConfig(defense=defense, epochs=args.defense_epochs, init=str(float_ckpt), **quantized,
                          **extra, **overrides)
        results["train"][name] = run_training(cfg, runs / name)
        spec = str(runs / name / "checkpoint.pt")
        if name in PTQ_AFTER:
            ptq = runs / f"{name}_ptq.pt"
            made_from = load_checkpoint(ptq).get("calibration", {}).get("source_sha256") if ptq.exists() else None
            if made_from != sha256_file(spec):
                run_ptq(Path(spec), PTQ_AFTER[name], ptq, args.data_dir, args.seed)
            spec = str(ptq)
        if not args.train_only:
            results["evals"][name] = evaluate(name, spec, args, runs / "eval" / name)
        save()
    print(markdown(results))


if __name__ == "__main__":
    main()
