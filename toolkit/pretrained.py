"""Embedded pretrained checkpoints: ``toolkit/weights/<name>.pt``, shipped as package data.

``qadtr.create_model("resnet20", pretrained="ptq-cifar10")`` loads one; ``qadtr demo`` runs the pipeline on
each one that is shipped. The files are ordinary qadtr checkpoints, loaded with
:func:`qadtr.checkpoint.load_checkpoint` (``torch.load(weights_only=True)``, so a file that would run code is
refused). Importing this module does not import torch.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .errors import QadtrError

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"


@dataclass(frozen=True)
class Pretrained:
    name: str
    arch: str
    description: str


# Described here; a checkpoint counts as shipped only when its file is in WEIGHTS_DIR. Any other
# <name>.pt dropped there is picked up too, described by its own config.
KNOWN = {
    "qadtr-cifar10": Pretrained("qadtr-cifar10", "resnet20", "ResNet-20 hardened on CIFAR-10 by QADT-R (A-QAPA "
                                                             "patches, DBWT, GIR), switchable at 32/8/4/2 bits"),
    "qat-cifar10": Pretrained("qat-cifar10", "resnet20", "ResNet-20 by plain QAT on CIFAR-10, switchable at "
                                                         "32/8/4/2 bits (the undefended baseline of qadtr-cifar10)"),
    "ptq-cifar10": Pretrained("ptq-cifar10", "resnet20", "ResNet-20 trained in float on CIFAR-10, then "
                                                         "post-training calibrated at 32/8/4/2 bits"),
}
# What `qadtr demo` runs by default: the hardened model beside its undefended baseline.
DEMO_PAIR = ("qadtr-cifar10", "qat-cifar10")


def weights_dir() -> Path:
    return WEIGHTS_DIR


def available() -> list[str]:
    """Names of the checkpoints shipped with this install, sorted."""
    folder = weights_dir()
    return sorted(p.stem for p in folder.glob("*.pt") if p.is_file()) if folder.is_dir() else []


def demo_default() -> list[str]:
    """The checkpoints ``qadtr demo`` runs without --pretrained: the shipped ones of DEMO_PAIR, else every one."""
    names = available()
    return [n for n in DEMO_PAIR if n in names] or names


def weights_path(name: str) -> Path:
    """The file of the shipped checkpoint ``name``; one line naming the shipped ones if it is not shipped."""
    names = available()
    path = weights_dir() / f"{name}.pt"
    if name in names:
        return path
    shipped = ", ".join(names) if names else f"none ({weights_dir()} holds no .pt file)"
    what = "is not shipped with this install" if name in KNOWN else "is unknown"
    raise QadtrError(f"pretrained checkpoint {name!r} {what}; available: {shipped}")


def describe(name: str) -> str:
    return KNOWN[name].description if name in KNOWN else f"embedded checkpoint {name}"


def load_pretrained(name: str) -> dict:
    """The checkpoint payload of ``name`` (see :mod:`qadtr.checkpoint`)."""
    from .checkpoint import load_checkpoint

    return load_checkpoint(weights_path(name))


def pretrained_model(name: str, arch: str | None = None, bits=None, num_classes: int | None = None):
    """The model of checkpoint ``name``; with ``bits``, a model of that bit-width set initialised from it."""
    from .checkpoint import model_from_checkpoint
    from .errors import CheckpointError

    payload = load_pretrained(name)
    config = payload["config"]
    if num_classes is not None and num_classes != config["num_classes"]:
        raise CheckpointError(f"pretrained checkpoint {name!r} has {config['num_classes']} classes, not {num_classes}")
    try:
        return model_from_checkpoint(payload, arch=arch, bits=bits)
    except CheckpointError as e:
        raise CheckpointError(f"pretrained checkpoint {name!r}: {e}") from None
