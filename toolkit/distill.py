"""Knowledge distillation from a teacher checkpoint, for float and QAT training.

Hinton et al. 2015, "Distilling the Knowledge in a Neural Network", https://arxiv.org/abs/1503.02531.
A low-bit student that starts from the float model underfits the one-hot labels (W2A2 ResNet-20 ends
10 QAT epochs at training loss 0.71); the float teacher's soft targets say which wrong classes are
nearly right, which is an easier and richer target for a network with 3 weight levels.

loss = (1 - weight) * hard_loss + weight * T^2 * KL(softmax(teacher / T) || softmax(student / T))

The T^2 factor keeps the soft term's gradient scale independent of T (Hinton et al., section 2).

Several teachers form an ensemble: the target is the mean of their softened distributions,
p = mean_i softmax(z_i / T), the ensemble's own prediction at that temperature (Hinton et al., section 1).
Its "logits" T * log p reproduce p exactly under softmax(. / T), so the loss above needs no change.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .checkpoint import load_checkpoint, model_from_checkpoint
from .errors import QadtrError
from .quant import FLOAT_BITS
from .switchable import set_bits


def load_teacher(path, num_classes: int) -> tuple[nn.Module, int]:
    """The teacher in eval mode, at its float path when it was trained there, else its widest trained width.

    Returns the model and the bit-width it runs at. The teacher never trains: its parameters are frozen.
    """
    payload = load_checkpoint(path)
    if payload["config"]["num_classes"] != num_classes:
        raise QadtrError(f"--teacher has {payload['config']['num_classes']} classes, the data has {num_classes}")
    teacher = model_from_checkpoint(payload)
    trained = [int(b) for b in payload.get("trained_bits", [])] or list(teacher.bit_choices)
    teacher_bits = FLOAT_BITS if FLOAT_BITS in trained else max(trained)
    set_bits(teacher, teacher_bits)
    teacher.eval().requires_grad_(False)
    return teacher, teacher_bits


def distillation_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """T^2 * KL(teacher || student) on temperature-softened distributions, averaged over the batch (fp32)."""
    t = float(temperature)
    log_p_student = F.log_softmax(student_logits.float() / t, dim=1)
    log_p_teacher = F.log_softmax(teacher_logits.float() / t, dim=1)
    return F.kl_div(log_p_student, log_p_teacher, log_target=True, reduction="batchmean") * (t * t)


def ensemble_logits(logits: Sequence[torch.Tensor], temperature: float) -> torch.Tensor:
    """Logits whose softmax at ``temperature`` is the mean of the members' softmaxes at it (fp32)."""
    if len(logits) == 1:
        return logits[0]
    t = float(temperature)
    log_probs = torch.stack([F.log_softmax(z.float() / t, dim=1) for z in logits])
    return t * (torch.logsumexp(log_probs, dim=0) - math.log(len(logits)))


class Distillation:
    """Mixes a batch's hard-label loss with the soft targets of a teacher, or of an ensemble of teachers."""

    def __init__(self, teacher: nn.Module | Sequence[nn.Module], weight: float, temperature: float):
        self.teachers = [teacher] if isinstance(teacher, nn.Module) else list(teacher)
        self.weight, self.temperature = float(weight), float(temperature)

    @torch.no_grad()
    def teacher_logits(self, x: torch.Tensor) -> torch.Tensor:
        """The (ensemble) teacher's logits for ``x``; computed once per batch, reused by a SAM second pass."""
        return ensemble_logits([teacher(x) for teacher in self.teachers], self.temperature)

    def mix(self, student_logits: torch.Tensor, teacher_logits: torch.Tensor, hard_loss: torch.Tensor) -> torch.Tensor:
        soft = distillation_loss(student_logits, teacher_logits, self.temperature)
        return (1.0 - self.weight) * hard_loss + self.weight * soft

    def __call__(self, student_logits: torch.Tensor, x: torch.Tensor, hard_loss: torch.Tensor) -> torch.Tensor:
        return self.mix(student_logits, self.teacher_logits(x), hard_loss)
