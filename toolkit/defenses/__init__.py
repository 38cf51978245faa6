"""Training defenses, one module per defense, dispatched by name.

Each defense turns a batch into a training loss (``step``) and owns whatever state it carries
between batches (a patch pool), which the trainer saves in the checkpoint. Importing this
package does not import torch; ``build_defense`` loads the defense's module on first use.
"""
from __future__ import annotations

import importlib

from .params import DefenseParams, defense_options

# name -> (module, class). float and qat are the plain cross-entropy step of the foundation.
_REGISTRY = {
    "float": ("plain", "PlainTraining"),
    "qat": ("plain", "PlainTraining"),
    "pbat": ("pbat", "PBAT"),
    "dwq": ("dwq", "DWQ"),
    "qadtr": ("qadtr", "QADTR"),
}
DEFENSES = tuple(_REGISTRY)


def build_defense(cfg, model, criterion, distill=None):
    """The defense ``cfg.defense`` for ``model``, trained with ``criterion``.

    ``distill`` (a ``qadtr.distill.Distillation``) mixes a teacher's soft targets into float and qat.
    """
    module, cls = _REGISTRY[cfg.defense]
    defense_cls = getattr(importlib.import_module(f"{__name__}.{module}"), cls)
    # TrainConfig.resolved has already refused a teacher for any defense but float and qat.
    extra = {} if distill is None else {"distill": distill}
    return defense_cls(cfg, model, criterion, **extra)


__all__ = ["DEFENSES", "DefenseParams", "build_defense", "defense_options"]
