"""What the weights cost at their nominal bit-width, as FINN-style hardware would store them packed."""
from __future__ import annotations

import math

from brevitas.nn.quant_layer import QuantWeightBiasInputOutputLayer
from torch import nn

from ..quant import FLOAT_BITS, SwitchableBitWidth

BIAS_BITS = 32


def packed_weight_size(deploy_model: nn.Module) -> dict:
    """Bytes of all conv/linear weights packed at their active bit-width, and of int32 biases.

    Fixed-precision layers (stem, classifier) count at their own bit-width; the float path counts 32 bits.
    """
    w_bits, _ = deploy_model.active_bits
    weight_bits = bias_bits = 0
    by_width: dict[int, int] = {}
    for layer in deploy_model.modules():
        if not isinstance(layer, QuantWeightBiasInputOutputLayer):
            continue
        bits = FLOAT_BITS
        if w_bits != FLOAT_BITS:
            bits = next(int(m.bit_width.item()) for m in layer.weight_quant.modules()
                        if isinstance(m, SwitchableBitWidth))
        weight_bits += layer.weight.numel() * bits
        by_width[bits] = by_width.get(bits, 0) + layer.weight.numel()
        if layer.bias is not None:
            bias_bits += layer.bias.numel() * BIAS_BITS
    return {
        "packed_weight_bytes": math.ceil(weight_bits / 8),
        "bias_bytes": math.ceil(bias_bits / 8),
        "weights_per_bit_width": {str(k): v for k, v in sorted(by_width.items())},
    }
