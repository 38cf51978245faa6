"""Patch attacks (torch side). Placement and ASR math come from :mod:`qadtr.asr`."""
from .paste import paste_patch

__all__ = ["paste_patch"]
