"""Pipeline settings: one dataclass, read from a TOML file and CLI options, validated with one-line errors.

A key is written flat (``attack_steps = 150``) or inside its table (``[attack]`` then ``steps = 150``);
its CLI option is the flat name with dashes (``--attack-steps 150``), and CLI options override the file.
The ``[train]`` table holds :class:`qadtr.train.TrainConfig` fields (``--train KEY=VALUE`` on the CLI).
Relative paths in a file are relative to the file, so a config means the same from any working directory.
Torch-free: the CLI builds its options from :data:`FIELDS` at import time.
"""
from __future__ import annotations

import difflib
import sys
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

if sys.version_info >= (3, 11):
    import tomllib
else:  # the same parser, from PyPI (a dependency on 3.10 only)
    import tomli as tomllib

from ..cli_util import DATASET_CHOICES, FLOAT_BITS, parse_bits
from ..errors import QadtrError
from .gates import parse_gate

TABLES = ("attack", "export", "check", "bench")  # [table] key -> table_key
FORMATS = ("qcdq", "qonnx", "fp32")  # qadtr.export.pipeline.FORMATS (importing it would import torch)
CONV_KERNELS = ("auto", "qlinearconv", "convinteger")
NONE_WORDS = ("none", "all", "")
# The pipeline sets these once for every stage; a [train] copy could silently disagree with them.
TRAIN_KEYS_SET_BY_PIPELINE = ("dataset", "data_dir", "seed", "download")


# ---------------------------------------------------------------- value parsers: (value, where) -> value

def _none(value) -> bool:
    return value is None or (isinstance(value, str) and value.strip().lower() in NONE_WORDS)


def _int(minimum: int, optional: bool = False):
    def parse(value, where):
        if optional and _none(value):
            return None
        try:
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError
            number = int(str(value).strip()) if isinstance(value, str) else int(value)
        except (TypeError, ValueError):
            raise QadtrError(f"{where} must be an integer, got {value!r}") from None
        if number < minimum:
            raise QadtrError(f"{where} must be at least {minimum}, got {number}")
        return number
    return parse


def _float(minimum: float):
    def parse(value, where):
        try:
            if isinstance(value, bool):
                raise ValueError
            number = float(value)
        except (TypeError, ValueError):
            raise QadtrError(f"{where} must be a number, got {value!r}") from None
        if not number > minimum:
            raise QadtrError(f"{where} must be greater than {minimum:g}, got {number:g}")
        return number
    return parse


def _choice(choices):
    def parse(value, where):
        if str(value) not in choices:
            raise QadtrError(f"{where} must be one of {', '.join(choices)}, got {value!r}")
        return str(value)
    return parse


def _text(optional: bool = True):
    def parse(value, where):
        if optional and _none(value):
            return None
        if not isinstance(value, str):
            raise QadtrError(f"{where} must be a string, got {value!r}")
        return value
    return parse


def _flag(value, where):
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("true", "yes", "1", "on"):
        return True
    if text in ("false", "no", "0", "off"):
        return False
    raise QadtrError(f"{where} must be true or false, got {value!r}")


def _as_text_list(value) -> str:
    return ",".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value)


def _bits(allow_float: bool, optional: bool = True):
    def parse(value, where):
        if optional and _none(value):
            return None
        try:
            return parse_bits(_as_text_list(value), allow_float=allow_float)
        except QadtrError as e:
            raise QadtrError(f"{where}: {e}") from None
    return parse


def _int_list(minimum: int):
    def parse(value, where):
        items = [t for t in _as_text_list(value).replace(" ", "").split(",") if t]
        if not items:
            raise QadtrError(f"{where} must list at least one integer")
        return list(dict.fromkeys(_int(minimum)(t, where) for t in items))
    return parse


def _unseen(value, where):
    """'8:4,10:2' or [[8, 4], [10, 2]] -> [[8, 4], [10, 2]]; 'none' or [] -> []."""
    if _none(value) or value == []:
        return []
    pairs = value if isinstance(value, list) else [p.split(":") for p in str(value).replace(" ", "").split(",") if p]
    out = []
    for pair in pairs:
        if not isinstance(pair, (list, tuple)) or len(pair) != 2:
            raise QadtrError(f"{where} must be SIZE:SOURCE_BITS pairs like 8:4,10:2 (or 'none'), got {value!r}")
        out.append([_int(1)(pair[0], where), _bits(True, optional=False)(pair[1], where)[0]])
    return out


