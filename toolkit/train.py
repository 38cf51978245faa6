"""Training: float, QAT and the patch defenses (pbat, dwq, qadtr), with atomic per-epoch checkpoints
and exact resume. Each defense's per-batch step lives in :mod:`qadtr.defenses`."""
from __future__ import annotations

import math
import sys
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch
from torch import nn

from .checkpoint import checkpoint_policy, load_checkpoint, load_matching_state, save_checkpoint
from .data.arrays import load_dataset
from .data.loader import BatchLoader
from .defenses import DEFENSES, DefenseParams, build_defense
from .defenses.base import batch_stats_mode
from .errors import QadtrError
from .evaluate import accuracy_per_bits
from .io import sha256_file, versions, write_json
from .layers import QuantPolicy
from .models import create_model, list_models
from .precision import PRECISIONS, autocast, bf16_warning, memory_format
from .quant import FLOAT_BITS, project_weight_thresholds, refit_weight_thresholds, validate_bits
from .sam import SharpnessAwareStep

SCHEDULES = ("cosine", "onecycle")


# The bit set a defense trains when --bits is not given.
DEFAULT_BITS = {"float": [FLOAT_BITS], "qat": [4], "pbat": [FLOAT_BITS], "dwq": [32, 8, 4, 2], "qadtr": [32, 8, 4, 2]}


# How switching weight quantizers get their thresholds: learned with LSQ, or refit (qadtr.quant).
WEIGHT_THRESHOLDS = {"learned": project_weight_thresholds, "mse": refit_weight_thresholds}


