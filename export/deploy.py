"""A deploy copy of a switchable model at one ``(w, a)`` pair: BN folded into the convs, ready for export.

ONNX Runtime fuses ``DequantizeLinear -> Conv -> QuantizeLinear`` into ``QLinearConv`` only when no
BatchNorm sits between the conv and the next quantizer. So the active bit-width's BN becomes a per-channel
weight scale and a float bias; ``integer_bias.quantize_biases`` turns that bias into int32 in the ONNX
graph, on a finer grid than brevitas's ``Int32Bias`` would give at low bit-widths.
"""
from __future__ import annotations

import copy

import torch
from brevitas.nn import QuantConv2d
from torch import nn

from ..errors import QadtrError
from ..layers import ConvBN
from ..quant import FLOAT_BITS, SwitchableThreshold
from ..switchable import set_bits


def _bn_affine(bn: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    """Eval-mode BN as ``y = x * mul + add``."""
    mul = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    return mul, bn.bias - bn.running_mean * mul


@torch.no_grad()
def fold_conv_bn(block: ConvBN) -> QuantConv2d:
    """A QuantConv2d computing ``block`` (conv + its active BN) in eval mode.

    brevitas's own ``merge_bn`` rebuilds the weight quantizer, which would drop the learned thresholds; here
    they are kept and scaled per channel by ``|mul|`` (only the active bit-width's matter: the copy serves
    one precision), so the folded weight quantizes to the same integers times ``sign(mul)``
    (``round(w*mul / (t*|mul|)) = sign(mul) * round(w / t)``): the folded conv is the trained one up to
    float rounding.
    """
    conv, bn = block.conv, block.bn.bns[block.bn.active]
    mul, add = _bn_affine(bn)
    folded = QuantConv2d(
        conv.in_channels, conv.out_channels, conv.kernel_size, stride=conv.stride, padding=conv.padding,
        bias=True, weight_quant=conv.weight_quant.quant_injector,
    )
    result = folded.load_state_dict(conv.state_dict(), strict=False)
    if result.unexpected_keys or set(result.missing_keys) - {"bias"}:
        raise RuntimeError(f"folding lost state: missing {result.missing_keys}, unexpected {result.unexpected_keys}")
    folded.weight.copy_(conv.weight * mul.view(-1, 1, 1, 1))
    folded.bias.copy_(add)
    for m in folded.modules():
        if isinstance(m, SwitchableThreshold):
            for t in m.thresholds.values():
                t.mul_(mul.abs().view(t.shape))
    return folded


def check_thresholds_initialised(model: nn.Module) -> None:
    """Refuse a precision whose thresholds were never set: they would initialise on the export input."""
    for name, m in model.named_modules():
        if isinstance(m, SwitchableThreshold) and not bool(getattr(m, f"initialized_{m.active}")):
            w, a = model.active_bits
            raise QadtrError(f"W{w}A{a} was never calibrated or trained in this model ({name} has no threshold "
                             f"for {m.active} bits): run `qadtr calibrate` first")


def build_deploy_model(model: nn.Module, w: int, a: int | None = None) -> nn.Module:
    """A BN-folded eval-mode copy of ``model`` at ``(w, a)`` (32: the float path); ``model`` is not changed."""
    a = w if a is None else a
    deploy = copy.deepcopy(model).eval()
    set_bits(deploy, w, a)
    if w != FLOAT_BITS:
        check_thresholds_initialised(deploy)
    for m in list(deploy.modules()):
        for child in m.children():
            if isinstance(child, ConvBN):
                child.conv = fold_conv_bn(child)
                child.bn = nn.Identity()
    # New quant modules start at the injector's default bit-width: switch them to (w, a) again.
    set_bits(deploy, w, a)
    return deploy.eval()

