"""Checkpoints: one file, safe to load (``weights_only=True``), written atomically.

Layout: ``{"format": "qadtr-checkpoint", "version": 1, "config": {...}, "model": state_dict,
"trained_bits": [...], "epoch": int, "optimizer": ..., "scheduler": ..., "metrics": [...]}``.
"""
from __future__ import annotations

import pickle
import re
from pathlib import Path

import torch

from .errors import CheckpointError
from .io import atomic_path

FORMAT = "qadtr-checkpoint"
VERSION = 1


def save_checkpoint(path, payload: dict) -> None:
    payload = {"format": FORMAT, "version": VERSION, **payload}
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


def load_checkpoint(path) -> dict:
    """Load a qadtr checkpoint. Anything that is not one, or would run code, is refused."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} not found")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else "unsafe content"
        raise CheckpointError(f"refusing to load {path}: it holds objects that could run code ({first[:160]})") \
            from None
    except Exception as e:  # noqa: BLE001 - garbage bytes raise anything: IndexError, KeyError, ... from the unpickler
        raise CheckpointError(f"checkpoint {path} is corrupt or truncated ({type(e).__name__})") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a qadtr checkpoint")
    if payload.get("version") != VERSION:
        raise CheckpointError(f"{path} has checkpoint format version {payload.get('version')}, expected {VERSION}")
    return payload


_BN_KEY = re.compile(r"(.*\.bns\.)(\d+)(\..*)")


def load_matching_state(model: torch.nn.Module, state: dict) -> list[str]:
    """Load ``state`` into ``model`` even when their bit-width sets differ.

    A BatchNorm for a bit-width the source never had starts from the source's BN
    of the nearest width it has (ties to the wider one): a float checkpoint seeds
    every width from its float BN, a W4A4 checkpoint seeds 2 bits from its 4-bit
    BN, whose affine parameters were trained with the weights as they now are
    (its float BN was not). Thresholds the source lacks stay uninitialised and
    are set from data on first use. Returns the keys that kept their fresh values.
    """
    target = model.state_dict()
    merged, fresh = {}, []
    for key, value in target.items():
        src = state.get(key)
        if src is None and (m := _BN_KEY.match(key)):
            src = state.get(f"{m.group(1)}{_nearest_bn_width(state, m, int(m.group(2)))}{m.group(3)}")
        if src is not None and src.shape == value.shape:
            merged[key] = src
        else:
            merged[key] = value
            fresh.append(key)
    model.load_state_dict(merged)
    return fresh


def _nearest_bn_width(state: dict, match: re.Match, bits: int) -> int | None:
    """The bit-width of the source BN closest to ``bits`` for the BN that ``match`` names."""
    prefix, suffix = match.group(1), match.group(3)
    widths = {int(m.group(2)) for k in state if (m := _BN_KEY.match(k)) and m.group(1) == prefix
              and m.group(3) == suffix}
    return min(widths, key=lambda w: (abs(w - bits), -w), default=None)


def checkpoint_policy(payload: dict):
    """The ``QuantPolicy`` a checkpoint's quantized widths were trained or calibrated under.

    A float-only checkpoint fits any policy, so it gets the default (its quantizers are fresh). Otherwise
    the policy is saved in ``config["policy"]`` since stream_bits exists (a saved policy without
    shortcut_bits predates that field: its shortcuts switch). Without it: a state with conv-input
    quantizers has the 8-bit stream and switching shortcuts; one without them predates stream_bits and
    used the legacy policy.
    """
    from .layers import LEGACY_POLICY, STREAM8_POLICY, QuantPolicy

    quantized = [b for b in payload.get("trained_bits", []) if int(b) != 32]
    if not quantized:
        return QuantPolicy()
    saved = payload["config"].get("policy")
    if saved is not None:
        # A policy saved before shortcut_bits existed switched the shortcuts with the model.
        return QuantPolicy(**{"shortcut_bits": None, **saved})
    if any(".conv_input_quant." in key for key in payload.get("model", {})):
        return STREAM8_POLICY
    return LEGACY_POLICY


def model_from_checkpoint(payload: dict, arch: str | None = None, bits=None):
    """Rebuild the model a checkpoint describes (or ``arch`` with bit set ``bits`` initialised from it)."""
    from .models import create_model
    from .switchable import set_bits

    config = payload["config"]
    if arch is not None and arch != config["arch"]:
        raise CheckpointError(f"checkpoint is for arch {config['arch']!r}, not {arch!r}")
    model = create_model(config["arch"], bits=bits or config["model_bits"], num_classes=config["num_classes"],
                         policy=checkpoint_policy(payload))
    float_only = all(int(b) == 32 for b in payload.get("trained_bits", [32]))
    if bits is None and not float_only:
        model.load_state_dict(payload["model"])
    else:
        # A float-only checkpoint has no trained quantizer state to lose; one saved under the legacy placement
        # lacks the conv-input quantizers, which start fresh. Everything else must load.
        fresh = load_matching_state(model, payload["model"])
        if bits is None and (missing := [k for k in fresh if "_quant." not in k]):
            raise CheckpointError(f"checkpoint does not match arch {config['arch']!r}: {missing[0]} is missing")
    set_bits(model, max(model.bit_choices))
    return model
