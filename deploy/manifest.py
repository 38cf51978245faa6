"""Read what the exporter's ``manifest.json`` says about a model, when there is one. Optional by design.

The harness takes bare ONNX files too, so every fact read here has a fallback:
bits from the file name (``_w4a4``), the packed weight size computed from the graph,
the fp32 baseline passed with ``--fp32``. Entries are matched to a file by sha256
first, then by file name, and fields are looked up under a few spellings so the
reader does not break on a small schema change.
"""
from __future__ import annotations

import json
from pathlib import Path

MANIFEST_NAME = "manifest.json"
FP32_FORMATS = ("fp32", "float", "float32")


def _load(folder: Path) -> dict | list | None:
    path = folder / MANIFEST_NAME
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None  # a broken manifest must not stop a check: the model files themselves are the contract


def manifest_entries(folder: str | Path) -> list[dict]:
    """Every per-model entry of ``folder/manifest.json``, each with ``file`` set when it can be known."""
    data = _load(Path(folder))
    if data is None:
        return []
    models = data.get("models", data) if isinstance(data, dict) else data
    entries = []
    if isinstance(models, dict):
        for key, entry in models.items():
            if isinstance(entry, dict):
                entries.append({"file": key, **entry} if key.endswith(".onnx") else dict(entry))
    elif isinstance(models, list):
        entries = [dict(e) for e in models if isinstance(e, dict)]
    for e in entries:
        name = next((e[k] for k in ("file", "filename", "path", "onnx", "name") if isinstance(e.get(k), str)
                     and e[k].endswith(".onnx")), None)
        if name:
            e["file"] = Path(name).name
    return entries


def find_entry(model_path: str | Path, sha256: str | None = None) -> dict | None:
    """The manifest entry for ``model_path`` (same folder), or None."""
    model_path = Path(model_path)
    entries = manifest_entries(model_path.parent)
    if sha256:
        for e in entries:
            if e.get("sha256") == sha256:
                return e
    return next((e for e in entries if e.get("file") == model_path.name), None)


def lookup(entry: dict | None, *keys: str, depth: int = 3):
    """First value found under any of ``keys``, searching nested dicts breadth-first."""
    if not entry:
        return None
    level = [entry]
    for _ in range(depth):
        nxt = []
        for d in level:
            for k in keys:
                if k in d and d[k] is not None:
                    return d[k]
            nxt.extend(v for v in d.values() if isinstance(v, dict))
        level = nxt
    return None


def entry_bits(entry: dict | None) -> dict | None:
    """{"weight": w, "activation": a} from a manifest entry, or None."""
    w = lookup(entry, "weight_bits", "w_bits", "wbits")
    a = lookup(entry, "act_bits", "activation_bits", "a_bits", "abits")
    bits = entry.get("bits") if entry else None
    if isinstance(bits, dict):
        w = w or bits.get("weight") or bits.get("weights") or bits.get("w")
        a = a or bits.get("activation") or bits.get("act") or bits.get("a")
    elif isinstance(bits, int):
        w = w or bits
    if w is None:
        return None
    return {"weight": int(w), "activation": int(a) if a is not None else int(w)}


def entry_packed_bytes(entry: dict | None) -> int | None:
    value = lookup(entry, "packed_weight_bytes", "packed_weight_size", "packed_weights_bytes", "packed_bytes",
                   "packed_weight_size_bytes")
    if isinstance(value, dict):
        value = value.get("bytes")
    return int(value) if isinstance(value, (int, float)) else None


def entry_format(entry: dict | None) -> str | None:
    value = lookup(entry, "format", depth=1)
    return str(value) if value is not None else None


def entry_classes(entry: dict | None) -> list[str] | None:
    value = lookup(entry, "class_names", "classes")
    return [str(c) for c in value] if isinstance(value, list) else None


def find_fp32_export(model_paths) -> Path | None:
    """The ``format: fp32`` model listed in the manifest beside any of ``model_paths``."""
    for folder in dict.fromkeys(Path(p).parent for p in model_paths):
        for e in manifest_entries(folder):
            if str(e.get("format", "")).lower() in FP32_FORMATS and e.get("file"):
                candidate = folder / e["file"]
                if candidate.is_file():
                    return candidate
    return None