def _formats(value, where):
    names = list(dict.fromkeys(t.strip().lower() for t in _as_text_list(value).split(",") if t.strip()))
    if not names:
        raise QadtrError(f"{where} must name at least one export format")
    for name in names:
        if name not in FORMATS:
            raise QadtrError(f"{where}: unknown export format {name!r}; choose from {', '.join(FORMATS)}")
    if "qcdq" not in names:
        raise QadtrError(f"{where} must include qcdq: the check and bench stages run the qcdq models")
    return names


def _gates(value, where):
    texts = [value] if isinstance(value, str) else list(value or [])
    for text in texts:
        try:
            parse_gate(str(text))
        except QadtrError as e:
            raise QadtrError(f"{where}: {e}") from None
    return [str(t) for t in texts]


def _train(value, where):
    if not isinstance(value, dict):
        raise QadtrError(f"{where} must be a table of training settings, got {value!r}")
    return dict(value)


# ---------------------------------------------------------------- the settings

def _f(default, parse, help_text: str, path: bool = False):
    make = (lambda: list(default)) if isinstance(default, list) else None
    meta = {"parse": parse, "help": help_text, "path": path}
    return field(default_factory=make, metadata=meta) if make else field(default=default, metadata=meta)


@dataclass
class PipelineConfig:
    """Every setting of ``qadtr pipeline``; the field name is the flat key and (with dashes) the CLI option."""

    out: str | None = _f(None, _text(), "Run folder: one subfolder per stage, pipeline.json, report/.", path=True)
    checkpoint: str | None = _f(None, _text(), "Load this checkpoint instead of training.", path=True)
    pretrained: str | None = _f(None, _text(), "Load this embedded checkpoint (see qadtr.pretrained) instead "
                                               "of training.")
    dataset: str = _f("cifar10", _choice(DATASET_CHOICES), "Data layout (see README).")
    data_dir: str | None = _f(None, _text(), "Data folder; defaults to $QADTR_DATA_DIR.", path=True)
    seed: int = _f(0, _int(0), "Seed for subsets, crafting, placements and bench inputs.")
    device: str = _f("cpu", _text(optional=False), "torch device for training and crafting, e.g. cuda.")
    bits: list | None = _f(None, _bits(True), "Bit-widths scored in PyTorch (default: the model's set).")
    n: int = _f(2000, _int(1), "Seeded subset of N test images, scored in PyTorch and under ONNX Runtime.")
    attack_steps: int = _f(500, _int(1), "Crafting steps per patch.")
    attack_batch_size: int = _f(128, _int(1), "Crafting batch size.")
    attack_lr: float = _f(0.05, _float(0.0), "Crafting learning rate (Adam).")
    attack_train_n: int | None = _f(None, _int(1, optional=True), "Craft on a seeded subset of N training images "
                                                                   "(default: all).")
    attack_seen_size: int = _f(6, _int(1), "Side of the seen patch (pixels).")
    attack_seen_source: int = _f(FLOAT_BITS, _int(2), "Bit-width the seen patch is crafted at.")
    attack_unseen: list = _f([[8, 4], [10, 2]], _unseen, "Unseen patches as SIZE:SOURCE_BITS pairs, or 'none'.")
    attack_adaptive_size: int = _f(6, _int(1), "Side of the adaptive A-QAPA patch (pixels).")
    attack_adaptive_bits: list | None = _f(None, _bits(True), "Bit-widths A-QAPA crafts over (default: the "
                                                              "model's set).")
    export_bits: list | None = _f(None, _bits(False), "Bit-widths to export (default: --bits below 32).")
    export_act_bits: int | None = _f(None, _int(2, optional=True), "Activation bit-width of every export "
                                                                   "(default: as the weights).")
    export_formats: list = _f(["qcdq"], _formats, "Export formats: qcdq (required), qonnx, fp32.")
    export_n: int | None = _f(None, _int(1, optional=True), "Parity-check images of the export (default: --n).")
    export_conv_kernel: str = _f("auto", _choice(CONV_KERNELS), "qcdq conv kernel (see qadtr export).")
    check_batch_size: int = _f(256, _int(1), "ONNX Runtime batch size of the check.")
    check_threads: int = _f(0, _int(0), "ORT intra-op threads of the check (0 = ORT default).")
    bench_batches: list = _f([1, 64], _int_list(1), "Bench batch sizes.")
    bench_threads: list = _f([1], _int_list(0), "Bench ORT intra-op thread counts.")
    bench_warmup: int = _f(10, _int(0), "Untimed bench runs per measurement.")
    bench_iters: int = _f(50, _int(1), "Timed bench runs per measurement.")
    bench_baselines: bool = _f(False, _flag, "Also bench the fp32 export and ORT's int8 (needs fp32 in "
                                             "export formats).")
    bench_calib_n: int = _f(256, _int(1), "Training images that calibrate the ORT int8 baseline.")
    fail_on: list = _f([], _gates, "Gates such as 'asr>0.4', 'acc_drop>0.02', 'latency_ms>5' (repeatable).")
    train: dict = field(default_factory=dict, metadata={"parse": _train, "help": "TrainConfig fields (a [train] "
                                                        "table; KEY=VALUE on the CLI).", "path": False})

    # ------------------------------------------------------------ derived values

    @property
    def loads(self) -> bool:
        """True when the model is loaded (checkpoint or pretrained), False when it is trained."""
        return bool(self.checkpoint or self.pretrained)

    def plan(self, model_bits) -> dict:
        """:func:`qadtr.attacks.protocol.paper_plan` options."""
        return {"seen_size": self.attack_seen_size, "seen_source": self.attack_seen_source,
                "unseen": [tuple(p) for p in self.attack_unseen], "adaptive_size": self.attack_adaptive_size,
                "adaptive_bits": self.attack_adaptive_bits or sorted(model_bits, reverse=True)}

    def resolve_bits(self, model_bits) -> tuple[list[int], list[int]]:
        """``(torch-side bits, export bits)`` for a model whose set is ``model_bits``; one line if one is missing."""
        model_bits = sorted(int(b) for b in model_bits)
        bits = self.bits or sorted(model_bits, reverse=True)
        exported = self.export_bits or [b for b in bits if b != FLOAT_BITS]
        for name, wanted in (("bits", bits), ("export_bits", exported), ("attack_adaptive_bits",
                                                                         self.attack_adaptive_bits or [])):
            missing = [b for b in wanted if b not in model_bits]
            if missing:
                raise QadtrError(f"{name}: bit-width {missing[0]} is not in the model's set {model_bits}")
        if not exported:
            raise QadtrError(f"nothing to export: the model's set {model_bits} has no bit-width below 32 "
                             "(calibrate it first: qadtr calibrate)")
        if self.export_act_bits is not None and self.export_act_bits not in model_bits:
            raise QadtrError(f"export_act_bits: bit-width {self.export_act_bits} is not in the model's set "
                             f"{model_bits}")
        return bits, exported

    def to_dict(self) -> dict:
        return asdict(self)

    # ------------------------------------------------------------ checks across fields

    def validate(self) -> PipelineConfig:
        """Checks that involve more than one value, or the file system; returns self."""
        if not self.out:
            raise QadtrError("no run folder: pass --out DIR or set out = \"DIR\" in the config file")
        if Path(self.out).exists() and not Path(self.out).is_dir():
            raise QadtrError(f"out: {self.out} is a file, not a folder")
        if self.checkpoint and self.pretrained:
            raise QadtrError("give checkpoint or pretrained, not both")
        if self.loads and self.train:
            raise QadtrError("[train] settings given, but the model is loaded (checkpoint or pretrained): "
                             "drop one of them")
        if self.checkpoint and not Path(self.checkpoint).is_file():
            raise QadtrError(f"checkpoint {self.checkpoint} not found")
        if self.pretrained:
            from ..pretrained import weights_path

            weights_path(self.pretrained)  # one line naming the shipped ones if it is not shipped
        if self.export_act_bits is not None and self.export_act_bits > 8:
            raise QadtrError(f"export_act_bits must be in 2..8, got {self.export_act_bits}")
        if self.bench_baselines and "fp32" not in self.export_formats:
            raise QadtrError("bench_baselines needs fp32 in export_formats: the ORT int8 baseline is built from "
                             "the fp32 export")
        if not self.loads:
            self.train_config()  # the [train] values fail here, before any work
        return self

    def train_config(self):
        """The :class:`qadtr.train.TrainConfig` this pipeline trains with (imports torch)."""
        from ..train import TrainConfig

        known = {f.name for f in fields(TrainConfig)} - set(TRAIN_KEYS_SET_BY_PIPELINE)
        for key in self.train:
            if key in TRAIN_KEYS_SET_BY_PIPELINE:
                raise QadtrError(f"train.{key}: set {key} at the top level; the pipeline uses one for every stage")
            if key not in known:
                raise QadtrError(f"unknown training setting train.{key}{_did_you_mean(key, known)}")
        values = dict(self.train)
        if isinstance(values.get("bits"), (str, int)):
            values["bits"] = parse_bits(str(values["bits"]))
        try:
            cfg = TrainConfig(**values, dataset=self.dataset, data_dir=self.data_dir, seed=self.seed)
            return cfg.resolved()
        except TypeError as e:
            raise QadtrError(f"[train]: {e}") from None