@dataclass
class TrainConfig(DefenseParams):
    """Everything that decides a training run. Stored in every checkpoint.

    The defense hyperparameters (``DefenseParams``) come first in field order; float and qat ignore them.
    """

    arch: str = "resnet20"
    defense: str = "qat"
    bits: list | None = None  # None: the defense's default (DEFAULT_BITS)
    epochs: int = 10
    batch_size: int = 128
    lr: float | None = None  # None: 0.1 from scratch, 0.01 when fine-tuning from --init
    momentum: float = 0.9
    weight_decay: float = 5e-4
    schedule: str = "cosine"
    warmup_epochs: float = 0.0
    label_smoothing: float = 0.0
    crop_pad: int = 4  # random crop after zero padding by this many pixels; 0: flips only (no translation)
    trivial_augment: bool = False  # TrivialAugment Wide per training image before crop and flip (qadtr.data.loader)
    cutout: int = 0  # side of a zeroed square per training image (DeVries & Taylor 2017); 0: off
    mixup: float = 0.0  # float and qat: Beta(alpha, alpha) of mixup (qadtr.defenses.plain.mixup); 0: off
    sam_rho: float = 0.0  # float and qat: sharpness-aware minimization radius (qadtr.sam); 0: off
    swa_epochs: int = 0  # average the weights of the last N epochs, trained at constant swa_lr (qadtr.swa)
    swa_lr: float | None = None  # None: a tenth of the peak LR
    precision: str = "fp32"  # bf16: autocast and channels-last (qadtr.precision); weights stay fp32
    dataset: str = "cifar10"
    data_dir: str | None = None
    download: bool = False
    train_subset: int | None = None
    eval_subset: int | None = None
    init: str | None = None
    teacher: list[str] | None = None  # float and qat: distil from these checkpoints, one or an ensemble (qadtr.distill)
    distill_weight: float = 0.5  # share of the soft-target term; 1.0 ignores the labels
    distill_temperature: float = 1.0
    weight_thresholds: str = "learned"  # learned (LSQ) or mse: refit to the weights after every step
    seed: int = 0

    def resolved(self) -> TrainConfig:
        """Validate and fill derived defaults; raises QadtrError with one clear line."""
        if self.arch not in list_models():
            raise QadtrError(f"unknown arch {self.arch!r}; choose from {', '.join(list_models())}")
        if self.defense not in DEFENSES:
            raise QadtrError(f"unknown defense {self.defense!r}; choose from {', '.join(DEFENSES)}")
        if self.schedule not in SCHEDULES:
            raise QadtrError(f"unknown schedule {self.schedule!r}; choose from {', '.join(SCHEDULES)}")
        if self.precision not in PRECISIONS:
            raise QadtrError(f"unknown precision {self.precision!r}; choose from {', '.join(PRECISIONS)}")
        self.validate_params()
        try:
            bits = sorted({validate_bits(b) for b in (self.bits or DEFAULT_BITS[self.defense])}, reverse=True)
        except ValueError as e:
            raise QadtrError(str(e)) from None
        if self.defense in ("float", "pbat"):
            bits = [FLOAT_BITS]  # pbat trains at full precision; quantize afterwards (calibrate or qat --init)
        elif self.defense == "qat" and bits == [FLOAT_BITS]:
            raise QadtrError("--defense qat needs a quantized bit-width in 2..8 (e.g. --bits 4, or 32,8,4,2 "
                             "for a switchable model)")
        elif self.defense == "qadtr" and self.gir_lambda > 0 and bits == [FLOAT_BITS]:
            raise QadtrError("GIR compares two bit-widths: give --bits a quantized width, or --gir-lambda 0")
        if self.crop_pad < 0:
            raise QadtrError(f"--crop-pad must be 0 (no crop) or a positive padding in pixels, got {self.crop_pad}")
        if self.cutout < 0:
            raise QadtrError(f"--cutout must be 0 (off) or a positive side in pixels, got {self.cutout}")
        if not self.mixup >= 0:
            raise QadtrError(f"--mixup must be 0 (off) or a positive Beta alpha, got {self.mixup!r}")
        if not self.sam_rho >= 0:
            raise QadtrError(f"--sam-rho must be 0 (off) or a positive radius, got {self.sam_rho!r}")
        for flag, value in (("--mixup", self.mixup), ("--teacher", self.teacher), ("--sam-rho", self.sam_rho)):
            if value and self.defense not in ("float", "qat"):
                raise QadtrError(f"{flag} works with --defense float or qat, not {self.defense}")
        if not 0.0 <= self.distill_weight <= 1.0:
            raise QadtrError(f"--distill-weight must be in [0, 1], got {self.distill_weight!r}")
        if not self.distill_temperature > 0:
            raise QadtrError(f"--distill-temperature must be positive, got {self.distill_temperature!r}")
        if self.epochs < 1 or self.batch_size < 1:
            raise QadtrError("--epochs and --batch-size must be positive")
        if self.weight_thresholds not in WEIGHT_THRESHOLDS:
            raise QadtrError(f"--weight-thresholds must be one of {', '.join(WEIGHT_THRESHOLDS)}, "
                             f"got {self.weight_thresholds!r}")
        if not 0 <= self.swa_epochs <= self.epochs:
            raise QadtrError(f"--swa-epochs must be in 0..--epochs ({self.epochs}), got {self.swa_epochs}")
        if self.swa_lr is not None and not self.swa_lr > 0:
            raise QadtrError(f"--swa-lr must be positive, got {self.swa_lr!r}")
        lr = self.lr if self.lr is not None else (0.01 if self.init else 0.1)
        swa_lr = self.swa_lr if self.swa_lr is not None else lr / 10
        init = str(Path(self.init).resolve()) if self.init else None
        data_dir = str(Path(self.data_dir).resolve()) if self.data_dir else None
        teacher = [str(Path(t).resolve()) for t in _paths(self.teacher)] or None
        return TrainConfig(**{**asdict(self), "bits": bits, "lr": lr, "init": init, "data_dir": data_dir,
                              "teacher": teacher, "swa_lr": swa_lr})

    @property
    def model_bits(self) -> list[int]:
        return sorted(set(self.bits) | {FLOAT_BITS})

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        names = {f.name for f in fields(cls)}
        kept = {k: v for k, v in d.items() if k in names}
        if kept.get("teacher"):  # runs made before ensembles recorded one path, not a list
            kept["teacher"] = _paths(kept["teacher"])
        return cls(**kept)


