"""The verdict: one row per precision with clean accuracy, worst ASR and p50 latency, then the gates. Torch-free.

A precision that was exported is judged on its ONNX Runtime results (``check`` and ``bench``): that is the
artifact that ships. A precision scored only in PyTorch (the 32-bit float path, unless fp32 was exported)
gets a PyTorch row. ``acc_drop`` is measured against the PyTorch 32-bit float path when it was scored,
else against the highest precision in the table.
"""
from __future__ import annotations

import math

from ..cli_util import FLOAT_BITS, format_table
from .gates import evaluate


def patch_name(info: dict) -> str:
    """``seen 6x6@32``, ``unseen 10x10@2``, ``adaptive 6x6 A-QAPA``: a robustness.json patch in a gate message."""
    size = f"{info['size']}x{info['size']}"
    if info.get("crafting", {}).get("attack") == "QuantAwarePatchAttack" or info["role"] == "adaptive":
        return f"{info['role']} {size} A-QAPA"
    return f"{info['role']} {size}@{info['source_bits'][0]}"


def precision_label(w: int, a: int) -> str:
    return "fp32" if w == FLOAT_BITS and a == FLOAT_BITS else f"W{w}A{a}"


def _finite(value) -> bool:
    return value is not None and not math.isnan(value)


def _patch_cells(cells, target: str, names: dict) -> list[dict]:
    return [{"name": names.get(c["patch"], c["patch"]), "patch": c["patch"], "asr": c["patch_metrics"]["asr"],
             "control_asr": c["control_metrics"]["asr"]} for c in cells if c["target"] == target]


def _ort_rows(check: dict, bench: dict | None, names: dict) -> list[dict]:
    latency = {}
    for entry in (bench or {}).get("models", []):
        latency[entry.get("sha256")] = [{"batch": r["batch"], "threads": r["threads"],
                                         "p50_ms": r["latency_ms"]["p50"]} for r in entry["runs"] if "latency_ms" in r]
    rows = []
    for label, model in check["models"].items():
        bits = model.get("bits")
        w, a = (bits["weight"], bits["activation"]) if bits else (FLOAT_BITS, FLOAT_BITS)
        rows.append({"label": precision_label(w, a), "bits": [w, a], "engine": "onnxruntime", "model": label,
                     "clean_acc": check["transfer"]["clean_acc"][label],
                     "patches": _patch_cells(check["transfer"]["cells"], label, names),
                     "latency": latency.get(model.get("sha256"), [])})
    return rows


def build_verdict(robustness: dict, check: dict, bench: dict | None, gates) -> dict:
    """Rows, reference accuracy, gates and failing cells, from the attack, check and bench results."""
    names = {name: patch_name(info) for name, info in robustness["patches"].items()}
    rows = _ort_rows(check, bench, names)
    deployed = {tuple(r["bits"]) for r in rows}
    for b in robustness["bits"]:
        if (b, b) not in deployed:
            rows.append({"label": precision_label(b, b), "bits": [b, b], "engine": "pytorch", "model": None,
                         "clean_acc": robustness["clean_acc"][str(b)],
                         "patches": _patch_cells(robustness["transfer"]["cells"], str(b), names), "latency": []})
    rows.sort(key=lambda r: (-r["bits"][0], -r["bits"][1], r["engine"]))
    if str(FLOAT_BITS) in robustness["clean_acc"]:
        reference = {"label": "fp32 (pytorch)", "clean_acc": robustness["clean_acc"][str(FLOAT_BITS)]}
    else:
        reference = {"label": f"{rows[0]['label']} ({rows[0]['engine']})", "clean_acc": rows[0]["clean_acc"]}
    for row in rows:
        row["acc_drop"] = reference["clean_acc"] - row["clean_acc"]
        scored = [p for p in row["patches"] if _finite(p["asr"])]
        worst = max(scored, key=lambda p: p["asr"]) if scored else None
        row["worst_asr"] = worst["asr"] if worst else None
        row["worst_patch"] = worst["name"] if worst else None
    failures = evaluate(gates, rows)
    return {"reference": reference, "rows": rows, "gates": [str(g) for g in gates], "failures": failures,
            "passed": not failures}


def _pct(value) -> str:
    return "-" if not _finite(value) else f"{value:.1%}"


def latency_columns(rows) -> list[tuple[int, int]]:
    return sorted({(r["batch"], r["threads"]) for row in rows for r in row["latency"]})


def verdict_table(verdict: dict) -> tuple[list[str], list[list[str]]]:
    """Headers and rows of the verdict table (the CLI prints it; the report shows it first)."""
    rows = verdict["rows"]
    columns = latency_columns(rows)
    many_threads = len({t for _, t in columns}) > 1
    headers = ["precision", "engine", "clean acc", "acc drop", "worst ASR (patch)",
               *(f"p50 ms b{b}" + (f" t{t}" if many_threads else "") for b, t in columns)]
    table = []
    for row in rows:
        p50 = {(r["batch"], r["threads"]): r["p50_ms"] for r in row["latency"]}
        worst = f"{_pct(row['worst_asr'])} ({row['worst_patch']})" if row["worst_patch"] else "-"
        table.append([row["label"], row["engine"], _pct(row["clean_acc"]), _pct(row["acc_drop"]), worst,
                      *(f"{p50[c]:.3f}" if c in p50 else "-" for c in columns)])
    return headers, table


def verdict_text(verdict: dict) -> str:
    """The table plus one line on the gates, as the CLI prints it."""
    text = format_table(*verdict_table(verdict))
    if not verdict["gates"]:
        return text + "\ngates: none set"
    if verdict["passed"]:
        return text + f"\ngates: all passed ({', '.join(verdict['gates'])})"
    return text + f"\ngates: {len(verdict['failures'])} failing cell(s) for {', '.join(verdict['gates'])}"


def add_to_report(doc, verdict: dict) -> None:
    """Put the verdict at the top of a :class:`qadtr.deploy.report.Doc`, right after its opening line."""
    from ..deploy.report import Doc

    section = Doc(doc.title)
    section.h2("Pipeline verdict")
    section.p(f"One row per precision: ONNX Runtime results where the model was exported, PyTorch otherwise. "
              f"Accuracy drop is against {verdict['reference']['label']} "
              f"({_pct(verdict['reference']['clean_acc'])}); worst ASR is the highest over the seen, unseen and "
              "adaptive patches; latency is p50 per batch.")
    section.table(*verdict_table(verdict))
    if not verdict["gates"]:
        section.p("No gate was set.")
    elif verdict["passed"]:
        section.p(f"PASSED: no cell meets a gate ({', '.join(verdict['gates'])}).")
    else:
        section.p(f"FAILED: {len(verdict['failures'])} cell(s) meet a gate ({', '.join(verdict['gates'])}):")
        section.ul(f["message"] for f in verdict["failures"])
    doc.blocks[1:1] = section.blocks
