"""CIFAR ResNets (He et al. 2016, section 4.2) with switchable precision, and a tiny test net."""
from __future__ import annotations

from torch import nn

from ..layers import ConvBN, Normalize, QuantPolicy, classifier, int_identity, uint_act, uint_identity
from .registry import register_model


class BasicBlock(nn.Module):
    """3x3-3x3 residual block; both add operands are quantized (see QuantPolicy.add_bits).

    With ``policy.stream_bits`` set, the block's input (the residual stream) is at that width and
    ``conv_input_quant`` brings it to the active activation width for the two convs that read it.
    """

    def __init__(self, cin, cout, stride, bit_choices, policy: QuantPolicy):
        super().__init__()
        stream = policy.stream_bits
        self.conv_input_quant = uint_identity(bit_choices, None) if stream is not None else None
        self.branch1 = ConvBN(cin, cout, 3, stride, bit_choices)
        self.act1 = uint_act(bit_choices)
        self.branch2 = ConvBN(cout, cout, 3, 1, bit_choices)
        self.branch_quant = int_identity(bit_choices, policy.add_bits)
        if stride != 1 or cin != cout:
            # Projection shortcut (option B): quantization-friendly, unlike zero-padding.
            self.shortcut = ConvBN(cin, cout, 1, stride, bit_choices, fixed_bits=policy.shortcut_bits)
            self.shortcut_quant = int_identity(bit_choices, policy.add_bits)
        else:
            self.shortcut = None
            self.shortcut_quant = None
        self.act2 = uint_act(bit_choices, stream)
        self.shortcut_reads_stream = policy.shortcut_bits is not None

    def forward(self, x):
        h = x if self.conv_input_quant is None else self.conv_input_quant(x)
        out = self.branch_quant(self.branch2(self.act1(self.branch1(h))))
        # The identity input is already the unsigned output of the previous block's act2.
        # A fixed-width projection shortcut reads the stream itself, at the stream's width.
        if self.shortcut is None:
            skip = x
        else:
            skip = self.shortcut_quant(self.shortcut(x if self.shortcut_reads_stream else h))
        return self.act2(out + skip)


class CifarResNet(nn.Module):
    def __init__(self, depth, bit_choices, num_classes=10, widths=(16, 32, 64), policy: QuantPolicy | None = None):
        super().__init__()
        if (depth - 2) % 6:
            raise ValueError("CIFAR ResNet depth must be 6n+2")
        n = (depth - 2) // 6
        self.policy = policy = policy or QuantPolicy()
        self.normalize = Normalize()
        self.input_quant = int_identity(bit_choices, policy.input_bits)
        self.stem = ConvBN(3, widths[0], 3, 1, bit_choices, fixed_bits=policy.first_last_bits)
        self.stem_act = uint_act(bit_choices, policy.stream_bits)
        layers, cin = [], widths[0]
        for i, w in enumerate(widths):
            for j in range(n):
                layers.append(BasicBlock(cin, w, 2 if (i > 0 and j == 0) else 1, bit_choices, policy))
                cin = w
        self.layers = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head_quant = uint_identity(bit_choices, policy.first_last_bits)
        self.fc = classifier(cin, num_classes, bit_choices, policy)

    def forward(self, x):
        x = self.stem_act(self.stem(self.input_quant(self.normalize(x))))
        x = self.pool(self.layers(x)).flatten(1)
        return self.fc(self.head_quant(x))


@register_model
def resnet20(bit_choices, num_classes=10, **kw):
    return CifarResNet(20, bit_choices, num_classes, **kw)


@register_model
def resnet56(bit_choices, num_classes=10, **kw):
    return CifarResNet(56, bit_choices, num_classes, **kw)


@register_model
def tiny(bit_choices, num_classes=10, **kw):
    """One residual stage of width 8 with a downsampling block: for unit tests only."""
    model = CifarResNet(8, bit_choices, num_classes, widths=(8, 8, 16), **kw)
    return model
