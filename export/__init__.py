"""ONNX export of switchable-precision models: QCDQ for ONNX Runtime, QONNX for FINN, fp32 as baseline.

``export_checkpoint`` (what ``qadtr export`` runs) and ``export_model`` write one checked model per
(bit-width, format) and a ``manifest.json``; ``build_deploy_model`` gives the BN-folded copy they export.
Needs the ``train`` extra (torch, brevitas, qonnx).
"""
from .deploy import build_deploy_model
from .pipeline import FORMATS, export_checkpoint, export_model, model_file_name

__all__ = ["FORMATS", "build_deploy_model", "export_checkpoint", "export_model", "model_file_name"]
