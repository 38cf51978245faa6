"""The ``qadtr`` command line: thin wrappers over importable functions.

Every command prints a table (or JSON with ``--json``) and can write its JSON
result; bad input exits with code 2 and one line on stderr. Torch is imported
inside the commands that need it, so the device-side commands run without it.
"""
from __future__ import annotations

import sys

import click

from . import __version__
from .cli_util import CONTEXT, data_dir_option, dataset_option, emit, format_table, json_options, parse_bits
from .cli_util import seed_option as _seed_option
from .defenses import DEFENSES, defense_options
from .errors import QadtrError

seed_option = _seed_option()


@click.group(context_settings=CONTEXT)
@click.version_option(__version__, prog_name="qadtr")
def cli():
    """qadtr: harden quantized classifiers against adversarial patches, export integer ONNX, check on device."""


@cli.command("models")
@json_options
def models_cmd(as_json):
    """List the registered architectures."""
    from .models import list_models

    names = list_models()
    emit({"models": names}, format_table(["model"], [[n] for n in names]), None, as_json)


@cli.command("train")
@click.option("--arch", default="resnet20", help="Registered architecture (see `qadtr models`).")
@click.option("--defense", default="qat", type=click.Choice(list(DEFENSES)),
              help="float: full precision; qat: fixed-bit QAT; pbat: float patch adversarial training (Rao et al. "
                   "2020); dwq: random-precision adversarial training (Fu et al. 2021); qadtr: A-QAPA + DBWT + GIR.")
@click.option("--bits", default=None, help="Bit-widths trained: one width for qat (default 4), the DBWT set for dwq "
                                           "and qadtr (default 32,8,4,2); float and pbat train at 32.")
@click.option("--epochs", default=10, type=int)
@click.option("--batch-size", default=128, type=int)
@click.option("--lr", default=None, type=float, help="Peak LR. Default: 0.1 from scratch, 0.01 with --init.")
@click.option("--momentum", default=0.9, type=float)
@click.option("--weight-decay", default=5e-4, type=float)
@click.option("--schedule", default="cosine", type=click.Choice(["cosine", "onecycle"]))
@click.option("--warmup-epochs", default=0.0, type=float)
@click.option("--label-smoothing", default=0.0, type=float)
@click.option("--crop-pad", default=4, type=int,
              help="Random crop after zero padding by this many pixels; 0: flips only. Flips and no shift keep "
                   "JPEG's 8x8 block grid where the test images have it (results 1p).")
@click.option("--trivial-augment/--no-trivial-augment", default=False, show_default=True,
              help="TrivialAugment Wide (Müller & Hutter 2021): one random colour or geometric op at a random "
                   "strength per training image, before the crop and flip.")
@click.option("--cutout", default=0, type=int, help="Zero a random square of this side in each training image "
                                                   "(DeVries & Taylor 2017; 16 on CIFAR-10); 0: off.")
@click.option("--mixup", default=0.0, type=float,
              help="float, qat: train on mixup batches (Zhang et al. 2018) with this Beta alpha (e.g. 0.2 to 1); "
                   "with --teacher the teacher sees the same mixed images. 0: off.")
@click.option("--sam-rho", default=0.0, type=float,
              help="float, qat: sharpness-aware minimization (Foret et al. 2021) with this L2 radius (e.g. 0.05); "
                   "each step costs two forward-backward passes. 0: off.")
@click.option("--swa-epochs", default=0, type=int,
              help="Stochastic weight averaging (Izmailov et al. 2018): average the weights of the last N epochs, "
                   "trained at constant --swa-lr, and re-estimate BN; a finished run's checkpoint holds the "
                   "average. 0: off.")
@click.option("--swa-lr", default=None, type=float, help="Constant LR of the SWA epochs. Default: a tenth of --lr.")
@click.option("--precision", default="fp32", type=click.Choice(["fp32", "bf16"]),
              help="bf16: train under bfloat16 autocast with channels-last tensors (about 2x faster on CPUs with "
                   "AMX or AVX512-BF16; slower than fp32 without them, and train then says so); the weights, "
                   "the optimizer and evaluation stay fp32.")
@click.option("--init", type=click.Path(dir_okay=False), default=None, help="Start from this checkpoint.")
@click.option("--teacher", type=click.Path(dir_okay=False), multiple=True,
              help="float, qat: distil from this checkpoint (Hinton et al. 2015), run at its float path; repeat "
                   "the option to distil from the ensemble of several (the mean of their softened outputs).")
