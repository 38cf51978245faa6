"""Patch files: ``.npy`` (exact values), ``.png`` (to look at) and ``.json`` (metadata). Torch-free.

The ``.npy`` is the patch in the :mod:`qadtr.asr` convention (float32 ``[3,h,w]``, or ``[4,h,w]`` with a
{0,1} mask in channel 3); it is what every consumer loads, the ONNX Runtime side included. The JSON
beside it (same stem) records how the patch was made.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from .asr import PatchFormatError, split_patch
from .errors import QadtrError
from .io import atomic_path, write_json

FORMAT = "qadtr-patch"
VERSION = 1


def validate_patch(patch, source: str = "patch") -> np.ndarray:
    """Return ``patch`` as float32 if it is a valid patch, else raise :class:`QadtrError` naming ``source``."""
    try:
        rgb, mask = split_patch(patch)
    except PatchFormatError as e:
        raise QadtrError(f"{source}: {e}") from None
    if np.asarray(patch).shape[0] == 4 and not np.isin(mask, (0.0, 1.0)).all():
        raise QadtrError(f"{source}: the mask channel must hold only 0 and 1")
    return np.asarray(patch, dtype=np.float32)


def patch_png(path, patch: np.ndarray, min_side: int = 192) -> bool:
    """Write the patch upscaled (nearest neighbour) to at least ``min_side`` pixels; the mask becomes alpha.

    Returns False (and writes nothing) where Pillow is not installed, e.g. a torch-free device install.
    """
    try:
        from PIL import Image
    except ImportError:
        return False

    rgb, mask = split_patch(patch)
    pixels = np.concatenate([rgb, mask[None]], 0) if patch.shape[0] == 4 else rgb
    img = Image.fromarray((pixels.transpose(1, 2, 0) * 255).round().astype(np.uint8), "RGBA" if len(pixels) == 4
                          else "RGB")
    factor = max(1, -(-min_side // max(img.size)))
    img = img.resize((img.size[0] * factor, img.size[1] * factor), Image.NEAREST)
    with atomic_path(path) as tmp:
        img.save(tmp, format="PNG")
    return True


def save_patch(out_dir, patch: np.ndarray, metadata: dict, name: str = "patch") -> dict[str, str]:
    """Write ``OUT/name.npy``, ``OUT/name.png`` (where Pillow is installed) and ``OUT/name.json``; returns
    their paths."""
    patch = validate_patch(patch)
    out_dir = Path(out_dir)
    paths = {kind: str(out_dir / f"{name}.{kind}") for kind in ("npy", "png", "json")}
    with atomic_path(paths["npy"]) as tmp:
        with open(tmp, "wb") as f:
            np.save(f, patch, allow_pickle=False)
    if not patch_png(paths["png"], patch):
        del paths["png"]
    write_json(paths["json"], {"format": FORMAT, "version": VERSION, "shape_chw": list(patch.shape), **metadata,
                               "files": paths})
    return paths


def load_patch(path) -> tuple[np.ndarray, dict | None]:
    """Load a ``.npy`` patch and its JSON metadata (``None`` when there is no JSON beside it).

    Anything else (a PNG, a corrupt or pickled file, the wrong shape, values outside [0,1], a mask
    that is not {0,1}) raises :class:`QadtrError` with one line.
    """
    path = Path(path)
    if not path.is_file():
        raise QadtrError(f"patch file {path} not found")
    if path.suffix.lower() != ".npy":
        raise QadtrError(f"{path} is not a patch file: load the .npy (exact values), not a {path.suffix or 'file'}")
    try:
        patch = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        raise QadtrError(f"patch file {path} is corrupt or not a plain numpy array ({type(e).__name__})") from None
    if not isinstance(patch, np.ndarray):
        raise QadtrError(f"patch file {path} holds several arrays, not one patch")
    patch = validate_patch(patch, str(path))
    meta_path = path.with_suffix(".json")
    meta = None
    if meta_path.is_file():
        try:
            meta = json.loads(meta_path.read_text())
        except (ValueError, OSError) as e:
            raise QadtrError(f"patch metadata {meta_path} is not valid JSON ({type(e).__name__})") from None
        if not isinstance(meta, dict) or meta.get("format") != FORMAT:
            raise QadtrError(f"{meta_path} is not qadtr patch metadata")
        if list(meta.get("shape_chw", patch.shape)) != list(patch.shape):
            raise QadtrError(f"{path} has shape {list(patch.shape)} but its metadata says {meta['shape_chw']}")
    return patch, meta
