"""``qadtr pipeline`` and ``qadtr demo``: thin wrappers over :mod:`qadtr.pipeline`.

The pipeline's options are generated from :class:`qadtr.pipeline.config.PipelineConfig`, so every config
key has its option and both go through the same parser. Torch is imported only when a command runs.
"""
from __future__ import annotations

import json
from dataclasses import MISSING

import click

from .cli_util import CONTEXT, json_options
from .errors import QadtrError
from .pipeline.config import FIELDS, cli_name, parse_train_overrides

quiet_option = click.option("--quiet", is_flag=True, help="No progress output.")
force_option = click.option("--force", is_flag=True, help="Rerun every stage, even those that are up to date.")


def _default_text(value) -> str:
    if value is None:
        return ""
    if isinstance(value, list):
        return " [default: " + (",".join(":".join(map(str, v)) if isinstance(v, list) else str(v) for v in value)
                                or "none") + "]"
    return f" [default: {str(value).lower() if isinstance(value, bool) else value}]"


def _metavar(name: str, fld, default) -> str:
    if fld.metadata["path"]:
        return "PATH"
    if "bits" in name:
        return "BITS"
    if isinstance(default, list):
        return "LIST"
    if isinstance(default, float):
        return "X"
    if isinstance(default, int) or name.endswith("_n"):
        return "N"
    return "TEXT"


def config_options(f):
    """One option per config key, all defaulting to None ('not given'), so the file's value stands."""
    for name, fld in reversed(FIELDS.items()):
        help_text = fld.metadata["help"]
        if name == "train":
            f = click.option("--train", "train", multiple=True, metavar="KEY=VALUE",
                             help="A training setting (TrainConfig field, e.g. epochs=2, defense=qadtr); "
                                  "repeatable.")(f)
        elif name == "fail_on":
            f = click.option("--fail-on", "fail_on", multiple=True, metavar="GATE",
                             help=help_text + " Exit 1 when a cell meets one.")(f)
        elif isinstance(fld.default, bool):
            f = click.option(f"{cli_name(name)}/--no-{name.replace('_', '-')}", name, default=None,
                             help=help_text + _default_text(fld.default))(f)
        else:
            default = fld.default if fld.default is not MISSING else fld.default_factory()
            f = click.option(cli_name(name), name, default=None, metavar=_metavar(name, fld, default),
                             help=help_text + _default_text(default))(f)
    return f


def _echo_progress(quiet: bool):
    return (lambda line: None) if quiet else (lambda line: click.echo(line, err=True))


def _finish(summaries: dict, as_json: bool) -> None:
    """Print the verdict table(s) or JSON; name every failing cell on stderr and exit 1 if there is one."""
    from .pipeline.verdict import verdict_text

    if as_json:
        only = next(iter(summaries.values())) if len(summaries) == 1 else {"kind": "qadtr.demo", "runs": summaries}
        click.echo(json.dumps(only, indent=2, default=str))
    else:
        for name, s in summaries.items():
            title = f"{name}: " if len(summaries) > 1 else ""
            click.echo(f"{title}{verdict_text(s['verdict'])}\nstages ran: {', '.join(s['ran']) or 'none'}; "
                       f"skipped (up to date): {', '.join(s['skipped']) or 'none'}\n"
                       f"report: {s['report']['html']}\nwrote {s['out']}/pipeline.json")
    failures = [f for s in summaries.values() for f in s["verdict"]["failures"]]
    for f in failures:
        click.echo(f"gate failed: {f['message']}", err=True)
    if failures:
        raise click.exceptions.Exit(1)


@click.command("pipeline", context_settings=CONTEXT)
@click.option("--config", "config_file", type=click.Path(dir_okay=False), default=None,
              help="TOML file of settings (keys as the options below, flat or in [attack]/[export]/[check]/"
                   "[bench]/[train] tables); options given here override it. Relative paths are relative to it.")
@config_options
@force_option
@quiet_option
@json_options
def pipeline_cmd(config_file, force, quiet, as_json, **values):
    """Train or load, craft patches (seen, unseen, adaptive) and score them in PyTorch, export integer ONNX,
    check the patches under ONNX Runtime, bench, and report, all into one run folder (--out). A stage whose
    inputs (sha256) and settings are unchanged is skipped; --fail-on gates exit 1 naming the failing cell."""
    from .pipeline import load_config, run_pipeline

    values["train"] = parse_train_overrides(values["train"])
    cfg = load_config(config_file, values)
    _finish({cfg.out: run_pipeline(cfg, force=force, quiet=quiet, log=_echo_progress(quiet))}, as_json)


@click.command("demo", context_settings=CONTEXT)
@click.option("--data-dir", type=click.Path(file_okay=False), default=None,
              help="CIFAR-10 folder; defaults to $QADTR_DATA_DIR, else the cache ($QADTR_CACHE_DIR/cifar10 or "
                   "~/.cache/qadtr/cifar10), where it is downloaded if missing.")
@click.option("--out", default="qadtr-demo", type=click.Path(file_okay=False),
              help="Parent folder: one run folder per embedded checkpoint.")
@click.option("--pretrained", "names", multiple=True, help="Run only these embedded checkpoints (repeatable). "
                                                           "Default: qadtr-cifar10 and qat-cifar10 when shipped, "
                                                           "else every one shipped.")
@click.option("--n", "n", default=None, type=int, help="Test images [default: 500].")
@click.option("--steps", default=None, type=int, help="Crafting steps per patch [default: 150].")
@click.option("--fail-on", "fail_on", multiple=True, metavar="GATE", help="Gates, as for qadtr pipeline.")
@click.option("--seed", default=None, type=int, help="Random seed [default: 0].")
@click.option("--dataset", default="cifar10", hidden=True)  # tests run the demo on synthetic data
@force_option
@quiet_option
@json_options
def demo_cmd(data_dir, out, names, n, steps, fail_on, seed, dataset, force, quiet, as_json):
    """Run the pipeline on CIFAR-10 with a built-in small config, once per embedded pretrained checkpoint
    (loaded, not trained): 500 test images, 150 crafting steps, exports at 8/4/2 bits, bench at batch 1 and 64."""
    from .pipeline import run_pipeline
    from .pipeline.demo import check_cifar10, demo_config
    from .pretrained import demo_default, weights_dir, weights_path

    if dataset == "cifar10":
        data_dir = str(check_cifar10(data_dir))  # the named folder, the cache, or a fresh download
    for name in names:
        weights_path(name)
    chosen = list(names) or demo_default()
    if not chosen:
        raise QadtrError(f"no embedded checkpoint is shipped with this install ({weights_dir()} holds no .pt file)")
    summaries = {}
    for name in chosen:
        cfg = demo_config(name, out, data_dir, dataset, {"n": n, "attack_steps": steps, "seed": seed,
                                                         "fail_on": fail_on})
        if not quiet:
            click.echo(f"demo: {name} -> {cfg.out}", err=True)
        summaries[name] = run_pipeline(cfg, force=force, quiet=quiet, log=_echo_progress(quiet))
    _finish(summaries, as_json)
