"""Shared pieces of the CLI: bit-list parsing, tables, JSON output. Torch-free."""
from __future__ import annotations

import json

import click

from .errors import QadtrError
from .io import write_json

FLOAT_BITS = 32


def parse_bits(text: str, allow_float: bool = True) -> list[int]:
    """'32,8,4,2' -> [32, 8, 4, 2]; one clear error for anything else."""
    try:
        values = [int(t) for t in str(text).replace(" ", "").split(",") if t]
    except ValueError:
        raise QadtrError(f"bits must be a comma-separated list of integers, got {text!r}") from None
    if not values:
        raise QadtrError("no bit-width given")
    allowed = set(range(2, 9)) | ({FLOAT_BITS} if allow_float else set())
    bad = [v for v in values if v not in allowed]
    if bad:
        hint = ", or 32 for float" if allow_float else ""
        raise QadtrError(f"bit-width {bad[0]} is not supported: use 2..8{hint}")
    return list(dict.fromkeys(values))


def format_table(headers, rows) -> str:
    cells = [[str(h) for h in headers]] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    line = lambda r: "  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths)))  # noqa: E731
    return "\n".join([line(cells[0]), "  ".join("-" * w for w in widths), *map(line, cells[1:])])


def emit(result: dict, table: str, out: str | None, as_json: bool) -> None:
    """Write ``result`` to ``out`` (atomically) and print JSON or the table."""
    if out:
        write_json(out, result)
    click.echo(json.dumps(result, indent=2, default=str) if as_json else table)


def json_options(f):
    f = click.option("--json", "as_json", is_flag=True, help="Print JSON instead of the table.")(f)
    return f


# Shared by every command module, so options read the same everywhere.
CONTEXT = {"show_default": True, "help_option_names": ["-h", "--help"], "max_content_width": 100}
DATASET_CHOICES = ["cifar10", "imagefolder", "npz", "synthetic"]
data_dir_option = click.option("--data-dir", type=click.Path(file_okay=False), default=None,
                               help="Data folder; defaults to $QADTR_DATA_DIR.")
dataset_option = click.option("--dataset", default="cifar10", type=click.Choice(DATASET_CHOICES),
                              help="Data layout (see README); synthetic is a generated toy set for tests.")


def seed_option(help_text: str = "Random seed."):
    return click.option("--seed", default=0, type=int, help=help_text)