FIELDS = {f.name: f for f in fields(PipelineConfig)}


def _did_you_mean(name: str, known) -> str:
    close = difflib.get_close_matches(name, sorted(known), n=1)
    return f" (did you mean {close[0]}?)" if close else ""


def cli_name(name: str) -> str:
    return "--" + name.replace("_", "-")


def _file_key(name: str) -> str:
    table, _, key = name.partition("_")
    return f"{table}.{key}" if table in TABLES and key else name


def read_toml(path) -> dict:
    """The file's settings as flat names -> values, with relative paths resolved against the file's folder."""
    path = Path(path)
    if not path.is_file():
        raise QadtrError(f"config file {path} not found")
    try:
        data = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as e:
        raise QadtrError(f"cannot parse {path}: {e}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise QadtrError(f"cannot read {path}: {e}") from None
    flat = {}
    for key, value in data.items():
        if key in TABLES:
            if not isinstance(value, dict):
                raise QadtrError(f"{path.name}: {key} must be a table ([{key}])")
            flat.update({f"{key}_{k}": v for k, v in value.items()})
        else:
            flat[key] = value
    for name in flat:
        if name not in FIELDS:
            raise QadtrError(f"unknown config key {_file_key(name)} in {path}"
                             f"{_did_you_mean(_file_key(name), map(_file_key, FIELDS))}")
    for name, value in flat.items():
        if FIELDS[name].metadata["path"] and isinstance(value, str) and value:
            flat[name] = str(path.parent / Path(value).expanduser())
    if isinstance(flat.get("train"), dict) and isinstance(flat["train"].get("init"), str):
        flat["train"] = {**flat["train"], "init": str(path.parent / Path(flat["train"]["init"]).expanduser())}
    return flat


def parse_train_overrides(items) -> dict:
    """``["epochs=2", "defense=float"]`` -> ``{"epochs": 2, "defense": "float"}`` (values read as TOML)."""
    out = {}
    for item in items:
        key, sep, value = str(item).partition("=")
        if not sep or not key.strip():
            raise QadtrError(f"--train takes KEY=VALUE, got {item!r}")
        try:
            out[key.strip()] = tomllib.loads(f"v = {value}")["v"]
        except tomllib.TOMLDecodeError:
            out[key.strip()] = value  # a bare word such as defense=float
    return out


def load_config(path=None, cli: dict | None = None, base: dict | None = None) -> PipelineConfig:
    """Defaults, then ``base`` (a built-in config), then the file at ``path``, then ``cli`` (flat name -> raw
    value, None meaning 'not given'); every value parsed and checked. Raises QadtrError with one line."""
    raw, where = {}, {}
    for name, value in (base or {}).items():
        raw[name], where[name] = value, name
    if path is not None:
        for name, value in read_toml(path).items():
            raw[name], where[name] = value, f"{_file_key(name)} in {Path(path).name}"
    for name, value in (cli or {}).items():
        if name not in FIELDS:
            raise QadtrError(f"unknown setting {name}")
        if value is None or value == () or value == {}:
            continue
        if name == "train":
            raw[name] = {**raw.get(name, {}), **value}  # --train KEY=VALUE adds to the [train] table
        else:
            raw[name] = value
        where[name] = cli_name(name)
    parsed = {name: FIELDS[name].metadata["parse"](value, where[name]) for name, value in raw.items()}
    return PipelineConfig(**parsed).validate()
