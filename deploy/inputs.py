"""Everything the harness reads from the user, validated: models, patches, images. Numpy only.

Images come from :func:`qadtr.data.arrays.load_dataset` followed by
``.subset(n, seed)``, exactly as on the PyTorch path, so both paths score the same
images in the same order with the same seeded placements.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from qadtr.asr import patch_area_percent, split_patch
from qadtr.data.arrays import load_dataset
from qadtr.errors import DataError, QadtrError
from qadtr.io import sha256_file
from qadtr.patchfile import load_patch
from qadtr.transfer import to_float_nchw

from . import graph, manifest
from .session import ModelInfo, inspect_model


def describe_model(path: str | Path) -> ModelInfo:
    """:func:`inspect_model` plus what the manifest (or, failing it, the file name) says."""
    import onnx

    info = inspect_model(path)
    entry = manifest.find_entry(info.path, info.sha256)
    bits = manifest.entry_bits(entry) or graph.bits_from_name(info.label)
    model = onnx.load(str(info.path), load_external_data=False)
    if any(n.op_type in graph.QONNX_OPS and "qonnx" in n.domain for n in model.graph.node):
        raise QadtrError(f"{info.path} is a QONNX model (Quant nodes), which ONNX Runtime cannot run: "
                         "pass the .qcdq.onnx export")
    quantized = graph.is_quantized(model)
    packed = manifest.entry_packed_bytes(entry)
    info.extra = {
        "bits": bits,
        "format": manifest.entry_format(entry) or ("fp32" if not quantized else None),
        "quantized": quantized,
        "packed_weight_bytes": packed if packed is not None else graph.computed_weight_bytes(
            model, bits["weight"] if bits else None),
        "packed_weight_source": "manifest" if packed is not None else "computed from the graph",
        "class_names": manifest.entry_classes(entry),
        "manifest": entry is not None,
    }
    return info


def describe_models(paths) -> list[ModelInfo]:
    """Every model, with labels made unique (two folders may hold files of the same name)."""
    infos = [describe_model(p) for p in paths]
    seen: dict[str, int] = {}
    for info in infos:
        if info.label in seen:
            seen[info.label] += 1
            info.label = f"{info.label}#{seen[info.label]}"
        else:
            seen[info.label] = 1
    return infos


def common_image_hw(infos: list[ModelInfo]) -> tuple[int, int] | None:
    """The one image size all models take; the transfer matrix needs one image set."""
    sizes = {i.image_hw for i in infos if i.image_hw is not None}
    if len(sizes) > 1:
        raise QadtrError("the models take different image sizes: " + ", ".join(
            f"{i.label} {i.image_hw[0]}x{i.image_hw[1]}" for i in infos if i.image_hw))
    return sizes.pop() if sizes else None


@dataclass
class PatchFile:
    name: str
    path: Path
    array: np.ndarray  # float32 [3|4,h,w] in [0,1]
    target: int | None
    sidecar: dict

    @property
    def hw(self) -> tuple[int, int]:
        return tuple(self.array.shape[1:])

    def to_json(self, image_hw=None) -> dict:
        _, mask = split_patch(self.array)
        out = {"path": str(self.path.resolve()), "sha256": sha256_file(self.path), "shape": list(self.array.shape),
               "target": self.target, "sidecar": self.sidecar}
        if image_hw:
            out["area_percent"] = patch_area_percent(self.hw, image_hw, mask)
        return out


def _patch_files(specs) -> list[Path]:
    files: list[Path] = []
    for spec in specs:
        for part in str(spec).split(","):
            if not part:
                continue
            p = Path(part)
            if p.is_dir():
                found = sorted(p.glob("*.npy"))
                if not found:
                    raise QadtrError(f"patch folder {p} holds no .npy patch")
                files.extend(found)
            else:
                files.append(p)  # qadtr.patchfile.load_patch reports a missing file
    if not files:
        raise QadtrError("no patch given: pass --patches FILE.npy (or a folder of them)")
    return list(dict.fromkeys(files))


def patch_names(paths) -> list[str]:
    """File stems, or parent/stem where two stems clash: the names ``qadtr transfer`` gives the same files."""
    stems = [Path(p).stem for p in paths]
    return [f"{Path(p).parent.name}/{s}" if stems.count(s) > 1 else s for p, s in zip(paths, stems)]


def load_patches(specs, image_hw: tuple[int, int] | None = None) -> list[PatchFile]:
    """Load every patch (files, folders, comma lists) with :func:`qadtr.patchfile.load_patch`; each must fit."""
    paths = _patch_files(specs)
    patches = []
    for name, path in zip(patch_names(paths), paths):
        array, meta = load_patch(path)
        patch = PatchFile(name=name, path=path, array=array, target=(meta or {}).get("target"), sidecar=meta or {})
        if image_hw and (patch.hw[0] > image_hw[0] or patch.hw[1] > image_hw[1]):
            raise QadtrError(f"patch {path} is {patch.hw[0]}x{patch.hw[1]}, larger than the model's "
                             f"{image_hw[0]}x{image_hw[1]} input")
        patches.append(patch)
    return patches


@dataclass
class EvalImages:
    images: np.ndarray  # float32 [N,3,H,W] in [0,1]
    labels: np.ndarray
    classes: tuple[str, ...]
    name: str
    sha256: str  # of the uint8 subset, the same hash the PyTorch path records


def load_images(dataset: str, split: str, data_dir, n: int | None, seed: int,
                image_hw: tuple[int, int] | None = None, num_classes: int | None = None) -> EvalImages:
    """The seeded subset ``load_dataset(...).subset(n, seed)`` as float NCHW, checked against the model."""
    try:
        data = load_dataset(dataset, split, data_dir, seed=seed).subset(n, seed)
    except DataError:
        raise
    except (OSError, ValueError) as e:
        raise DataError(f"cannot read the {dataset} data: {e}") from None
    hw = tuple(data.x.shape[1:3])
    if image_hw and hw != tuple(image_hw):
        raise QadtrError(f"the {data.name} images are {hw[0]}x{hw[1]} but the model takes "
                         f"{image_hw[0]}x{image_hw[1]}")
    if num_classes is not None and int(data.y.max()) >= num_classes:
        raise QadtrError(f"the {data.name} labels go up to {int(data.y.max())} but the model has "
                         f"{num_classes} classes")
    return EvalImages(to_float_nchw(data.x), data.y, data.classes, data.name, data.sha256())
