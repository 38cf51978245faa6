"""Switchable-precision brevitas quantizers.

A quantizer here is a brevitas injector whose bit-width and threshold (the float
range that maps to the largest integer) are modules holding state for every
bit-width in the model's set.  Switching precision only changes which entry is
active, so the float weights stay shared across bit-widths.
"""
from __future__ import annotations

import math

import torch
from brevitas.core.bit_width import BitWidthStatefulConst
from brevitas.quant.scaled_int import (
    Int8ActPerTensorFloat,
    Int8WeightPerChannelFloat,
    Uint8ActPerTensorFloat,
)
from torch import nn

FLOAT_BITS = 32
QUANT_BITS = range(2, 9)

# Roles decide which part of the (w, a) pair a quantizer follows when the model
# switches precision. "fixed_*" quantizers (input, first/last layer, residual adds)
# keep their own bit-width, but still hold one threshold per model bit-width,
# because what they see changes with the precision of the layers around them.
ROLES = ("weight", "act", "fixed_weight", "fixed_act")


def validate_bits(bits: int) -> int:
    bits = int(bits)
    if bits != FLOAT_BITS and bits not in QUANT_BITS:
        raise ValueError(f"bit-width {bits} is not supported: use 2..8, or 32 for float")
    return bits


class SwitchableBitWidth(BitWidthStatefulConst):
    """A brevitas bit-width held in a buffer, so it can change between forwards.

    brevitas re-reads ``bit_width_impl()`` on every forward, which is what makes
    run-time switching possible without rebuilding the quantizer.
    """

    def __init__(self, bit_width: int, role: str = "act") -> None:
        super().__init__(bit_width)
        if role not in ROLES:
            raise ValueError(f"unknown quantizer role {role!r}")
        self.role = role
        self.nominal_bits = int(bit_width)

    def set(self, bits: int) -> None:
        self.bit_width.fill_(float(bits))


def _grad_scale(x: torch.Tensor, scale: float) -> torch.Tensor:
    # Same value, gradient multiplied by `scale` (LSQ's step-size gradient scaling).
    return (x - x * scale).detach() + x * scale


def mse_threshold(x: torch.Tensor, bits: int, signed: bool, narrow: bool, dims: tuple[int, ...]) -> torch.Tensor:
    """Threshold minimising the quantization MSE of ``x`` at ``bits``.

    Searched on a grid of fractions of the absolute maximum, reduced over
    ``dims`` (all dims for per-tensor, all but dim 0 for per-channel).
    Low bit-widths want a threshold well below the maximum; the max is only
    right at 8 bits, which is why a fixed max rule fails at 2 bits.
    """
    x = x.detach().float()
    amax = x.abs().amax(dim=dims, keepdim=True).clamp_min(1e-8)
    if signed:
        qmax = 2 ** (bits - 1) - 1
        qmin = -qmax if narrow else -(2 ** (bits - 1))
    else:
        qmax, qmin = 2**bits - 1, 0
    best_err, best = None, amax
    for frac in torch.linspace(0.05, 1.0, 40):
        t = amax * frac
        s = t / qmax
        q = torch.clamp(torch.round(x / s), qmin, qmax) * s
        err = (q - x).pow(2).mean(dim=dims, keepdim=True)
        if best_err is None:
            best_err, best = err, t
        else:
            better = err < best_err
            best_err = torch.where(better, err, best_err)
            best = torch.where(better, t, best)
    return best


class SwitchableThreshold(nn.Module):
    """One learned threshold per bit-width (LSQ-style), per output channel or per tensor.

    Each bit-width's threshold is initialised on its first use from the MSE-optimal
    value for the tensor it sees, then learned with LSQ gradient scaling.
    ``calibration.calibrate`` re-initialises them from real data.
    """

    def __init__(self, bit_choices, shape, signed: bool, narrow: bool, reduce_dims, role: str, fixed_bits: int = 0):
        super().__init__()
        self.bit_keys = [str(b) for b in bit_choices if int(b) != FLOAT_BITS]
        self.signed, self.narrow, self.role = signed, narrow, role
        self.fixed_bits = int(fixed_bits)  # 0: quantize at the active bit-width
        self.reduce_dims = tuple(reduce_dims)
        self.thresholds = nn.ParameterDict({k: nn.Parameter(torch.ones(shape)) for k in self.bit_keys})
        # One flag per bit-width (not one vector), so checkpoints built for other
        # bit sets load key by key.
        for k in self.bit_keys:
            self.register_buffer(f"initialized_{k}", torch.zeros((), dtype=torch.bool))
        self.active = self.bit_keys[-1]

    def set(self, bits: int) -> None:
        if int(bits) != FLOAT_BITS:
            self.active = str(int(bits))

    def reset(self) -> None:
        """Forget the active bit-width's threshold: the next forward re-initialises it."""
        getattr(self, f"initialized_{self.active}").zero_()

    def forward(self, x: torch.Tensor, int_threshold: torch.Tensor) -> torch.Tensor:
        """Scale = learned float threshold / integer threshold (brevitas's scaling contract)."""
        param = self.thresholds[self.active]
        bits = self.fixed_bits or int(self.active)
        flag = getattr(self, f"initialized_{self.active}")
        if not bool(flag):
            with torch.no_grad():
                param.copy_(mse_threshold(x, bits, self.signed, self.narrow, self.reduce_dims).reshape(param.shape))
                flag.fill_(True)
        qmax = (2 ** (bits - 1) - 1) if self.signed else (2**bits - 1)
        numel = x.numel() / max(1, param.numel())
        t = _grad_scale(param, 1.0 / math.sqrt(numel * qmax))
        return t.abs().clamp_min(1e-8) / int_threshold


