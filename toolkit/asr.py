"""Seeded patch placement and attack-success-rate math, shared by both sides.

This module imports numpy only. The PyTorch path (``qadtr.attacks``) and the
ONNX Runtime path (``qadtr.deploy``) both take their placements and their ASR
numbers from here, so the two agree by construction rather than by test luck.

Conventions
-----------
* Images are float32 NCHW RGB in [0, 1].
* A patch is float32 ``[3, h, w]`` in [0, 1] (square), or ``[4, h, w]`` where
  channel 3 is a {0, 1} mask (a circular patch is a square with a disc mask).
* A location is the ``(top, left)`` pixel of the patch's bounding box; the
  whole box always lies inside the image.
* Placements for an evaluation set depend only on ``(n, image size, patch
  size, seed)``: image ``i`` always gets row ``i``, whatever the batching.
"""
from __future__ import annotations

import numpy as np

from .errors import QadtrError

PLACEMENT_STREAM = 0x9A7C  # separates placement draws from every other use of the same seed


class PatchFormatError(QadtrError):
    """A patch array that is not [3|4, h, w] float in [0, 1], or that does not fit the image.

    A :class:`~qadtr.errors.QadtrError` (hence still a ``ValueError``), so the CLI reports it on one line.
    """


def split_patch(patch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Return ``(rgb [3,h,w] float32, mask [h,w] float32)`` from a 3- or 4-channel patch."""
    patch = np.asarray(patch)
    if patch.ndim != 3 or patch.shape[0] not in (3, 4) or patch.shape[1] < 1 or patch.shape[2] < 1:
        raise PatchFormatError(f"a patch must be [3,h,w] or [4,h,w] (RGB + mask), got shape {list(patch.shape)}")
    if not np.issubdtype(patch.dtype, np.floating):
        raise PatchFormatError(f"a patch must hold floats in [0,1], got dtype {patch.dtype}")
    patch = patch.astype(np.float32, copy=False)
    if not np.all(np.isfinite(patch)) or patch.min() < 0.0 or patch.max() > 1.0:
        raise PatchFormatError("patch values must be finite and lie in [0,1]")
    rgb = patch[:3]
    mask = patch[3] if patch.shape[0] == 4 else np.ones(patch.shape[1:], np.float32)
    return rgb, mask


def disc_mask(h: int, w: int) -> np.ndarray:
    """A {0,1} float32 disc inscribed in an h x w box (for circular patches)."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    cy, cx = (h - 1) / 2.0, (w - 1) / 2.0
    r = min(h, w) / 2.0
    return (((yy - cy) ** 2 + (xx - cx) ** 2) <= r * r).astype(np.float32)


def patch_area_percent(patch_hw: tuple[int, int], image_hw: tuple[int, int], mask: np.ndarray | None = None) -> float:
    """Share of the image's pixels the patch covers, in percent."""
    covered = float(mask.sum()) if mask is not None else float(patch_hw[0] * patch_hw[1])
    return 100.0 * covered / float(image_hw[0] * image_hw[1])


def random_locations(n: int, image_hw: tuple[int, int], patch_hw: tuple[int, int], seed: int) -> np.ndarray:
    """``n`` seeded ``(top, left)`` rows, int64 ``[n, 2]``, uniform over valid positions."""
    (ih, iw), (ph, pw) = image_hw, patch_hw
    if ph > ih or pw > iw or ph < 1 or pw < 1:
        raise PatchFormatError(f"a {ph}x{pw} patch does not fit a {ih}x{iw} image")
    rng = np.random.default_rng([PLACEMENT_STREAM, int(seed)])
    top = rng.integers(0, ih - ph + 1, size=n)
    left = rng.integers(0, iw - pw + 1, size=n)
    return np.stack([top, left], axis=1).astype(np.int64)


def grid_locations(image_hw: tuple[int, int], patch_hw: tuple[int, int], stride: int) -> np.ndarray:
    """Every ``(top, left)`` on a regular grid with the given stride (spatial-sensitivity maps)."""
    (ih, iw), (ph, pw) = image_hw, patch_hw
    tops = np.arange(0, ih - ph + 1, stride)
    lefts = np.arange(0, iw - pw + 1, stride)
    return np.array([(t, left) for t in tops for left in lefts], dtype=np.int64)


def random_noise_patch(patch: np.ndarray, seed: int) -> np.ndarray:
    """The control: uniform noise of the same shape (and the same mask) as ``patch``."""
    rgb, mask = split_patch(patch)
    rng = np.random.default_rng([PLACEMENT_STREAM + 1, int(seed)])
    noise = rng.random(rgb.shape, dtype=np.float32)
    return noise if patch.shape[0] == 3 else np.concatenate([noise, mask[None]], axis=0)


def apply_patch(images: np.ndarray, patch: np.ndarray, locations: np.ndarray) -> np.ndarray:
    """Paste ``patch`` on each image at its ``(top, left)``; returns a new float32 array.

    ``images`` is ``[N,3,H,W]`` in [0,1], ``locations`` is ``[N,2]``. Pixels
    outside the patch box (and outside its mask) are left untouched.
    """
    images = np.asarray(images, dtype=np.float32)
    rgb, mask = split_patch(patch)
    n, _, ih, iw = images.shape
    ph, pw = mask.shape
    locations = np.asarray(locations, dtype=np.int64)
    if locations.shape != (n, 2):
        raise PatchFormatError(f"need one (top, left) per image: {n} images, locations shape {locations.shape}")
    if ph > ih or pw > iw:
        raise PatchFormatError(f"a {ph}x{pw} patch does not fit a {ih}x{iw} image")
    if n and (locations.min() < 0 or (locations[:, 0] + ph).max() > ih or (locations[:, 1] + pw).max() > iw):
        raise PatchFormatError(f"a {ph}x{pw} patch placed at these locations leaves the {ih}x{iw} image")
    out = images.copy()
    # One fancy-indexed write for the whole batch (no per-image loop), with the same arithmetic as
    # qadtr.attacks.paste_patch so both stay pixel-identical.
    rows = locations[:, 0, None, None] + np.arange(ph)[None, :, None]
    cols = locations[:, 1, None, None] + np.arange(pw)[None, None, :]
    batch = np.arange(n)[:, None, None]
    nhwc = out.transpose(0, 2, 3, 1)                       # a view: writes land in ``out``
    under = nhwc[batch, rows, cols]                        # [N,h,w,3]
    m = mask[None, :, :, None]
    nhwc[batch, rows, cols] = under * (1.0 - m) + rgb.transpose(1, 2, 0)[None] * m
    return out


def attack_metrics(labels, clean_pred, patched_pred, target: int | None = None) -> dict:
    """All the success rates, each with its denominator stated in its name.

    * ``asr`` (primary, untargeted): #(correct when clean and wrong when
      patched) / #(correct when clean).
    * ``asr_all``: #(wrong when patched) / #(all images), i.e. 1 - robust accuracy.
    * ``flip_rate``: #(patched prediction differs from clean prediction) / #(all images).
    * ``target_hit_rate`` (targeted only): #(patched prediction == target) /
      #(images whose label is not the target).
    """
    labels = np.asarray(labels).astype(np.int64)
    clean_pred = np.asarray(clean_pred).astype(np.int64)
    patched_pred = np.asarray(patched_pred).astype(np.int64)
    n = int(labels.size)
    if not (clean_pred.shape == patched_pred.shape == labels.shape):
        raise ValueError("labels, clean_pred and patched_pred must have the same shape")
    clean_ok = clean_pred == labels
    patched_ok = patched_pred == labels
    n_clean_ok = int(clean_ok.sum())
    broken = int((clean_ok & ~patched_ok).sum())
    out = {
        "n": n,
        "clean_correct": n_clean_ok,
        "clean_acc": n_clean_ok / n if n else float("nan"),
        "robust_acc": int(patched_ok.sum()) / n if n else float("nan"),
        "asr": broken / n_clean_ok if n_clean_ok else float("nan"),
        "asr_broken": broken,
        "asr_all": int((~patched_ok).sum()) / n if n else float("nan"),
        "flip_rate": int((patched_pred != clean_pred).sum()) / n if n else float("nan"),
    }
    if target is not None:
        eligible = labels != target
        hits = int((eligible & (patched_pred == target)).sum())
        out["target"] = int(target)
        out["target_hit_rate"] = hits / int(eligible.sum()) if eligible.any() else float("nan")
    return out
