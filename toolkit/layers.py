"""Building blocks for switchable-precision networks.

``QuantPolicy`` states where quantizers sit and at which bits the fixed ones run.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from brevitas.nn import QuantConv2d, QuantIdentity, QuantLinear, QuantReLU
from torch import nn

from .quant import FLOAT_BITS, SwitchableIntActQuant, SwitchableUintActQuant, SwitchableWeightQuant
from .switchable import SwitchableBatchNorm2d

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)


@dataclass(frozen=True)
class QuantPolicy:
    """Where precision does not switch.

    input_bits: the signed quantizer on the normalized input of the first conv.
    first_last_bits: weight bits of the first conv and the classifier, and of
        the classifier's input activation. Standard practice (DoReFa, LSQ, PACT):
        those layers are small and most sensitive.
    add_bits: both operands of every residual add. ONNX Runtime adds in int8
        anyway, and a quantizer on both inputs lets every conv fuse to QLinearConv.
    stream_bits: the residual stream (the stem's and every block's ReLU output,
        which identity shortcuts carry). An integer pins it at that width and
        gives each block a quantizer at the active activation width on its
        conv inputs instead, so a-bit convs still read a-bit inputs while the
        shortcut keeps its precision (the usual meaning of "W2A2" in QAT
        papers). ``None`` quantizes the stream at the active width, so at 2 bits
        the shortcut carries 4 levels: PTQ of the 89.4% float ResNet-20 measured
        60.6% at W2A2 that way against 65.8% with an 8-bit stream
        (docs/method.md). Checkpoints from before this field existed used None.
    shortcut_bits: weight bits of the 1x1 projection shortcuts, which then read
        the residual stream itself. The two downsampling shortcuts carry the
        whole stream from one stage to the next; at the active width they pass
        it through a-bit inputs and, at 2 bits, ternary weights. ``None``
        switches them with the model (the placement of checkpoints saved before
        this field existed). They hold 1% of ResNet-20's weights.
    """

    input_bits: int = 8
    first_last_bits: int = 8
    add_bits: int = 8
    stream_bits: int | None = 8
    shortcut_bits: int | None = 8

    def as_dict(self) -> dict:
        return asdict(self)


# The policy of checkpoints saved before QuantPolicy.stream_bits existed.
LEGACY_POLICY = QuantPolicy(stream_bits=None, shortcut_bits=None)
# The policy of checkpoints saved with stream_bits but before shortcut_bits existed.
STREAM8_POLICY = QuantPolicy(shortcut_bits=None)


def quant_bits(bit_choices) -> tuple[int, ...]:
    """The quantized widths of a bit set; a float-only model keeps nominal 8-bit quantizers."""
    return tuple(sorted(int(b) for b in bit_choices if int(b) != FLOAT_BITS)) or (8,)


def _quant(injector, bit_choices, kind: str, fixed_bits: int | None):
    """Bind an injector to the model's bit set; ``fixed_bits`` pins its bit-width."""
    qb = quant_bits(bit_choices)
    if fixed_bits is None:
        return injector.let(bit_choices=qb, bit_width=max(qb), role=kind, fixed_bits=0)
    return injector.let(bit_choices=qb, bit_width=fixed_bits, role=f"fixed_{kind}", fixed_bits=fixed_bits)


def weight_quant(bit_choices, fixed_bits: int | None = None):
    return _quant(SwitchableWeightQuant, bit_choices, "weight", fixed_bits)


def uint_act(bit_choices, bits: int | None = None) -> QuantReLU:
    """ReLU followed by an unsigned quantizer at ``bits``, or the active activation bit-width (None)."""
    return QuantReLU(act_quant=_quant(SwitchableUintActQuant, bit_choices, "act", bits))


def uint_identity(bit_choices, bits: int | None) -> QuantIdentity:
    """An unsigned quantizer at ``bits``, or the active activation bit-width (None)."""
    return QuantIdentity(act_quant=_quant(SwitchableUintActQuant, bit_choices, "act", bits))


def int_identity(bit_choices, bits: int) -> QuantIdentity:
    return QuantIdentity(act_quant=_quant(SwitchableIntActQuant, bit_choices, "act", bits))


class Normalize(nn.Module):
    """Per-channel normalization inside the model, so inputs stay RGB in [0, 1]."""

    def __init__(self, mean=CIFAR10_MEAN, std=CIFAR10_STD):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1))

    def forward(self, x):
        return (x - self.mean) / self.std


class ConvBN(nn.Module):
    """Quantized conv (no bias) followed by switchable BN."""

    def __init__(self, cin, cout, kernel, stride, bit_choices, fixed_bits=None):
        super().__init__()
        self.conv = QuantConv2d(
            cin, cout, kernel, stride=stride, padding=kernel // 2, bias=False,
            weight_quant=weight_quant(bit_choices, fixed_bits),
        )
        self.bn = SwitchableBatchNorm2d(cout, bit_choices)

    def forward(self, x):
        return self.bn(self.conv(x))


def classifier(cin: int, num_classes: int, bit_choices, policy: QuantPolicy) -> QuantLinear:
    return QuantLinear(cin, num_classes, bias=True, weight_quant=weight_quant(bit_choices, policy.first_last_bits))
