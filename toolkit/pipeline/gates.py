"""Quality gates: ``--fail-on 'asr>0.4'`` and friends, checked against the verdict rows. Torch-free.

A gate names a metric, a comparison and a threshold; the pipeline fails (exit 1) when any *cell* meets
it. Cells, per verdict row (one precision, e.g. W2A2, scored under ONNX Runtime when it was exported):

- ``asr``: one cell per patch (seen, unseen, adaptive), ASR over originally-correct images;
- ``acc_drop``: clean accuracy of the 32-bit float path (else the highest precision) minus the row's;
- ``acc``: the row's clean accuracy;
- ``latency_ms``: one cell per (batch, threads) bench measurement, p50 per batch.

A cell without a value (no originally-correct image, no bench run) cannot fail a gate.
"""
from __future__ import annotations

import math
import operator
import re
from dataclasses import dataclass

from ..errors import QadtrError

METRICS = ("asr", "acc_drop", "acc", "latency_ms")
OPERATORS = {">=": operator.ge, "<=": operator.le, ">": operator.gt, "<": operator.lt}
_GATE = re.compile(r"^\s*([a-z_]+)\s*(>=|<=|>|<)\s*([-+]?(?:\d+\.?\d*|\.\d+)(?:e[-+]?\d+)?)\s*(%?)\s*$",
                   re.IGNORECASE)


@dataclass(frozen=True)
class Gate:
    metric: str
    op: str
    threshold: float

    def __str__(self) -> str:
        return f"{self.metric}{self.op}{self.threshold:g}"

    def fails(self, value) -> bool:
        return value is not None and not math.isnan(value) and OPERATORS[self.op](value, self.threshold)


def parse_gate(text: str) -> Gate:
    """``'asr>0.4'``, ``'acc_drop > 2%'``, ``'latency_ms>=5'`` -> :class:`Gate`; one line for anything else."""
    m = _GATE.match(str(text))
    if not m:
        raise QadtrError(f"cannot read gate {text!r}: write METRIC>VALUE, e.g. 'asr>0.4' (metrics: "
                         f"{', '.join(METRICS)})")
    metric, op, number, percent = m.group(1).lower(), m.group(2), float(m.group(3)), m.group(4)
    if metric not in METRICS:
        raise QadtrError(f"unknown gate metric {metric!r} in {text!r}: choose from {', '.join(METRICS)}")
    if percent and metric == "latency_ms":
        raise QadtrError(f"latency_ms is in milliseconds, not a percentage: {text!r}")
    return Gate(metric, op, number / 100 if percent else number)


def cells(row: dict, metric: str) -> list[tuple[str, float | None]]:
    """``(cell name, value)`` pairs of one verdict row for one metric (see the module docstring)."""
    label = row["label"]
    if metric == "asr":
        return [(f"{label} {p['name']}", p["asr"]) for p in row["patches"]]
    if metric == "acc_drop":
        return [(label, row["acc_drop"])]
    if metric == "acc":
        return [(label, row["clean_acc"])]
    many_threads = len({r["threads"] for r in row["latency"]}) > 1
    return [(f"{label} batch {r['batch']}" + (f" threads {r['threads']}" if many_threads else ""), r["p50_ms"])
            for r in row["latency"]]


def evaluate(gates, rows) -> list[dict]:
    """Every failing cell: ``{"gate", "cell", "metric", "value", "threshold", "message"}``, in row order."""
    failures = []
    for gate in (g if isinstance(g, Gate) else parse_gate(g) for g in gates):
        for row in rows:
            for name, value in cells(row, gate.metric):
                if gate.fails(value):
                    failures.append({"gate": str(gate), "cell": name, "metric": gate.metric, "value": value,
                                     "threshold": gate.threshold,
                                     "message": f"{name}: {gate.metric} {value:.3g} {gate.op} {gate.threshold:g}"})
    return failures