class WeightThreshold(SwitchableThreshold):
    """Per-output-channel weight threshold, one per bit-width."""

    def __init__(self, bit_choices, tracked_parameter_list, role: str, fixed_bits: int):
        w = tracked_parameter_list[0]
        shape = (w.shape[0],) + (1,) * (w.dim() - 1)
        super().__init__(bit_choices, shape, True, True, tuple(range(1, w.dim())), role, fixed_bits)


class ActThreshold(SwitchableThreshold):
    """Per-tensor activation threshold, one per bit-width."""

    def __init__(self, bit_choices, signed: bool, narrow_range: bool, role: str, fixed_bits: int):
        super().__init__(bit_choices, (), signed, narrow_range, (), role, fixed_bits)

    def forward(self, x: torch.Tensor, int_threshold: torch.Tensor) -> torch.Tensor:
        # Initialise from all dims; the stored threshold is a scalar.
        if not bool(getattr(self, f"initialized_{self.active}")):
            self.reduce_dims = tuple(range(x.dim()))
        return super().forward(x, int_threshold)


class SwitchableWeightQuant(Int8WeightPerChannelFloat):
    """Signed narrow-range per-channel weights: 2^b - 1 levels, zero-point 0."""

    bit_width_impl = SwitchableBitWidth
    scaling_impl = WeightThreshold
    role = "weight"
    fixed_bits = 0


class SwitchableUintActQuant(Uint8ActPerTensorFloat):
    """Unsigned per-tensor activations (after ReLU): at most 2^a levels."""

    bit_width_impl = SwitchableBitWidth
    scaling_impl = ActThreshold
    role = "act"
    fixed_bits = 0


class SwitchableIntActQuant(Int8ActPerTensorFloat):
    """Signed per-tensor activations (input and residual-add operands)."""

    bit_width_impl = SwitchableBitWidth
    scaling_impl = ActThreshold
    role = "fixed_act"


def _initialised_weight_thresholds(model: nn.Module):
    """Every (weight, WeightThreshold, key, threshold) of ``model`` whose threshold has been initialised."""
    for layer in model.modules():
        weight, quant = getattr(layer, "weight", None), getattr(layer, "weight_quant", None)
        if weight is None or quant is None:
            continue
        for m in quant.modules():
            if isinstance(m, WeightThreshold):
                for key, param in m.thresholds.items():
                    if bool(getattr(m, f"initialized_{key}")):
                        yield weight, m, key, param


@torch.no_grad()
def project_weight_thresholds(model: nn.Module) -> int:
    """Clamp every initialised weight threshold to its channel's max |w|; returns how many were clamped.

    The trainer calls this after every optimizer step (projected SGD). A threshold above max |w| buys no
    range, only coarser levels, and at 2 bits (levels -t, 0, t) one above 2 max |w| rounds the whole
    output channel to zero. LSQ's step-size gradient with momentum drives thresholds there: unprojected
    W2A2 QAT of ResNet-20 ended with 132 of 768 channels dead (docs/method.md). With the projection the
    largest weight of a channel always maps to the top level, so no channel can die.
    """
    clamped = 0
    for weight, m, _key, param in _initialised_weight_thresholds(model):
        amax = weight.detach().abs().amax(dim=m.reduce_dims, keepdim=True).clamp_min(1e-8).view(param.shape)
        over = param.abs() > amax
        clamped += int(over.sum())
        param.copy_(torch.where(over, amax, param.abs()))
    return clamped


@torch.no_grad()
def refit_weight_thresholds(model: nn.Module) -> int:
    """Set every initialised switching weight threshold to the MSE-optimal one for the current weights.

    The alternative to learning them (``--weight-thresholds mse``): the trainer calls this after every
    optimizer step, so thresholds follow the weights and their LSQ gradient is discarded. At 2 bits LSQ
    drives ternary thresholds up to max |w| (70% of weights at zero, against 50% MSE-optimal;
    docs/method.md), which this rules out. Fixed-width quantizers (first/last layer, shortcuts) keep
    learning, projected as in ``project_weight_thresholds``. Returns how many thresholds were refit.
    """
    project_weight_thresholds(model)
    refit = 0
    for weight, m, key, param in _initialised_weight_thresholds(model):
        if m.role == "weight":
            param.copy_(mse_threshold(weight, int(key), True, True, m.reduce_dims).view(param.shape))
            refit += param.numel()
    return refit
