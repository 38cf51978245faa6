"""Parity of an exported model with the PyTorch model it came from, and the refusal thresholds."""
from __future__ import annotations

import math

import numpy as np
import onnxruntime as ort

from ..errors import QadtrError
from .onnx_io import INPUT_NAME

MIN_TOP1_AGREEMENT = 0.995
MAX_ACCURACY_DELTA = 0.003
# The rounding-sensitive gate (pipeline.rounding_sensitive_ok): ORT may flip at most this many times as many
# decisions against exact arithmetic as float32 PyTorch does, and never agree on fewer than this share.
SENSITIVITY_FACTOR = 2.0
SENSITIVE_MIN_TOP1_AGREEMENT = 0.97


class ParityError(QadtrError):
    """An exported model disagrees with its PyTorch model beyond the thresholds."""


def ort_session(path, threads: int = 1) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def ort_logits(session: ort.InferenceSession, images: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """Logits for float32 NCHW ``images`` in [0, 1], in batches."""
    outs = [session.run(None, {INPUT_NAME: np.ascontiguousarray(images[i:i + batch_size], dtype=np.float32)})[0]
            for i in range(0, len(images), batch_size)]
    return np.concatenate(outs)


def parity(reference: np.ndarray, candidate: np.ndarray, labels: np.ndarray) -> dict:
    """|delta logit| statistics, top-1 agreement and accuracy under each."""
    delta = np.abs(reference.astype(np.float64) - candidate.astype(np.float64))
    ref_top1, cand_top1 = reference.argmax(1), candidate.argmax(1)
    return {
        "images": int(len(labels)),
        "max_abs_delta_logit": float(delta.max()),
        "mean_abs_delta_logit": float(delta.mean()),
        "top1_agreement": float((ref_top1 == cand_top1).mean()),
        "accuracy_torch": float((ref_top1 == labels).mean()),
        "accuracy_onnx": float((cand_top1 == labels).mean()),
    }


def accuracy_delta_limit(result: dict, max_accuracy_delta: float = MAX_ACCURACY_DELTA) -> float:
    """The largest accuracy change ``result``'s flips may cause: ``max_accuracy_delta`` plus two standard
    deviations of what that many random flips do (each gains or loses a correct answer: sd = sqrt(flips) /
    images). Without the noise term, 500 images tolerate one net flip, and two bias-rounding flips that both
    happen to land on the right answer refused a W8A8 QLinearConv graph agreeing on 99.6% (results 6d)."""
    images = result["images"]
    flips = round((1.0 - result["top1_agreement"]) * images)
    return max_accuracy_delta + 2.0 * math.sqrt(flips) / images


def accuracy_delta_ok(result: dict, max_accuracy_delta: float = MAX_ACCURACY_DELTA) -> bool:
    acc_delta = abs(result["accuracy_onnx"] - result["accuracy_torch"])
    return acc_delta <= accuracy_delta_limit(result, max_accuracy_delta) + 1e-12


def parity_ok(result: dict, min_agreement: float = MIN_TOP1_AGREEMENT,
              max_accuracy_delta: float = MAX_ACCURACY_DELTA) -> bool:
    return result["top1_agreement"] >= min_agreement and accuracy_delta_ok(result, max_accuracy_delta)


def parity_error(result: dict, what: str, min_agreement: float = MIN_TOP1_AGREEMENT,
                 max_accuracy_delta: float = MAX_ACCURACY_DELTA) -> ParityError:
    """The one-line refusal for ``result``."""
    acc_delta = abs(result["accuracy_onnx"] - result["accuracy_torch"])
    return ParityError(
        f"refusing to export {what}: top-1 agreement with PyTorch {result['top1_agreement']:.2%} "
        f"(need >= {min_agreement:.1%}), accuracy {result['accuracy_onnx']:.2%} vs {result['accuracy_torch']:.2%} "
        f"(delta {acc_delta * 100:.2f} points, max {accuracy_delta_limit(result, max_accuracy_delta) * 100:.2f}) "
        f"on {result['images']} images; nothing was written")


def check_parity(result: dict, what: str, min_agreement: float = MIN_TOP1_AGREEMENT,
                 max_accuracy_delta: float = MAX_ACCURACY_DELTA) -> None:
    """Raise ParityError (one line) when ``result`` is below the thresholds."""
    if not parity_ok(result, min_agreement, max_accuracy_delta):
        raise parity_error(result, what, min_agreement, max_accuracy_delta)
