"""Patch attacks (torch side). Placement and ASR math come from :mod:`qadtr.asr`."""
from ..asr import apply_patch
from .paste import paste_patch
from .patch import PatchAttack, QuantAwarePatchAttack, patch_loss, sampling_probabilities

__all__ = ["PatchAttack", "QuantAwarePatchAttack", "apply_patch", "paste_patch", "patch_loss",
           "sampling_probabilities"]