def _paths(value) -> list[str]:
    """A path or a sequence of paths as a list (empty for None)."""
    if not value:
        return []
    return [str(value)] if isinstance(value, (str, Path)) else [str(v) for v in value]


def lr_multiplier(step: int, total: int, warmup: int, schedule: str) -> float:
    """Per-iteration LR factor. A pure function of the step, so resume needs no scheduler state."""
    if schedule == "onecycle":
        peak = max(1, int(0.3 * total))
        if step < peak:
            return 0.1 + 0.9 * step / peak
        return 0.5 * (1 + math.cos(math.pi * (step - peak) / max(1, total - peak)))
    if step < warmup:
        return (step + 1) / warmup
    return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))


def learning_rate(cfg: TrainConfig, step: int, steps_per_epoch: int) -> float:
    """The LR of a resolved config at ``step``: its schedule, then constant ``swa_lr`` in the SWA epochs.

    With SWA the schedule anneals to ``swa_lr`` instead of zero, so the averaging phase starts where the
    schedule ends (the SWA paper's recipe).
    """
    swa_start = (cfg.epochs - cfg.swa_epochs) * steps_per_epoch
    if step >= swa_start:
        return cfg.swa_lr
    floor = cfg.swa_lr if cfg.swa_epochs else 0.0
    warmup = int(cfg.warmup_epochs * steps_per_epoch)
    return floor + (cfg.lr - floor) * lr_multiplier(step, swa_start, warmup, cfg.schedule)


