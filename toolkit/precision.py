"""Training precision: fp32, or bf16 autocast with channels-last tensors.

bf16 runs the convolutions on the CPU's bfloat16 units (AMX / AVX512-BF16): on this project's 2-core
machines ResNet-20 trains 1.75-2.2x faster in float and 1.7x faster under W4A4 QAT
(``benchmarks/defense_epoch_cost.py --only "float,qat (bf16)"``). Master weights, the optimizer and evaluation stay
fp32, so every reported accuracy is fp32 inference. Quantizers see bf16 activations, whose 8 significant
bits hold every integer level up to 256 exactly; the rounding decision of a value near a level boundary is
what becomes noisier, most at 8 bits.

Without those units (for example Ice Lake Xeons: AVX512 but no AVX512-BF16 or AMX) oneDNN emulates bf16
and training runs *slower* than fp32 (W8A8 QAT on an Ice Lake Xeon: 80 against 124 img/s), so ``train``
says so before it starts (``bf16_native``).
"""
from __future__ import annotations

import torch

PRECISIONS = ("fp32", "bf16")


def bf16_native() -> bool:
    """Whether this CPU has bfloat16 compute units (AVX512-BF16 or AMX), the condition for bf16 to pay."""
    return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())


def bf16_warning(precision: str) -> str | None:
    """A one-line note when bf16 is asked for on a CPU that would only emulate it; None otherwise."""
    if precision != "bf16" or bf16_native():
        return None
    return ("note: --precision bf16 on a CPU without AVX512-BF16 or AMX runs emulated, slower "
            "than fp32; use --precision fp32 here")


def autocast(precision: str):
    """The autocast context for one training step."""
    return torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16")


def memory_format(tensor_or_module, precision: str):
    """Channels-last under bf16 (oneDNN's fast layout for it); unchanged under fp32."""
    if precision != "bf16":
        return tensor_or_module
    if isinstance(tensor_or_module, torch.Tensor):
        return tensor_or_module.contiguous(memory_format=torch.channels_last)
    return tensor_or_module.to(memory_format=torch.channels_last)
