"""ONNX models under ONNX Runtime: validation, session options, a numpy predictor. Torch-free.

:func:`inspect_model` turns every way a user can hand over a wrong file (missing,
truncated, not ONNX, input not float [N,3,H,W]) into one :class:`QadtrError` line
before any session is built. :class:`OrtModel` is a predictor in the sense of
:mod:`qadtr.transfer`: float32 NCHW in [0, 1] -> logits.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from qadtr.errors import QadtrError
from qadtr.io import sha256_file

GRAPH_LEVELS = ("disable", "basic", "extended", "all")


@dataclass(frozen=True)
class OrtConfig:
    """How sessions are built. 0 threads means ORT's default (one per physical core)."""

    providers: tuple[str, ...] = ("CPUExecutionProvider",)
    intra_op_threads: int = 0
    inter_op_threads: int = 0
    graph_optimization: str = "all"

    def __post_init__(self):
        if self.graph_optimization not in GRAPH_LEVELS:
            raise QadtrError(f"unknown graph optimization level {self.graph_optimization!r}: "
                             f"choose from {', '.join(GRAPH_LEVELS)}")
        if self.intra_op_threads < 0 or self.inter_op_threads < 0:
            raise QadtrError("thread counts must be >= 0 (0 = ONNX Runtime's default)")

    def with_threads(self, intra_op_threads: int) -> OrtConfig:
        return OrtConfig(self.providers, intra_op_threads, self.inter_op_threads, self.graph_optimization)

    def session_options(self, optimized_model_path: str | None = None):
        import onnxruntime as ort

        levels = {"disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
                  "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
                  "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
                  "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL}
        so = ort.SessionOptions()
        so.graph_optimization_level = levels[self.graph_optimization]
        so.intra_op_num_threads = self.intra_op_threads
        so.inter_op_num_threads = self.inter_op_threads
        # Errors only: ORT warns on every optimized-model dump at level "all", which is noise for a CLI.
        so.log_severity_level = 3
        if optimized_model_path:
            so.optimized_model_filepath = str(optimized_model_path)
        return so

    def checked_providers(self) -> list[str]:
        import onnxruntime as ort

        available = ort.get_available_providers()
        missing = [p for p in self.providers if p not in available]
        if missing:
            raise QadtrError(f"execution provider {missing[0]} is not available here: {', '.join(available)}")
        return list(self.providers)

    def to_json(self) -> dict:
        return {**asdict(self), "providers": list(self.providers)}


@dataclass
class ModelInfo:
    """What the harness needs to know about one ONNX classifier, read before running it."""

    path: Path
    label: str
    input_name: str
    input_shape: list  # ints, or strings for symbolic dimensions
    output_name: str
    num_classes: int | None
    sha256: str
    size_bytes: int
    extra: dict = field(default_factory=dict)  # manifest facts, filled in by the caller

    @property
    def image_hw(self) -> tuple[int, int] | None:
        h, w = self.input_shape[2:]
        return (h, w) if isinstance(h, int) and isinstance(w, int) else None

    @property
    def fixed_batch(self) -> int | None:
        return self.input_shape[0] if isinstance(self.input_shape[0], int) else None

    def to_json(self) -> dict:
        return {"path": str(self.path), "sha256": self.sha256, "size_bytes": self.size_bytes,
                "input": {"name": self.input_name, "shape": self.input_shape},
                "output": {"name": self.output_name, "num_classes": self.num_classes}, **self.extra}


def model_label(path: str | Path) -> str:
    """``runs/x/resnet20_w4a4.qcdq.onnx`` -> ``resnet20_w4a4.qcdq``."""
    name = Path(path).name
    return name[:-5] if name.endswith(".onnx") else name


def _dims(value_info) -> list | None:
    t = value_info.type
    if not t.HasField("tensor_type") or not t.tensor_type.HasField("shape"):
        return None
    return [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in t.tensor_type.shape.dim]


def inspect_model(path: str | Path) -> ModelInfo:
    """Validate ``path`` as an image classifier ONNX model: one float input [N,3,H,W], logits [N,C]."""
    import onnx

    path = Path(path)
    if not path.is_file():
        raise QadtrError(f"model {path} not found")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as e:  # noqa: BLE001 - protobuf raises several types for a damaged file
        raise QadtrError(f"{path} is not a readable ONNX model ({type(e).__name__})") from None
    graph = model.graph
    if not graph.node or not graph.output:
        raise QadtrError(f"{path} is not a usable ONNX model (empty graph)")
    initializers = {i.name for i in graph.initializer}
    inputs = [i for i in graph.input if i.name not in initializers]
    if len(inputs) != 1:
        raise QadtrError(f"{path}: expected one image input [N,3,H,W], found {len(inputs)} inputs")
    dims = _dims(inputs[0])
    elem = inputs[0].type.tensor_type.elem_type
    if dims is None or len(dims) != 4 or dims[1] != 3 or elem != onnx.TensorProto.FLOAT:
        shown = "unknown" if dims is None else "[" + ",".join(map(str, dims)) + "]"
        raise QadtrError(f"{path}: model input {inputs[0].name!r} is {shown} "
                         f"{onnx.TensorProto.DataType.Name(elem).lower()}, expected float [N,3,H,W]")
    out_dims = _dims(graph.output[0]) or []
    num_classes = out_dims[1] if len(out_dims) == 2 and isinstance(out_dims[1], int) and out_dims[1] > 0 else None
    return ModelInfo(path=path, label=model_label(path), input_name=inputs[0].name, input_shape=dims,
                     output_name=graph.output[0].name, num_classes=num_classes, sha256=sha256_file(path),
                     size_bytes=path.stat().st_size)


def create_session(path: str | Path, config: OrtConfig, optimized_model_path: str | None = None):
    """An ``InferenceSession``; a model ORT cannot load becomes one QadtrError line."""
    import onnxruntime as ort

    providers = config.checked_providers()
    try:
        return ort.InferenceSession(str(path), config.session_options(optimized_model_path), providers=providers)
    except Exception as e:  # noqa: BLE001 - ORT raises its own exception types for bad graphs
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise QadtrError(f"ONNX Runtime cannot load {path}: {first[:300]}") from None


class OrtModel:
    """A predictor over one session: ``model(images float32 [N,3,H,W]) -> logits [N,C]``."""

    def __init__(self, info: ModelInfo, config: OrtConfig = OrtConfig()):
        self.info = info
        self.config = config
        start = time.perf_counter()
        self.session = create_session(info.path, config)
        self.session_seconds = time.perf_counter() - start

    def __call__(self, images: np.ndarray) -> np.ndarray:
        images = np.ascontiguousarray(images, dtype=np.float32)
        fixed = self.info.fixed_batch
        if fixed and len(images) != fixed:
            # A model exported with a fixed batch: feed it whole batches, zero-padding the last one.
            chunks = []
            for start in range(0, len(images), fixed):
                part = images[start:start + fixed]
                pad = np.zeros((fixed - len(part), *images.shape[1:]), np.float32)
                chunks.append(self._run(np.concatenate([part, pad]) if len(pad) else part)[:len(part)])
            return np.concatenate(chunks)
        return self._run(images)

    def _run(self, images: np.ndarray) -> np.ndarray:
        try:
            return self.session.run([self.info.output_name], {self.info.input_name: images})[0]
        except Exception as e:  # noqa: BLE001 - ORT's runtime errors carry no stable type
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise QadtrError(f"ONNX Runtime failed running {self.info.path}: {first[:300]}") from None
