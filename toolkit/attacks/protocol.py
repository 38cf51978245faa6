"""The paper's robustness protocol on one multi-bit model: craft a plan of patches, score them at every bit-width.

:func:`robustness` runs the QADT-R evaluation (issue 4): clean accuracy per bit-width; a *seen* 6x6 patch
crafted on the float (32) path; *unseen* 8x8 and 10x10 patches crafted at 4 and 2 bits; an *adaptive* A-QAPA
patch crafted on the model itself over all its bit-widths (a defense that only masks gradients fails
there). Every patch is scored at every target bit-width with its random-noise control through
:func:`qadtr.transfer.transfer_matrix`. :func:`craft_plan` and :func:`score_plan` are the two halves, shared
with ``benchmarks/patch_attacks_cifar10.py``, which runs its own plan.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import QadtrError
from ..patchfile import load_patch, save_patch
from ..transfer import to_float_nchw
from .analysis import score_patches
from .patch import PatchAttack, QuantAwarePatchAttack

FLOAT_BITS = 32


@dataclass(frozen=True)
class PatchSpec:
    """One patch of a plan: ``role`` (seen, unseen, adaptive, or any label), side in pixels, crafting bit-widths,
    and whether it is crafted with A-QAPA across them (else :class:`PatchAttack` at the single one)."""

    name: str
    role: str
    size: int
    source_bits: tuple[int, ...]
    quant_aware: bool = False

    @property
    def label(self) -> str:
        source = "A-QAPA " + "/".join(map(str, self.source_bits)) if self.quant_aware else f"@{self.source_bits[0]}"
        return f"{self.role} {self.size}x{self.size} {source}"


def paper_plan(model_bits: Sequence[int], seen_size: int = 6, seen_source: int = FLOAT_BITS,
               unseen: Sequence[tuple[int, int]] = ((8, 4), (10, 2)), adaptive_size: int = 6,
               adaptive_bits: Sequence[int] | None = None) -> tuple[list[PatchSpec], list[str]]:
    """The paper's plan for a model whose bit-width set is ``model_bits``.

    ``unseen`` holds ``(size, source bits)`` pairs. ``adaptive_bits`` defaults to every bit-width of the model.
    Returns ``(specs, skipped)``: a patch whose source bit-width is not in ``model_bits`` cannot be crafted on
    this model, so it is left out with a one-line note in ``skipped`` rather than failing the whole run.
    """
    model_bits = [int(b) for b in model_bits]
    adaptive = tuple(int(b) for b in (adaptive_bits or sorted(model_bits, reverse=True)))
    wanted = [PatchSpec(f"seen_{seen_size}x{seen_size}_b{seen_source}", "seen", int(seen_size), (int(seen_source),))]
    wanted += [PatchSpec(f"unseen_{s}x{s}_b{b}", "unseen", int(s), (int(b),)) for s, b in unseen]
    wanted.append(PatchSpec(f"adaptive_{adaptive_size}x{adaptive_size}_aqapa", "adaptive", int(adaptive_size),
                            adaptive, quant_aware=True))
    specs, skipped = [], []
    for spec in wanted:
        missing = [b for b in spec.source_bits if b not in model_bits]
        if missing:
            skipped.append(f"{spec.label} skipped: source bit-width {missing[0]} is not in this checkpoint's set "
                           f"{sorted(model_bits)}")
        else:
            specs.append(spec)
    return specs, skipped


def check_plan(specs: Sequence[PatchSpec], image_hw) -> None:
    """One clear error for a patch size that cannot be crafted on these images, before any work is done."""
    ih, iw = (int(v) for v in image_hw)
    names = [s.name for s in specs]
    if len(set(names)) != len(names):
        raise QadtrError(f"two patches of the plan share a name: {names}")
    for spec in specs:
        if spec.size < 1:
            raise QadtrError(f"patch size must be at least 1 pixel, got {spec.size} ({spec.name})")
        if spec.size > min(ih, iw):
            raise QadtrError(f"a {spec.size}x{spec.size} patch ({spec.name}) is larger than the {ih}x{iw} images")


def _reusable(meta: dict | None, spec: PatchSpec, steps: int, seed: int, metadata: dict) -> bool:
    """A patch on disk is reused only if it was crafted the same way on the same checkpoint."""
    if not meta:
        return False
    wanted = {"size": spec.size, "source_bits": list(spec.source_bits), "steps": steps, "seed": seed,
              "quant_aware": spec.quant_aware,
              "source_checkpoint_sha256": metadata.get("source_checkpoint_sha256")}
    return all(meta.get(k) == v for k, v in wanted.items())


def craft_plan(model, train_data, specs: Sequence[PatchSpec], steps: int = 500, batch_size: int = 128,
               lr: float = 0.05, seed: int = 0, out_dir=None, metadata: dict | None = None, reuse: bool = False,
               progress: bool = False, log=None) -> tuple[dict[str, np.ndarray], dict[str, dict]]:
    """Craft every patch of ``specs`` on ``train_data``; returns ``(patches, crafting records)``.

    With ``out_dir``, each patch is written with :func:`qadtr.patchfile.save_patch` (``metadata`` is added to
    its JSON, e.g. the source checkpoint and its sha256). With ``reuse``, a patch already in ``out_dir`` that
    was crafted with the same size, bit-widths, steps, seed and checkpoint is loaded instead of crafted again.
    """
    metadata = dict(metadata or {})
    patches, crafting = {}, {}
    for spec in specs:
        path = Path(out_dir) / f"{spec.name}.npy" if out_dir is not None else None
        if reuse and path is not None and path.is_file():
            patch, meta = load_patch(path)
            if _reusable(meta, spec, steps, seed, metadata):
                patches[spec.name], crafting[spec.name] = patch, {**meta.get("crafting", {}), "reused": True}
                continue
        common = {"size": spec.size, "steps": steps, "batch_size": batch_size, "lr": lr, "seed": seed,
                  "progress": progress}
        attack = (QuantAwarePatchAttack(bits=spec.source_bits, **common) if spec.quant_aware
                  else PatchAttack(bits=spec.source_bits[0], **common))
        patches[spec.name] = attack.generate(model, train_data)
        record = {"attack": type(attack).__name__, "role": spec.role, "source_bits": list(spec.source_bits),
                  "craft_s": round(attack.elapsed_s, 3), "steps_per_s": round(steps / max(attack.elapsed_s, 1e-9), 3),
                  "final_loss": attack.losses[-1][1] if attack.losses else None}
        if spec.quant_aware:
            record["bit_counts"] = {str(b): c for b, c in attack.bit_counts.items()}
        crafting[spec.name] = record
        if path is not None:
            record["files"] = save_patch(out_dir, patches[spec.name], {
                **metadata, "name": spec.name, "role": spec.role, "size": spec.size, "shape": "square",
                "area_percent": attack.area_percent(), "attack": record["attack"], "quant_aware": spec.quant_aware,
                "source_bits": list(spec.source_bits), "steps": steps, "batch_size": batch_size, "lr": lr,
                "seed": seed, "target": None, "crafting": record}, spec.name)
        if log:
            log(f"{spec.name}: {record['steps_per_s']:.2f} steps/s")
    return patches, crafting


def _finite(values: dict) -> dict:
    return {k: v for k, v in values.items() if v is not None and not math.isnan(v)}


def score_plan(model, patches: dict[str, np.ndarray], images: np.ndarray, labels: np.ndarray,
               target_bits: Sequence[int], seed: int = 0, batch_size: int = 256, progress=None) -> dict:
    """The transfer matrix of ``patches`` at ``target_bits`` plus, per patch, its lowest and highest ASR.

    ``worst_case_asr`` is the lowest ASR over the target bit-widths: what the patch achieves whichever of them
    is deployed (the attacker's guarantee; the A-QAPA check of issue 3). ``max_asr`` is the highest: the
    defender's worst bit-width. A bit-width with no originally-correct image has no ASR and is left out.
    """
    matrix = score_patches(model, patches, images, labels, target_bits, seed=seed, batch_size=batch_size,
                           progress=progress)
    by = {(c["patch"], c["target"]): c for c in matrix["cells"]}
    per_patch = {}
    for name in patches:
        asr = _finite({str(b): by[name, str(b)]["patch_metrics"]["asr"] for b in target_bits})
        low, high = (min(asr, key=asr.get), max(asr, key=asr.get)) if asr else (None, None)
        per_patch[name] = {"worst_case_asr": asr.get(low), "worst_case_bits": low,
                           "max_asr": asr.get(high), "max_asr_bits": high}
    return {"transfer": matrix, "per_patch": per_patch}


def robustness(model, train_data, test_data, bits: Sequence[int] = (32, 8, 4, 2), specs=None, steps: int = 500,
               batch_size: int = 128, lr: float = 0.05, seed: int = 0, out_dir=None, metadata: dict | None = None,
               reuse: bool = False, progress: bool = False, score_progress=None, log=None, **plan) -> dict:
    """Run the robustness protocol on ``model``; returns a JSON-ready dict.

    ``train_data`` (crafting) and ``test_data`` (scoring) are :class:`qadtr.data.arrays.ArrayDataset`s;
    ``bits`` are the target bit-widths. ``specs`` defaults to :func:`paper_plan` over the model's bit-widths,
    with ``plan`` passed on to it (``seen_size``, ``seen_source``, ``unseen``, ``adaptive_size``,
    ``adaptive_bits``). With ``out_dir`` the patch files are written there (see :func:`craft_plan`).

    Result keys: ``config``, ``seed``, ``bits``, ``train_data_sha256``, ``test_data_sha256``, ``n``,
    ``clean_acc`` (per bit-width), ``patches`` (spec, crafting record, worst-case and max ASR), ``skipped``
    (notes), ``transfer`` (the full matrix) and ``table`` (per bit-width: clean accuracy and, per patch, ASR
    with its control).
    """
    bits = [int(b) for b in bits]
    missing = [b for b in bits if b not in tuple(model.bit_choices)]
    if missing:
        raise QadtrError(f"bit-width {missing[0]} is not in this model's set {sorted(model.bit_choices)}")
    skipped = []
    if specs is None:
        specs, skipped = paper_plan(model.bit_choices, **plan)
    elif plan:
        raise QadtrError("pass either specs or paper_plan options, not both")
    images, labels = to_float_nchw(test_data.x), np.asarray(test_data.y)
    check_plan(specs, images.shape[2:])
    if not specs:
        raise QadtrError("no patch of the plan can be crafted on this checkpoint: " + "; ".join(skipped))
    patches, crafting = craft_plan(model, train_data, specs, steps=steps, batch_size=batch_size, lr=lr, seed=seed,
                                   out_dir=out_dir, metadata=metadata, reuse=reuse, progress=progress, log=log)
    scored = score_plan(model, patches, images, labels, bits, seed=seed, progress=score_progress)
    matrix = scored["transfer"]
    by = {(c["patch"], c["target"]): c for c in matrix["cells"]}
    table = [{"bits": b, "clean_acc": matrix["clean_acc"][str(b)],
              "asr": {s.name: {"asr": by[s.name, str(b)]["patch_metrics"]["asr"],
                               "control_asr": by[s.name, str(b)]["control_metrics"]["asr"]} for s in specs}}
             for b in bits]
    return {
        "config": {"bits": bits, "steps": steps, "batch_size": batch_size, "lr": lr,
                   "plan": [{"name": s.name, "role": s.role, "size": s.size, "source_bits": list(s.source_bits),
                             "quant_aware": s.quant_aware, "label": s.label} for s in specs]},
        "seed": seed, "bits": bits, "n": matrix["n"], "train_images": len(train_data),
        "train_data_sha256": train_data.sha256(), "test_data_sha256": test_data.sha256(),
        "clean_acc": matrix["clean_acc"],
        "patches": {s.name: {"label": s.label, "role": s.role, "size": s.size, "source_bits": list(s.source_bits),
                             "crafting": crafting[s.name], **scored["per_patch"][s.name]} for s in specs},
        "skipped": skipped, "transfer": matrix, "table": table,
    }


def _pct(value) -> str:
    return "-" if value is None or math.isnan(value) else f"{value:.1%}"


def robustness_rows(result: dict) -> tuple[list[str], list[list[str]]]:
    """Headers and rows of the protocol table: one row per bit-width, then each patch's min and max over them
    (the min is its ``worst_case_asr``: what it achieves whichever bit-width is deployed)."""
    names = [p["name"] for p in result["config"]["plan"]]
    headers = ["bits", "clean acc", *(f"{result['patches'][n]['label']} ASR (control)" for n in names)]
    rows = [[str(r["bits"]), _pct(r["clean_acc"]),
             *(f"{_pct(r['asr'][n]['asr'])} ({_pct(r['asr'][n]['control_asr'])})" for n in names)]
            for r in result["table"]]
    rows.append(["min over bits", "-", *(_pct(result["patches"][n]["worst_case_asr"]) for n in names)])
    rows.append(["max over bits", "-", *(_pct(result["patches"][n]["max_asr"]) for n in names)])
    return headers, rows


def robustness_markdown(result: dict, title: str | None = None) -> str:
    """The protocol table in Markdown, with the skipped patches noted below it."""
    headers, rows = robustness_rows(result)
    lines = [f"# {title}", ""] if title else []
    lines += [f"ASR over originally-correct images, patch (random-noise control); n={result['n']}, "
              f"{result['config']['steps']} crafting steps, seed {result['seed']}.", "",
              "| " + " | ".join(headers) + " |", "|" + " --- |" * len(headers),
              *("| " + " | ".join(r) + " |" for r in rows)]
    if result["skipped"]:
        lines += ["", *(f"- {note}" for note in result["skipped"])]
    return "\n".join(lines) + "\n"