@click.option("--distill-weight", default=0.5, type=float,
              help="With --teacher: share of the soft-target loss; 1.0 ignores the labels.")
@click.option("--distill-temperature", default=1.0, type=float, help="With --teacher: softmax temperature T.")
@click.option("--weight-thresholds", type=click.Choice(["learned", "mse"]), default="learned", show_default=True,
              help="Thresholds of the switching weight quantizers: learned (LSQ, Esser et al. 2020, kept at or "
                   "below max |w|), or mse: refit to the MSE-optimal value for the current weights after every "
                   "step (docs/method.md).")
@click.option("--train-subset", default=None, type=int, help="Train on a seeded subset of N images.")
@click.option("--eval-subset", default=None, type=int, help="Evaluate on a seeded subset of N test images.")
@dataset_option
@data_dir_option
@click.option("--download", is_flag=True, help="Download CIFAR-10 with torchvision if it is missing.")
@seed_option
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Run folder.")
@click.option("--resume", is_flag=True, help="Continue the run in --out from its last completed epoch.")
@click.option("--quiet", is_flag=True, help="No progress output.")
@defense_options
@json_options
def train_cmd(out, resume, quiet, as_json, bits, **kwargs):
    """Train a model; writes OUT/checkpoint.pt every epoch and OUT/metrics.json."""
    from .train import TrainConfig, train

    cfg = TrainConfig(bits=parse_bits(bits) if bits is not None else None, **kwargs)
    record = train(cfg, out, resume=resume, quiet=quiet)
    rows = [[e["epoch"], f"{e['train_loss']:.3f}", *(f"{v:.2%}" for v in e["test_acc"].values()),
             f"{e['images_per_s']:.0f}"] for e in record["epochs"]]
    if record["epochs"] and "swa_test_acc" in record["epochs"][-1]:
        last = record["epochs"][-1]
        rows.append([f"SWA of {last['swa_models']}", "-", *(f"{v:.2%}" for v in last["swa_test_acc"].values()), "-"])
    bit_cols = [f"acc@{b}" for b in record["epochs"][-1]["test_acc"]] if record["epochs"] else []
    emit(record, format_table(["epoch", "loss", *bit_cols, "img/s"], rows), None, as_json)


def _load_for_eval(ckpt, bits_text):
    from .checkpoint import load_checkpoint, model_from_checkpoint

    payload = load_checkpoint(ckpt)
    model = model_from_checkpoint(payload)
    bit_list = parse_bits(bits_text) if bits_text else sorted(payload["trained_bits"], reverse=True)
    missing = [b for b in bit_list if b not in model.bit_choices]
    if missing:
        raise QadtrError(f"bit-width {missing[0]} is not in this checkpoint's set {sorted(model.bit_choices)}")
    return payload, model, bit_list


@cli.command("eval")
@click.argument("ckpt", type=click.Path(dir_okay=False))
@click.option("--bits", default=None, help="Bit-widths to evaluate. Default: those the checkpoint was trained at.")
@click.option("--n", "n", default=None, type=int, help="Evaluate on a seeded subset of N test images.")
@click.option("--batch-size", default=256, type=int)
@dataset_option
@data_dir_option
@seed_option
@click.option("--out", default=None, type=click.Path(dir_okay=False), help="Write the JSON result here.")
@json_options
def eval_cmd(ckpt, bits, n, batch_size, dataset, data_dir, seed, out, as_json):
    """Clean test accuracy of CKPT per bit-width."""
    import torch

    from .data.arrays import load_dataset
    from .data.loader import BatchLoader
    from .evaluate import accuracy_per_bits
    from .io import sha256_file, versions

    torch.manual_seed(seed)
    payload, model, bit_list = _load_for_eval(ckpt, bits)
    data = load_dataset(dataset, "test", data_dir, seed=seed).subset(n, seed)
    acc = accuracy_per_bits(model, BatchLoader(data, batch_size), bit_list)
    trained = set(payload["trained_bits"])
    result = {
        "checkpoint": str(ckpt), "checkpoint_sha256": sha256_file(ckpt), "arch": payload["config"]["arch"],
        "defense": payload["config"]["defense"], "images": len(data), "data_sha256": data.sha256(),
        "accuracy": {str(b): a for b, a in acc.items()}, "trained_bits": sorted(trained),
        "seed": seed, "versions": versions(),
    }
    rows = [[b, f"{a:.2%}", "yes" if b in trained else "no (never trained or calibrated)"] for b, a in acc.items()]
    emit(result, format_table(["bits", "accuracy", "trained"], rows), out, as_json)


