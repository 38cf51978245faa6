"""The paper's analyses on the torch side: patch scoring, gradient alignment, spatial sensitivity, visibility.

Scoring always goes through :func:`qadtr.transfer.transfer_matrix` with :class:`TorchPredictor`, the same
loop the ONNX Runtime harness runs with its own predictors, so the two sides' numbers are comparable.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..asr import apply_patch, attack_metrics, grid_locations, random_noise_patch, split_patch
from ..errors import QadtrError
from ..switchable import bits as bits_ctx
from ..transfer import predict_labels, transfer_matrix
from .patch import PatchAttack


def _device(model) -> torch.device:
    return next(iter(model.parameters()), torch.empty(0)).device


class TorchPredictor:
    """``predict(images) -> logits`` for a model at one bit-width: eval mode, no grad, numpy in and out."""

    def __init__(self, model, bits: int):
        if int(bits) not in tuple(model.bit_choices):
            raise QadtrError(f"bit-width {bits} is not in this model's set {sorted(model.bit_choices)}")
        self.model, self.bits = model, int(bits)

    @torch.no_grad()
    def __call__(self, images: np.ndarray) -> np.ndarray:
        was_training = self.model.training
        self.model.eval()
        try:
            with bits_ctx(self.model, self.bits):
                x = torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32)).to(_device(self.model))
                return self.model(x).float().cpu().numpy()
        finally:
            self.model.train(was_training)


def torch_predictors(model, bit_list: Sequence[int]) -> dict[str, TorchPredictor]:
    """One predictor per bit-width, keyed ``"32"``, ``"8"``, ... (the transfer matrix's column names)."""
    return {str(int(b)): TorchPredictor(model, b) for b in bit_list}


def score_patches(model, patches: dict[str, np.ndarray], images: np.ndarray, labels: np.ndarray,
                  bit_list: Sequence[int], seed: int = 0, targets: dict[str, int] | None = None,
                  batch_size: int = 256, progress: Callable[[int], None] | None = None) -> dict:
    """ASR of each patch at each bit-width, with its random-noise control (see :func:`transfer_matrix`)."""
    check_patches_fit(patches, images.shape[2:])
    return transfer_matrix(torch_predictors(model, bit_list), patches, images, labels, seed=seed,
                           batch_size=batch_size, targets=targets, progress=progress)


def check_patches_fit(patches: dict[str, np.ndarray], image_hw) -> None:
    ih, iw = (int(v) for v in image_hw)
    for name, patch in patches.items():
        ph, pw = split_patch(patch)[1].shape
        if ph > ih or pw > iw:
            raise QadtrError(f"patch {name} is {ph}x{pw}, larger than the {ih}x{iw} images")


def gradient_alignment(model, images: np.ndarray, labels: np.ndarray, bit_list: Sequence[int] = (32, 8, 4, 2),
                       batch_size: int = 128, progress: Callable[[int], None] | None = None) -> dict:
    """Mean over images of the cosine similarity between input gradients of the cross-entropy at two bit-widths.

    Returns ``{"bits": [...], "cosine": K x K nested list, "n": N, "pairs_n": K x K}``. Eval mode, so each
    image's gradient depends on that image alone (BatchNorm uses running statistics). The loss is taken in
    float64 so confident images keep a non-zero gradient; an image whose gradient is still exactly zero at a
    bit-width has no direction and is left out of that bit-width's pairs (``pairs_n`` counts the rest).
    """
    bit_list = [int(b) for b in bit_list]
    for b in bit_list:
        if b not in tuple(model.bit_choices):
            raise QadtrError(f"bit-width {b} is not in this model's set {sorted(model.bit_choices)}")
    k = len(bit_list)
    total, counted = np.zeros((k, k)), np.zeros((k, k))
    was_training = model.training
    grad_flags = [(p, p.requires_grad) for p in model.parameters()]
    model.eval()
    for p, _ in grad_flags:
        p.requires_grad_(False)
    try:
        for start in range(0, len(images), batch_size):
            x = torch.from_numpy(np.ascontiguousarray(images[start:start + batch_size], dtype=np.float32))
            y = torch.from_numpy(np.asarray(labels[start:start + batch_size])).long()
            x, y = x.to(_device(model)), y.to(_device(model))
            grads = []
            for b in bit_list:
                xg = x.clone().requires_grad_(True)
                with bits_ctx(model, b):
                    loss = F.cross_entropy(model(xg).double(), y, reduction="sum")
                (g,) = torch.autograd.grad(loss, xg)
                g = g.flatten(1).double()
                norm = g.norm(dim=1, keepdim=True)
                # Not F.normalize: its eps would shrink the tiny (but valid) gradients of confident images.
                grads.append(torch.where(norm > 0, g / norm.clamp_min(1e-300), torch.zeros_like(g)))
            g = torch.stack(grads, 0)                                  # [K, B, D], unit (or zero) rows
            total += torch.einsum("ibd,jbd->ij", g, g).cpu().numpy()
            valid = (g.abs().sum(2) > 0).double()                      # [K, B]
            counted += (valid @ valid.T).cpu().numpy()
            if progress:
                progress(len(x))
    finally:
        for p, flag in grad_flags:
            p.requires_grad_(flag)
        model.train(was_training)
    cosine = np.where(counted > 0, total / np.maximum(counted, 1), np.nan)
    return {"bits": bit_list, "n": int(len(images)), "cosine": cosine.round(6).tolist(),
            "pairs_n": counted.astype(int).tolist()}


def spatial_sensitivity(model, patch: np.ndarray, images: np.ndarray, labels: np.ndarray, bits: int = 32,
                        stride: int = 2, seed: int = 0, batch_size: int = 256,
                        progress: Callable[[int], None] | None = None) -> dict:
    """ASR (and the random-noise control's) with the patch at every grid location, the same for all images.

    Returns ``{"tops", "lefts", "asr": rows x cols, "control_asr": rows x cols, "clean_acc", ...}``.
    """
    if stride < 1:
        raise QadtrError(f"stride must be >= 1, got {stride}")
    check_patches_fit({"patch": patch}, images.shape[2:])
    predict = TorchPredictor(model, bits)
    control = random_noise_patch(patch, seed)
    hw = tuple(images.shape[2:])
    locs = grid_locations(hw, split_patch(patch)[1].shape, stride)
    tops, lefts = sorted(set(locs[:, 0].tolist())), sorted(set(locs[:, 1].tolist()))
    clean_pred = predict_labels(predict, images, batch_size, progress)
    asr = np.full((len(tops), len(lefts)), np.nan)
    control_asr = np.full_like(asr, np.nan)
    for top, left in locs:
        where = np.tile([[top, left]], (len(images), 1))
        i, j = tops.index(int(top)), lefts.index(int(left))
        for grid, p in ((asr, patch), (control_asr, control)):
            pred = predict_labels(predict, apply_patch(images, p, where), batch_size, progress)
            grid[i, j] = attack_metrics(labels, clean_pred, pred)["asr"]
    return {"bits": int(bits), "stride": int(stride), "n": int(len(images)), "tops": tops, "lefts": lefts,
            "clean_acc": float((clean_pred == labels).mean()), "asr": asr.round(6).tolist(),
            "control_asr": control_asr.round(6).tolist(),
            "mean_asr": float(np.nanmean(asr)), "max_asr": float(np.nanmax(asr)), "min_asr": float(np.nanmin(asr))}


def size_sweep(model, train_data, images: np.ndarray, labels: np.ndarray, sizes: Sequence[int] = (2, 4, 6, 8, 10),
               bits: int = 32, eval_bits: Sequence[int] | None = None, seed: int = 0,
               attack_kwargs: dict | None = None, progress: Callable[[int], None] | None = None) -> dict:
    """Patch visibility: craft a :class:`PatchAttack` per size at ``bits`` on ``train_data``, score it on
    ``images`` at each of ``eval_bits`` (default: ``bits``) with its random-noise control.

    Returns ``{"rows": [{size, area_percent, asr: {bits: v}, control_asr: {bits: v}, robust_acc: {...}}], ...}``.
    """
    eval_bits = [int(b) for b in (eval_bits or [bits])]
    hw = tuple(images.shape[2:])
    for size in sizes:
        if int(size) < 1 or int(size) > min(hw):
            raise QadtrError(f"patch size {size} does not fit the {hw[0]}x{hw[1]} images")
    rows = []
    for size in sizes:
        attack = PatchAttack(bits=bits, size=int(size), seed=seed, **(attack_kwargs or {}))
        patch = attack.generate(model, train_data)
        name = f"{size}px"
        result = score_patches(model, {name: patch}, images, labels, eval_bits, seed=seed, progress=progress,
                               targets={name: attack.target} if attack.target is not None else None)
        by_bits = {c["target"]: c for c in result["cells"]}
        rows.append({"size": int(size), "area_percent": attack.area_percent(hw),
                     "asr": {b: c["patch_metrics"]["asr"] for b, c in by_bits.items()},
                     "control_asr": {b: c["control_metrics"]["asr"] for b, c in by_bits.items()},
                     "robust_acc": {b: c["patch_metrics"]["robust_acc"] for b, c in by_bits.items()},
                     "clean_acc": result["clean_acc"], "craft_s": attack.elapsed_s})
    return {"bits": int(bits), "eval_bits": eval_bits, "n": int(len(images)), "seed": int(seed),
            "steps": attack.steps if sizes else 0, "rows": rows}


def heatmap_png(path, values, row_labels, col_labels, title: str, xlabel: str = "", ylabel: str = "",
                fmt: str = "{:.0%}", vmin: float = 0.0, vmax: float = 1.0, annotations=None) -> None:
    """A labelled heatmap (matplotlib, Agg); cell text (``annotations`` or ``fmt`` of the value) when the
    grid is small enough to read."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..io import atomic_path

    values = np.asarray(values, dtype=float)
    fig, ax = plt.subplots(figsize=(2.0 + 0.6 * max(values.shape[1], 5), 1.4 + 0.45 * max(values.shape[0], 3)))
    im = ax.imshow(values, cmap="viridis", vmin=vmin, vmax=vmax, aspect="auto")
    ax.set_xticks(range(values.shape[1]), [str(c) for c in col_labels])
    ax.set_yticks(range(values.shape[0]), [str(r) for r in row_labels])
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=9)
    if values.size <= 100:
        for (i, j), v in np.ndenumerate(values):
            text = annotations[i][j] if annotations is not None else ("-" if np.isnan(v) else fmt.format(v))
            ax.text(j, i, text, ha="center", va="center", fontsize=7,
                    color="white" if v < (vmin + vmax) / 2 else "black")
    fig.colorbar(im, ax=ax)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)


def line_png(path, x, series: dict[str, Sequence[float]], title: str, xlabel: str, ylabel: str) -> None:
    """A small line plot (patch visibility: ASR against patch size, patch and control)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..io import atomic_path

    fig, ax = plt.subplots(figsize=(5, 3.5))
    for name, ys in series.items():
        ax.plot(list(x), list(ys), marker="o", label=name, linestyle="--" if name.startswith("control") else "-")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_ylim(0, 1)
    ax.set_title(title, fontsize=9)
    ax.legend()
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)
