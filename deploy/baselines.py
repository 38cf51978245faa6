"""Baselines the bench builds itself: the fp32 ONNX export, and ORT's own ``quantize_static`` int8.

The int8 baseline is what a user would get from ONNX Runtime's tooling alone: QDQ
format, per-channel int8 weights, uint8 activations (the fast U8S8 kernels on x86),
MinMax-calibrated on real images. It is built with ``onnxruntime.quantization``,
which needs no torch.
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
from qadtr.errors import QadtrError
from qadtr.io import atomic_path

from . import graph, manifest


def find_fp32(model_paths, fp32: str | Path | None = None) -> tuple[Path | None, str]:
    """The fp32 model and how it was found: ``--fp32``, the manifest, or an unquantized model among the inputs."""
    import onnx

    if fp32:
        path = Path(fp32)
        if not path.is_file():
            raise QadtrError(f"fp32 model {path} not found")
        return path, "--fp32"
    found = manifest.find_fp32_export(model_paths)
    if found:
        return found, "manifest.json (format fp32)"
    for p in model_paths:
        try:
            if not graph.is_quantized(onnx.load(str(p), load_external_data=False)):
                return Path(p), "unquantized model among the inputs"
        except Exception:  # noqa: BLE001 - validated (with a clear error) elsewhere
            continue
    return None, "none found: pass --fp32 PATH or keep the exporter's manifest.json beside the models"


class _ImageReader:
    """``CalibrationDataReader`` protocol: one ``{input: batch}`` dict per call, then None."""

    def __init__(self, input_name: str, images: np.ndarray, batch_size: int = 32):
        self._batches = iter([{input_name: images[i:i + batch_size]} for i in range(0, len(images), batch_size)])

    def get_next(self):
        return next(self._batches, None)

    def rewind(self):  # part of the protocol in newer ORT versions; calibration reads once
        pass


def build_ort_int8(fp32_path: str | Path, input_name: str, images: np.ndarray, out_path: str | Path) -> dict:
    """Write ORT ``quantize_static`` QDQ int8 of ``fp32_path`` to ``out_path``; returns its recipe."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    recipe = {"tool": "onnxruntime.quantization.quantize_static", "quant_format": "QDQ", "per_channel": True,
              "activation_type": "QUInt8", "weight_type": "QInt8", "calibrate_method": "MinMax",
              "calibration_images": int(len(images)), "source": str(fp32_path)}
    # quantize_static advises pre-processing through the root logger; the recipe above is the record.
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        with atomic_path(out_path) as tmp:
            quantize_static(str(fp32_path), str(tmp), _ImageReader(input_name, images),
                            quant_format=QuantFormat.QDQ, per_channel=True, activation_type=QuantType.QUInt8,
                            weight_type=QuantType.QInt8, calibrate_method=CalibrationMethod.MinMax)
    except QadtrError:
        raise
    except Exception as e:  # noqa: BLE001 - the quantizer fails in many ways on unusual graphs
        raise QadtrError(f"ORT quantize_static could not quantize {fp32_path}: {str(e).splitlines()[0][:200]}") \
            from None
    finally:
        root.setLevel(level)
    return recipe
