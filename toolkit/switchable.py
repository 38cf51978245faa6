"""Run-time precision switching: switchable BatchNorm, ``set_bits`` and ``bits``."""
from __future__ import annotations

from contextlib import contextmanager

from brevitas.proxy.quant_proxy import QuantProxyFromInjector
from torch import nn

from .family import PrecisionFamily
from .quant import FLOAT_BITS, SwitchableBitWidth, SwitchableThreshold, validate_bits


class SwitchableBatchNorm2d(nn.Module):
    """One BatchNorm2d per weight bit-width (switchable BN, as in DWQ / any-precision nets).

    Statistics of a 2-bit network differ from a float one; sharing one BN across
    precisions would average incompatible statistics.
    """

    def __init__(self, num_features: int, bit_choices):
        super().__init__()
        self.bns = nn.ModuleDict({str(int(b)): nn.BatchNorm2d(num_features) for b in bit_choices})
        self.active = str(int(max(bit_choices)))

    def set(self, bits: int) -> None:
        self.active = str(int(bits))

    def forward(self, x):
        return self.bns[self.active](x)


def bit_choices(model: nn.Module) -> tuple[int, ...]:
    """The bit-widths a model was built for (its ``bit_choices`` attribute)."""
    return tuple(model.bit_choices)


def get_bits(model: nn.Module) -> tuple[int, int]:
    """The active ``(w, a)`` pair."""
    return model.active_bits


def _proxy_role(proxy: QuantProxyFromInjector) -> str | None:
    for m in proxy.modules():
        if isinstance(m, SwitchableBitWidth):
            return m.role
    return None


def set_bits(model: nn.Module, w: int, a: int | None = None) -> nn.Module:
    """Switch every quantizer of ``model`` to ``w``-bit weights and ``a``-bit activations.

    ``a`` defaults to ``w``. 32 means the float path: every quantizer (fixed
    ones included) is bypassed. Mixing 32 with a quantized width is refused,
    because the fixed 8-bit input/first/last quantizers cannot be half on.
    BatchNorm follows ``w``.
    """
    if isinstance(model, PrecisionFamily):  # separately trained networks: one member serves the pair
        return model.switch(validate_bits(w), None if a is None else validate_bits(a))
    a = w if a is None else a
    w, a = validate_bits(w), validate_bits(a)
    choices = bit_choices(model)
    for b in (w, a):
        if b not in choices:
            raise ValueError(f"bit-width {b} is not in this model's set {sorted(choices)}")
    if (w == FLOAT_BITS) != (a == FLOAT_BITS):
        raise ValueError("32 (float) must be used for both weights and activations")
    use_float = w == FLOAT_BITS
    for m in model.modules():
        if isinstance(m, SwitchableBatchNorm2d):
            m.set(w)
        elif isinstance(m, QuantProxyFromInjector):
            role = _proxy_role(m)
            if role is not None:
                m.disable_quant = use_float
        elif isinstance(m, SwitchableThreshold) and not use_float:
            m.set(w if m.role.endswith("weight") else a)
        elif isinstance(m, SwitchableBitWidth) and not use_float and not m.role.startswith("fixed"):
            m.set(w if m.role == "weight" else a)
    model.active_bits = (w, a)
    return model


@contextmanager
def bits(model: nn.Module, w: int, a: int | None = None):
    """Context manager: run with ``(w, a)`` bits, then restore the previous pair."""
    previous = get_bits(model)
    set_bits(model, w, a)
    try:
        yield model
    finally:
        set_bits(model, *previous)