def param_groups(model: nn.Module, weight_decay: float):
    """Weight decay on conv/linear weights only; never on BN, biases or quantizer thresholds."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        (decay if name.endswith(".weight") and p.dim() > 1 else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def _config_diff(a: TrainConfig, b: TrainConfig) -> list[str]:
    return [k for k, v in asdict(a).items() if asdict(b).get(k) != v]


def train(cfg: TrainConfig, out_dir, resume: bool = False, quiet: bool = False) -> dict:
    """Train into ``out_dir`` (checkpoint.pt, metrics.json). Returns the run record."""
    from tqdm import tqdm

    cfg = cfg.resolved()
    out = Path(out_dir)
    ckpt_path = out / "checkpoint.pt"
    if ckpt_path.exists() and not resume:
        raise QadtrError(f"{out} already holds a run: pass --resume to continue it, or choose another --out")
    if resume and not ckpt_path.exists():
        raise QadtrError(f"nothing to resume: {ckpt_path} does not exist")

    torch.manual_seed(cfg.seed)

    def split(name, n):
        return load_dataset(cfg.dataset, name, cfg.data_dir, cfg.download, seed=cfg.seed).subset(n, cfg.seed)

    train_data, test_data = split("train", cfg.train_subset), split("test", cfg.eval_subset)
    image_side = min(train_data.x.shape[1:3])
    if cfg.defense in ("pbat", "qadtr") and cfg.patch_size_max > image_side:
        raise QadtrError(f"--patch-size-max {cfg.patch_size_max} does not fit the {image_side}-pixel images")
    num_classes = len(train_data.classes)
    payload = load_checkpoint(ckpt_path) if resume else None
    # A resumed run keeps the quantizer placement it started with (runs older than stream_bits included).
    policy = checkpoint_policy(payload) if payload is not None else QuantPolicy()
    model = create_model(cfg.arch, bits=cfg.model_bits, num_classes=num_classes, policy=policy)
    inputs = {"train_data_sha256": train_data.sha256(), "test_data_sha256": test_data.sha256()}
    if cfg.init:
        init = load_checkpoint(cfg.init)
        if init["config"]["arch"] != cfg.arch:
            raise QadtrError(f"--init checkpoint is for arch {init['config']['arch']!r}, not {cfg.arch!r}")
        load_matching_state(model, init["model"])
        inputs["init_sha256"] = sha256_file(cfg.init)

    start_epoch, history = 0, []
    if payload is not None:
        diff = _config_diff(cfg, TrainConfig.from_dict(payload["config"]))
        if diff:
            raise QadtrError(f"cannot resume {out}: config differs from the run's in {', '.join(diff)}")
        model.load_state_dict(payload["model"])
        start_epoch, history = payload["epoch"], list(payload["metrics"])
    # Built after every load_state_dict: loading replaces the threshold Parameter objects,
    # and an optimizer made before would keep stepping the orphaned ones.
    optimizer = torch.optim.SGD(param_groups(model, cfg.weight_decay), lr=cfg.lr, momentum=cfg.momentum,
                                nesterov=True)
    criterion = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
    distill, teacher_bits = None, None
    if cfg.teacher:
        from .distill import Distillation, load_teacher

        loaded = [load_teacher(path, num_classes) for path in cfg.teacher]
        teacher_bits = [b for _, b in loaded]
        inputs["teacher_sha256"] = [sha256_file(path) for path in cfg.teacher]
        distill = Distillation([memory_format(t, cfg.precision) for t, _ in loaded], cfg.distill_weight,
                               cfg.distill_temperature)
    defense = build_defense(cfg, model, criterion, distill=distill)
    if payload is not None:
        optimizer.load_state_dict(payload["optimizer"])
        defense.load_state_dict(payload.get("defense_state", {}))

    augmentation = {"augment": True, "cutout": cfg.cutout, "crop_pad": cfg.crop_pad,
                    "trivial_augment": cfg.trivial_augment}
    loader = BatchLoader(train_data, cfg.batch_size, shuffle=True, seed=cfg.seed, drop_last=True, **augmentation)
    test_loader = BatchLoader(test_data, 256)
    steps = len(loader)
    if steps == 0:
        raise QadtrError(f"--batch-size {cfg.batch_size} is larger than the training set ({len(train_data)})")
    swa, swa_bn_batches = None, None
    if cfg.swa_epochs:
        from .swa import WeightAverage, bn_batches

        swa = WeightAverage()
        if payload is not None and "swa" in payload:
            swa.load_state_dict(payload["swa"])
        # BN statistics from the training augmentation: the weights were fitted to them (results 1l).
        swa_bn_batches = bn_batches(BatchLoader(train_data, cfg.batch_size, shuffle=True, seed=cfg.seed + 1,
                                                **augmentation), cfg.batch_size)
    record = {"config": asdict(cfg), "num_classes": num_classes, "classes": list(train_data.classes),
              "versions": versions(), "inputs": inputs, "seed": cfg.seed, "policy": model.policy.as_dict()}
    if defense.describe():
        record["defense"] = defense.describe()
    if teacher_bits is not None:
        record["teacher_bits"] = teacher_bits

    if note := bf16_warning(cfg.precision):
        print(note, file=sys.stderr)
    for note in defense.warnings():
        print(note, file=sys.stderr)
    model = memory_format(model, cfg.precision)
    fit_thresholds = WEIGHT_THRESHOLDS[cfg.weight_thresholds]
    sam = SharpnessAwareStep(model.parameters(), cfg.sam_rho) if cfg.sam_rho > 0 else None
    for epoch in range(start_epoch, cfg.epochs):
        loader.set_epoch(epoch)
        torch.manual_seed(cfg.seed * 1000 + epoch)
        defense.start_epoch(epoch)
        model.train()
        t0, seen, loss_sum, correct = time.time(), 0, 0.0, 0
        visits = {str(b): 0 for b in cfg.bits}
        clamped = 0  # learned weight thresholds pulled back to max |w| (qadtr.quant.project_weight_thresholds)
        bar = tqdm(loader, desc=f"epoch {epoch + 1}/{cfg.epochs}", disable=quiet, file=sys.stderr,
                   mininterval=0.5 if sys.stderr.isatty() else 30, leave=False)
        for i, (x, y) in enumerate(bar):
            step = epoch * steps + i
            for g in optimizer.param_groups:
                g["lr"] = learning_rate(cfg, step, steps)
            with autocast(cfg.precision):
                loss, logits, bits = defense.step(memory_format(x, cfg.precision), y, step)
            visits[str(bits)] += 1
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if sam is not None:
                sam.ascend()
                # The second pass normalises by its own batch statistics but must not count as another
                # batch in the running ones.
                with autocast(cfg.precision), batch_stats_mode(model):
                    second = defense.replay()
                optimizer.zero_grad(set_to_none=True)
                second.backward()
                sam.descend()
            defense.before_optimizer_step(step)
            optimizer.step()
            fitted = fit_thresholds(model)
            clamped += fitted if cfg.weight_thresholds == "learned" else 0
            seen += len(y)
            loss_sum += loss.item() * len(y)
            correct += (logits.argmax(1) == y).sum().item()
            bar.set_postfix(loss=f"{loss_sum / seen:.3f}", acc=f"{correct / seen:.3f}",
                            img_s=f"{seen / (time.time() - t0):.0f}", refresh=False)
        train_time = time.time() - t0
        test_acc = accuracy_per_bits(model, test_loader, cfg.bits)
        history.append({
            "epoch": epoch + 1, "train_loss": loss_sum / seen, "train_acc": correct / seen,
            "test_acc": {str(k): v for k, v in test_acc.items()}, "lr": optimizer.param_groups[0]["lr"],
            "images_per_s": seen / train_time, "train_seconds": train_time,
            "epoch_seconds": time.time() - t0, "bits_visits": visits, "thresholds_clamped": clamped,
            **({"defense_stats": stats} if (stats := defense.epoch_stats()) else {}),
        })
        saved = model
        if swa is not None and epoch >= cfg.epochs - cfg.swa_epochs:
            swa.update(model)
            averaged = swa.averaged_model(model, swa_bn_batches, cfg.bits, cfg.precision, fit_thresholds)
            swa_acc = accuracy_per_bits(averaged, test_loader, cfg.bits)
            history[-1].update({"swa_test_acc": {str(k): v for k, v in swa_acc.items()}, "swa_models": swa.count,
                                "epoch_seconds": time.time() - t0})
            if epoch + 1 == cfg.epochs:
                saved = averaged  # a finished SWA run ships the average; until then the live weights resume
        save_checkpoint(ckpt_path, {
            "config": {**asdict(cfg), "model_bits": cfg.model_bits, "num_classes": num_classes,
                       "policy": model.policy.as_dict()},
            "trained_bits": cfg.bits, "classes": list(train_data.classes), "epoch": epoch + 1,
            "model": saved.state_dict(), "optimizer": optimizer.state_dict(), "metrics": history,
            "versions": versions(), **({"defense_state": state} if (state := defense.state_dict()) else {}),
            **({"swa": swa.state_dict()} if swa is not None and swa.count else {}),
        })
        write_json(out / "metrics.json", {**record, "epochs": history})
        if not quiet:
            accs = "  ".join(f"{b}-bit {a:.2%}" for b, a in test_acc.items())
            counts = " ".join(f"{b}:{n}" for b, n in visits.items())
            dbwt = f"  batches per bit-width {counts}" if len(visits) > 1 else ""
            swa_accs = ("  SWA " + "  ".join(f"{b}-bit {float(a):.2%}" for b, a in history[-1]["swa_test_acc"].items())
                        if "swa_test_acc" in history[-1] else "")
            print(f"epoch {epoch + 1}/{cfg.epochs}  loss {loss_sum / seen:.3f}  test {accs}{swa_accs}  "
                  f"{seen / train_time:.0f} img/s{dbwt}", file=sys.stderr)
    return {**record, "epochs": history, "checkpoint": str(ckpt_path)}
