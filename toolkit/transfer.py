"""The patch transfer matrix, computed from any predictor: torch-free.

A *predictor* is a callable ``predict(images) -> logits`` on float32 NCHW
numpy arrays in [0, 1]. The PyTorch path wraps a model at one bit-width, the
ONNX Runtime path wraps an inference session; both run this same loop with the
same seeded placements (:mod:`qadtr.asr`), so their matrices are comparable
cell by cell.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable

import numpy as np

from .asr import apply_patch, attack_metrics, random_locations, random_noise_patch, split_patch

Predictor = Callable[[np.ndarray], np.ndarray]


def predict_labels(predict: Predictor, images: np.ndarray, batch_size: int = 256,
                   progress: Callable[[int], None] | None = None) -> np.ndarray:
    """Argmax labels of ``predict`` over ``images`` in batches."""
    out = []
    for start in range(0, len(images), batch_size):
        logits = np.asarray(predict(images[start:start + batch_size]))
        out.append(logits.argmax(axis=1))
        if progress:
            progress(min(batch_size, len(images) - start))
    return np.concatenate(out) if out else np.zeros(0, np.int64)


def to_float_nchw(x_uint8_nhwc: np.ndarray) -> np.ndarray:
    """uint8 NHWC (the dataset layout) to float32 NCHW in [0, 1] (the model contract)."""
    return np.ascontiguousarray(x_uint8_nhwc.transpose(0, 3, 1, 2), dtype=np.float32) / np.float32(255.0)


def transfer_matrix(predictors: dict[str, Predictor], patches: dict[str, np.ndarray], images: np.ndarray,
                    labels: np.ndarray, seed: int = 0, batch_size: int = 256, targets: dict[str, int] | None = None,
                    progress: Callable[[int], None] | None = None) -> dict:
    """ASR of every patch on every predictor, each with its random-noise control.

    ``images``: float32 [N,3,H,W] in [0,1]. Placements are
    ``random_locations(N, (H, W), patch size, seed)``, the same for every target
    and for the control. Returns ``{"clean": {target: acc}, "cells": [...]}``
    where each cell holds ``patch``, ``target``, ``patch_metrics`` and
    ``control_metrics`` from :func:`qadtr.asr.attack_metrics`.
    """
    targets = targets or {}
    images = np.asarray(images, dtype=np.float32)
    labels = np.asarray(labels).astype(np.int64)
    hw = tuple(images.shape[2:])
    placed = {}
    for name, patch in patches.items():
        _, mask = split_patch(patch)
        loc = random_locations(len(images), hw, mask.shape, seed)
        placed[name] = (apply_patch(images, patch, loc), apply_patch(images, random_noise_patch(patch, seed), loc))
    clean, cells = {}, []
    for target, predict in predictors.items():
        clean_pred = predict_labels(predict, images, batch_size, progress)
        clean[target] = float((clean_pred == labels).mean()) if len(labels) else float("nan")
        for name, (patched, control) in placed.items():
            patched_pred = predict_labels(predict, patched, batch_size, progress)
            control_pred = predict_labels(predict, control, batch_size, progress)
            cells.append({"patch": name, "target": target,
                          "patch_metrics": attack_metrics(labels, clean_pred, patched_pred, targets.get(name)),
                          "control_metrics": attack_metrics(labels, clean_pred, control_pred, targets.get(name))})
    return {"n": int(len(images)), "seed": int(seed), "clean_acc": clean, "cells": cells}


def matrix_markdown(result: dict, metric: str = "asr", patches: Iterable[str] | None = None) -> str:
    """Rows: patches; columns: targets; each cell ``patch ASR (control ASR)``."""
    targets = list(result["clean_acc"])
    patches = list(patches) if patches else list(dict.fromkeys(c["patch"] for c in result["cells"]))
    by = {(c["patch"], c["target"]): c for c in result["cells"]}
    lines = [f"{metric} over originally-correct images, patch (random-noise control); n={result['n']}", "",
             "| patch | " + " | ".join(targets) + " |", "| --- |" + " --- |" * len(targets)]
    lines.append("| clean acc | " + " | ".join(f"{result['clean_acc'][t]:.1%}" for t in targets) + " |")
    for p in patches:
        cells = [by.get((p, t)) for t in targets]
        lines.append(f"| {p} | " + " | ".join(
            f"{c['patch_metrics'][metric]:.1%} ({c['control_metrics'][metric]:.1%})" if c else "-" for c in cells)
            + " |")
    return "\n".join(lines) + "\n"
