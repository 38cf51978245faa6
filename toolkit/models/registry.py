"""A timm-style model registry: ``@register_model`` and ``create_model(name)``."""
from __future__ import annotations

from collections.abc import Callable

_MODELS: dict[str, Callable] = {}

DEFAULT_BITS = (2, 4, 8, 32)


def register_model(fn: Callable) -> Callable:
    _MODELS[fn.__name__] = fn
    return fn


def list_models() -> list[str]:
    return sorted(_MODELS)


def create_model(name: str, bits=None, num_classes: int | None = None, pretrained: str | None = None, **kwargs):
    """Build a registered model for the bit-width set ``bits`` (2..8, and 32 for float; default 2, 4, 8, 32).

    The model takes float32 RGB NCHW in [0, 1] and returns logits. It starts at
    the highest bit-width of its set. ``pretrained`` names an embedded checkpoint
    (:mod:`qadtr.pretrained`): the model gets its weights and, unless ``bits`` is
    given, its bit-width set.
    """
    from ..quant import validate_bits
    from ..switchable import set_bits

    if name not in _MODELS:
        raise ValueError(f"unknown model {name!r}; choose from {', '.join(list_models())}")
    if pretrained is not None:
        if kwargs:
            raise ValueError(f"pretrained={pretrained!r} fixes the architecture: drop {', '.join(kwargs)}")
        from ..pretrained import pretrained_model

        return pretrained_model(pretrained, arch=name, bits=bits, num_classes=num_classes)
    bits = DEFAULT_BITS if bits is None else bits
    num_classes = 10 if num_classes is None else num_classes
    choices = tuple(sorted({validate_bits(b) for b in bits}))
    if not choices:
        raise ValueError("the bit-width set is empty")
    model = _MODELS[name](bit_choices=choices, num_classes=num_classes, **kwargs)
    model.arch = name
    model.bit_choices = choices
    top = max(choices)
    set_bits(model, top)
    return model