@cli.command("calibrate")
@click.argument("float_ckpt", type=click.Path(dir_okay=False))
@click.option("--bits", default="8,4,2",
              help="Bit-widths to calibrate (2..8; 32 re-estimates the float path's BN statistics, which a model "
                   "trained only at quantized widths needs before it runs in float).")
@click.option("--num-batches", default=None, type=int,
              help="Calibration batches from the training set. Default: 8 (PTQ); 80 with --bn-only.")
@click.option("--batch-size", default=128, type=int)
@click.option("--bn-only", is_flag=True,
              help="Keep the trained thresholds and only re-estimate BN statistics at --bits (widths the checkpoint "
                   "was trained at): after QAT the running statistics lag the final weights, by several points "
                   "at 2 bits.")
@click.option("--augment/--no-augment", default=True,
              help="Augment calibration batches as in training (crop and flip). The float BN statistics were "
                   "accumulated over augmented batches; re-estimating them from plain images costs accuracy.")
@click.option("--eval-n", default=None, type=int, help="Report accuracy on N test images (default: all).")
@dataset_option
@data_dir_option
@seed_option
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="Calibrated checkpoint to write.")
@json_options
def calibrate_cmd(float_ckpt, bits, num_batches, batch_size, bn_only, augment, eval_n, dataset, data_dir, seed, out,
                  as_json):
    """Post-training quantization: thresholds and BN statistics from data, no training.

    Calibrates the --bits widths of FLOAT_CKPT's model (any qadtr checkpoint; usually a float one). Widths the
    checkpoint already has and --bits does not name keep their trained thresholds and BN. With --bn-only,
    the named (trained) widths keep their thresholds and get fresh BN statistics.
    """
    import torch

    from .calibration.checkpoint import calibrate_checkpoint
    from .checkpoint import load_checkpoint, save_checkpoint
    from .data.arrays import load_dataset
    from .data.loader import BatchLoader
    from .evaluate import accuracy_per_bits
    from .io import sha256_file, versions

    bit_list = parse_bits(bits)
    torch.manual_seed(seed)
    payload, source_sha256 = load_checkpoint(float_ckpt), sha256_file(float_ckpt)
    train = load_dataset(dataset, "train", data_dir, seed=seed)
    test = load_dataset(dataset, "test", data_dir, seed=seed).subset(eval_n, seed)
    model, calibrated = calibrate_checkpoint(payload, bit_list, train, batch_size=batch_size,
                                             num_batches=num_batches, augment=augment, seed=seed,
                                             source_sha256=source_sha256, bn_only=bn_only)
    save_checkpoint(out, calibrated)
    acc = accuracy_per_bits(model, BatchLoader(test, 256), sorted(model.bit_choices, reverse=True))
    result = {"checkpoint": str(out), "source": str(float_ckpt), "source_sha256": source_sha256,
              "accuracy": {str(b): a for b, a in acc.items()}, "images": len(test), "seed": seed,
              "data_sha256": train.sha256(), "versions": versions()}
    emit(result, format_table(["bits", "accuracy"], [[b, f"{a:.2%}"] for b, a in acc.items()]), None, as_json)


# Commands that live in their own modules (one job each). cli_deploy imports no torch, so
# `qadtr check`/`bench`/`report` run on a device with only the core install.
from .cli_attack import analyze_cmd, attack_cmd, robustness_cmd, transfer_cmd  # noqa: E402
from .cli_deploy import bench_cmd, check_cmd, report_cmd  # noqa: E402
from .cli_export import export_cmd  # noqa: E402
from .cli_pipeline import demo_cmd, pipeline_cmd  # noqa: E402

for _command in (attack_cmd, transfer_cmd, analyze_cmd, robustness_cmd, export_cmd, check_cmd, bench_cmd, report_cmd,
                 pipeline_cmd, demo_cmd):
    cli.add_command(_command)


def main() -> None:
    """Entry point: user errors become one line on stderr and exit code 2."""
    try:
        rv = cli.main(standalone_mode=False)
    except QadtrError as e:
        click.echo(f"error: {e}", err=True)
        sys.exit(2)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except click.ClickException as e:
        e.show()
        sys.exit(e.exit_code)
    sys.exit(rv if isinstance(rv, int) else 0)


if __name__ == "__main__":
    main()
