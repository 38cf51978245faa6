"""Load image classification data as uint8 NHWC arrays, with numpy alone.

Layouts read:
- ``cifar10``: a folder with ``cifar10_train.npz``/``cifar10_test.npz`` (keys x: uint8
  [N,32,32,3], y), or torchvision's ``cifar-10-batches-py`` (read with a restricted
  unpickler that cannot run code; downloaded by torchvision when ``download=True``
  and a network exists);
- ``imagefolder``: ``<dir>/<split>/<class>/<image>`` (needs Pillow);
- ``npz``: ``<dir>/<split>.npz`` with keys x, y;
- ``synthetic``: class-coloured textures generated from a seed, for unit tests.
"""
from __future__ import annotations

import os
import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import DataError
from ..io import sha256_arrays

DATASETS = ("cifar10", "imagefolder", "npz", "synthetic")
ENV_VAR = "QADTR_DATA_DIR"
CACHE_ENV_VAR = "QADTR_CACHE_DIR"


def cifar10_cache_dir() -> Path:
    """Where CIFAR-10 is downloaded when no folder is given: ``$QADTR_CACHE_DIR/cifar10``, else
    ``~/.cache/qadtr/cifar10``."""
    return Path(os.environ.get(CACHE_ENV_VAR) or Path.home() / ".cache" / "qadtr").expanduser() / "cifar10"
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".ppm", ".webp")


@dataclass
class ArrayDataset:
    """Images as uint8 [N,H,W,3] RGB and integer labels [N]."""

    x: np.ndarray
    y: np.ndarray
    classes: tuple[str, ...]
    name: str

    def __post_init__(self):
        self.y = np.asarray(self.y, dtype=np.int64)
        if self.x.ndim != 4 or self.x.shape[-1] != 3 or self.x.dtype != np.uint8:
            raise DataError(f"{self.name}: images must be uint8 [N,H,W,3], got {self.x.dtype} {list(self.x.shape)}")
        if len(self.x) != len(self.y):
            raise DataError(f"{self.name}: {len(self.x)} images but {len(self.y)} labels")
        if len(self.x) == 0:
            raise DataError(f"{self.name}: no images")

    def __len__(self) -> int:
        return len(self.y)

    def sha256(self) -> str:
        return sha256_arrays(self.x, self.y)

    def subset(self, n: int | None, seed: int = 0) -> ArrayDataset:
        """A seeded random subset of ``n`` images (all of them when n is None or too large)."""
        if n is None or n >= len(self):
            return self
        idx = np.sort(np.random.default_rng(seed).permutation(len(self))[:n])
        return ArrayDataset(self.x[idx], self.y[idx], self.classes, f"{self.name}[{n}]")


def resolve_data_dir(data_dir: str | os.PathLike | None) -> Path:
    """``data_dir``, else ``$QADTR_DATA_DIR``; the folder must exist."""
    chosen = data_dir or os.environ.get(ENV_VAR)
    if not chosen:
        raise DataError(f"no data folder: pass --data-dir or set {ENV_VAR} (for CIFAR-10, a folder with "
                        "cifar10_train.npz/cifar10_test.npz or cifar-10-batches-py)")
    path = Path(chosen).expanduser()
    if not path.is_dir():
        raise DataError(f"data folder {path} does not exist")
    if not any(path.iterdir()):
        raise DataError(f"data folder {path} is empty")
    return path


def _load_npz(path: Path, name: str, classes=None) -> ArrayDataset:
    try:
        with np.load(path, allow_pickle=False) as d:
            x, y = d["x"], d["y"]
    except (OSError, ValueError, KeyError) as e:
        raise DataError(f"cannot read {path}: expected an npz with arrays x and y ({e})") from None
    classes = classes or tuple(str(i) for i in range(int(y.max()) + 1))
    return ArrayDataset(x, y, tuple(classes), name)


class _ArrayOnlyUnpickler(pickle.Unpickler):
    """Unpickles the CIFAR batch files (dicts, lists, numpy arrays) and nothing that can run code."""

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
        ("numpy", "ndarray"), ("numpy", "dtype"),
    }

    def find_class(self, module, name):
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}")


def _load_cifar_batches(folder: Path, split: str) -> ArrayDataset:
    names = [f"data_batch_{i}" for i in range(1, 6)] if split == "train" else ["test_batch"]
    xs, ys = [], []
    for n in names:
        try:
            with open(folder / n, "rb") as f:
                d = _ArrayOnlyUnpickler(f, encoding="bytes").load()
        except (OSError, pickle.UnpicklingError, EOFError) as e:
            raise DataError(f"cannot read {folder / n}: {e}") from None
        xs.append(np.asarray(d[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
        ys.append(np.asarray(d[b"labels"]))
    return ArrayDataset(np.ascontiguousarray(np.concatenate(xs)), np.concatenate(ys), CIFAR10_CLASSES,
                        f"cifar10-{split}")


def load_cifar10(data_dir, split: str, download: bool = False) -> ArrayDataset:
    if split not in ("train", "test"):
        raise DataError(f"unknown split {split!r}: use train or test")
    if download:
        # Where a network exists: the given folder, else $QADTR_DATA_DIR, else the user cache.
        root = Path(data_dir or os.environ.get(ENV_VAR) or cifar10_cache_dir())
        root.mkdir(parents=True, exist_ok=True)
    else:
        root = resolve_data_dir(data_dir)
    npz = root / f"cifar10_{split}.npz"
    if npz.is_file():
        return _load_npz(npz, f"cifar10-{split}", CIFAR10_CLASSES)
    batches = root / "cifar-10-batches-py"
    if not batches.is_dir() and download:
        try:
            import torchvision

            torchvision.datasets.CIFAR10(str(root), train=split == "train", download=True)
        except Exception as e:  # noqa: BLE001 - any download failure becomes one clear line
            raise DataError(f"CIFAR-10 is not in {root} and could not be downloaded ({e})") from None
    if batches.is_dir():
        return _load_cifar_batches(batches, split)
    raise DataError(f"{root} holds no CIFAR-10: expected cifar10_{split}.npz or cifar-10-batches-py/")


def load_image_folder(data_dir, split: str, image_size: int | None = None) -> ArrayDataset:
    root = resolve_data_dir(data_dir)
    split_dir = root / split if (root / split).is_dir() else root
    class_dirs = sorted(p for p in split_dir.iterdir() if p.is_dir())
    if not class_dirs:
        raise DataError(f"{split_dir} has no class folders (<class>/<image>)")
    from PIL import Image

    xs, ys = [], []
    for label, cdir in enumerate(class_dirs):
        for f in sorted(cdir.iterdir()):
            if f.suffix.lower() in IMAGE_EXTENSIONS:
                img = Image.open(f).convert("RGB")
                if image_size:
                    img = img.resize((image_size, image_size), Image.BILINEAR)
                xs.append(np.asarray(img, dtype=np.uint8))
                ys.append(label)
    if not xs:
        raise DataError(f"{split_dir} holds no images")
    if len({a.shape for a in xs}) > 1:
        raise DataError(f"{split_dir}: images differ in size; pass an image size to resize them")
    return ArrayDataset(np.stack(xs), np.array(ys), tuple(p.name for p in class_dirs), f"imagefolder-{split}")


def synthetic(n: int = 512, num_classes: int = 10, size: int = 32, seed: int = 0) -> ArrayDataset:
    """A learnable toy set: each class is a colour and a stripe frequency, plus noise."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, num_classes, n)
    class_rng = np.random.default_rng(1234)
    colours = class_rng.uniform(0.2, 0.8, (num_classes, 3))
    freqs = class_rng.uniform(0.3, 1.5, num_classes)
    grid = np.arange(size)[None, :, None]
    stripes = 0.2 * np.sin(freqs[y][:, None, None] * grid + rng.uniform(0, 6.28, (n, 1, 1)))
    img = colours[y][:, None, None, :] + stripes[..., None] + rng.normal(0, 0.08, (n, size, size, 3))
    x = (np.clip(img, 0, 1) * 255).round().astype(np.uint8)
    return ArrayDataset(x, y, tuple(f"class{i}" for i in range(num_classes)), "synthetic")


def load_dataset(name: str, split: str, data_dir=None, download: bool = False, seed: int = 0,
                 image_size: int | None = None) -> ArrayDataset:
    """One entry point for every layout. Raises :class:`DataError` with one clear line."""
    if name == "cifar10":
        return load_cifar10(data_dir, split, download)
    if name == "imagefolder":
        return load_image_folder(data_dir, split, image_size)
    if name == "npz":
        path = resolve_data_dir(data_dir) / f"{split}.npz"
        if not path.is_file():
            raise DataError(f"{path} not found")
        return _load_npz(path, f"npz-{split}")
    if name == "synthetic":
        return synthetic(n=512 if split == "train" else 256, seed=seed + (split == "test"))
    raise DataError(f"unknown dataset {name!r}: choose from {', '.join(DATASETS)}")
