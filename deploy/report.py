"""``qadtr report``: one self-contained HTML page and a Markdown twin from the JSON artifacts in a folder.

Artifacts are recognised by content, not by name: ``kind: qadtr.check`` and
``kind: qadtr.bench`` (this package), ``format: qadtr-export-manifest`` (or a
``manifest.json`` with a ``models`` list; ``qadtr export``), a transfer matrix with
``cells`` and ``clean_acc`` (``qadtr transfer``) and a run with ``epochs``
(``qadtr train``'s ``metrics.json``). Anything else is listed as not used.

The HTML embeds every image as a base64 PNG and has no script, link or remote
resource, so it opens offline. The Markdown twin links the same PNGs, written to
``<name>_files/`` beside it.
"""
from __future__ import annotations

import base64
import html
import json
import re
import time
from pathlib import Path

import numpy as np
from qadtr.io import write_text

from . import plots

MAX_JSON_BYTES = 50 * 2**20

CAVEATS = [
    "ONNX Runtime's CPU provider has no kernels below 8 bits: 2- and 4-bit models run 8-bit integer ops "
    "whose values are restricted to fewer levels, so W4A4 and W2A2 cannot be faster than W8A8 there: expect "
    "no speed-up. qadtr's exports below 8-bit activations use ConvInteger plus a float rescale (exact "
    "parity; QLinearConv's int32 bias rounding is not), which is slower still. What lower bit-widths buy is "
    "packed weight size (and memory traffic) on FINN-style hardware that stores weights at their true "
    "bit-width, and the robustness measured in the transfer matrix.",
    "ASR counts originally-correct images only (denominator: images the model gets right without the patch). The "
    "random-noise control is the same-size patch filled with uniform noise at the same seeded places: the gap "
    "between a patch and its control is what the attack adds over plain occlusion.",
    "Latency depends on the CPU, the thread count and other load on the machine. Compare ratios taken in the "
    "same run (the baselines are benched interleaved with the models) rather than absolute numbers across runs.",
    "The ORT int8 baseline is ONNX Runtime's own quantize_static (QDQ, per-channel int8 weights, uint8 "
    "activations, MinMax calibration on real images), built by `qadtr bench` from the fp32 export of the same "
    "network; its accuracy is not checked here.",
]


# ---------------------------------------------------------------- artifacts

def classify(path: Path, obj) -> str | None:
    if not isinstance(obj, dict):
        return None
    kind = obj.get("kind")
    if kind in ("qadtr.check", "qadtr.bench"):
        return kind.split(".")[1]
    if obj.get("format") == "qadtr-export-manifest" or (path.name == "manifest.json"
                                                           and isinstance(obj.get("models"), list)):
        return "export"
    if isinstance(obj.get("cells"), list) and isinstance(obj.get("clean_acc"), dict):
        return "transfer"
    if isinstance(obj.get("epochs"), list) and isinstance(obj.get("config"), dict):
        return "train"
    return None


def collect(folder: str | Path) -> dict[str, list]:
    """``{kind: [(relative path, object)]}`` for every recognised JSON file under ``folder``."""
    folder = Path(folder)
    found: dict[str, list] = {k: [] for k in ("train", "transfer", "check", "export", "bench", "unused")}
    for path in sorted(folder.rglob("*.json")):
        if path.stat().st_size > MAX_JSON_BYTES or any(part.startswith(".") for part in path.parts):
            continue
        try:
            obj = json.loads(path.read_text())
        except (OSError, ValueError):
            found["unused"].append((path.relative_to(folder), None))
            continue
        kind = classify(path, obj)
        found[kind or "unused"].append((path.relative_to(folder), obj))
    return found


def bits_of_label(label: str) -> int | None:
    """A target's weight bit-width: ``"4"``, ``"w4a4"``, ``"resnet20_w4a4.qcdq"``, ``"fp32"`` (32)."""
    text = str(label).lower()
    if re.fullmatch(r"\d{1,2}", text):
        return int(text)
    m = re.search(r"w(\d{1,2})a\d{1,2}", text)
    if m:
        return int(m.group(1))
    if re.search(r"fp32|float", text):
        return 32
    return None


def precision_of_label(label: str) -> tuple[int, int] | None:
    """``"4"`` -> (4, 4), ``"resnet20_w8a4.qcdq"`` -> (8, 4), ``"fp32"`` -> (32, 32)."""
    m = re.search(r"w(\d{1,2})a(\d{1,2})", str(label).lower())
    if m:
        return int(m.group(1)), int(m.group(2))
    bits = bits_of_label(label)
    return (bits, bits) if bits is not None else None


def _target_precision(kind: str, obj: dict) -> dict[str, tuple[int, int] | None]:
    """``{target label: (weight bits, activation bits)}`` for a transfer or check artifact."""
    out = {}
    for label in _matrix(kind, obj)["clean_acc"]:
        bits = obj["models"].get(label, {}).get("bits") if kind == "check" else None
        out[label] = (int(bits["weight"]), int(bits["activation"])) if bits else precision_of_label(label)
    return out


def _target_bits(kind: str, obj: dict) -> dict[str, int | None]:
    """``{target label: weight bits}``: the x axis of the plots against bit-width."""
    return {k: (v[0] if v else None) for k, v in _target_precision(kind, obj).items()}


def _matrix(kind: str, obj: dict) -> dict:
    return obj if kind == "transfer" else obj["transfer"]


def _source_name(rel: Path, obj: dict) -> str:
    name = obj.get("defense") or (obj.get("config") or {}).get("defense")
    return str(name) if name else (str(rel.parent) if str(rel.parent) != "." else rel.stem)


# ---------------------------------------------------------------- document

class Doc:
    """Blocks rendered twice: to HTML (images inline) and to Markdown (images as files)."""

    def __init__(self, title: str):
        self.title = title
        self.blocks: list[tuple] = []
        self.images = 0

    def h2(self, text):
        self.blocks.append(("h2", text))

    def h3(self, text):
        self.blocks.append(("h3", text))

    def p(self, text):
        self.blocks.append(("p", text))

    def ul(self, items):
        self.blocks.append(("ul", list(items)))

    def table(self, headers, rows):
        self.blocks.append(("table", [str(h) for h in headers], [[str(c) for c in r] for r in rows]))

    def image(self, png: bytes, caption: str):
        self.images += 1
        self.blocks.append(("img", png, caption, f"figure{self.images:02d}.png"))

    def html(self) -> str:
        esc = html.escape
        parts = [f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{esc(self.title)}</title>",
                 f"<style>{STYLE}</style></head><body><h1>{esc(self.title)}</h1>"]
        for b in self.blocks:
            if b[0] in ("h2", "h3", "p"):
                parts.append(f"<{b[0]}>{esc(b[1])}</{b[0]}>")
            elif b[0] == "ul":
                parts.append("<ul>" + "".join(f"<li>{esc(i)}</li>" for i in b[1]) + "</ul>")
            elif b[0] == "table":
                head = "".join(f"<th>{esc(h)}</th>" for h in b[1])
                body = "".join("<tr>" + "".join(f"<td class='n'>{esc(c)}</td>" if _numeric(c) else f"<td>{esc(c)}</td>"
                                                for c in r) + "</tr>" for r in b[2])
                parts.append(f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")
            elif b[0] == "img":
                data = base64.b64encode(b[1]).decode("ascii")
                parts.append(f"<figure><img alt='{esc(b[2])}' src='data:image/png;base64,{data}'>"
                             f"<figcaption>{esc(b[2])}</figcaption></figure>")
        parts.append("</body></html>\n")
        return "\n".join(parts)

    def markdown(self, assets: str) -> tuple[str, dict[str, bytes]]:
        lines, files = [f"# {self.title}", ""], {}
        for b in self.blocks:
            if b[0] == "h2":
                lines += [f"## {b[1]}", ""]
            elif b[0] == "h3":
                lines += [f"### {b[1]}", ""]
            elif b[0] == "p":
                lines += [b[1], ""]
            elif b[0] == "ul":
                lines += [f"- {i}" for i in b[1]] + [""]
            elif b[0] == "table":
                cell = lambda c: c.replace("|", "\\|")  # noqa: E731
                lines += ["| " + " | ".join(map(cell, b[1])) + " |", "|" + " --- |" * len(b[1])]
                lines += ["| " + " | ".join(map(cell, r)) + " |" for r in b[2]] + [""]
            elif b[0] == "img":
                files[b[3]] = b[1]
                lines += [f"![{b[2]}]({assets}/{b[3]})", "", f"*{b[2]}*", ""]
        return "\n".join(lines), files


STYLE = """body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;max-width:1100px;margin:2em auto;
padding:0 1em;color:#1d232b;line-height:1.45}h1{border-bottom:2px solid #d0d7de}h2{margin-top:2em;
border-bottom:1px solid #d0d7de}table{border-collapse:collapse;margin:1em 0;font-size:.9em}
th,td{border:1px solid #d0d7de;padding:.3em .6em;text-align:left;vertical-align:top}td.n{text-align:right}
thead{background:#f3f5f7}figure{margin:1em 0}img{max-width:100%;height:auto;border:1px solid #eee}
figcaption{font-size:.85em;color:#57606a}li{margin:.4em 0}"""


def _numeric(cell: str) -> bool:
    """Numbers (``12.5``, ``84.4%``, ``0.0% (0.0%)``, ``8/8``) are right-aligned in HTML tables."""
    return bool(re.fullmatch(r"[-+]?\d[\d.,/]*%?( \([-+]?\d[\d.,]*%?\))?|-", cell))


def _pct(v) -> str:
    return "-" if v is None or (isinstance(v, float) and np.isnan(v)) else f"{100 * v:.1f}%"


# ---------------------------------------------------------------- sections

def _matrix_section(doc: Doc, kind: str, rel: Path, obj: dict) -> None:
    m = _matrix(kind, obj)
    targets = list(m["clean_acc"])
    patches = list(dict.fromkeys(c["patch"] for c in m["cells"]))
    by = {(c["patch"], c["target"]): c for c in m["cells"]}
    engine = "ONNX Runtime" if kind == "check" else "PyTorch"
    doc.h3(f"{engine}: {rel} (n={m['n']}, seed {m['seed']})")
    if plots.available():
        where = rel.parent if str(rel.parent) != "." else rel
        doc.image(plots.transfer_heatmap(m, f"Patch ASR (%), {engine}, {where}"),
                  f"Transfer heatmap from {rel}: ASR over originally-correct images, control in brackets.")
    rows = [["clean accuracy", *(_pct(m["clean_acc"][t]) for t in targets)]]
    for p in patches:
        rows.append([p, *(f"{_pct(by[p, t]['patch_metrics']['asr'])} ({_pct(by[p, t]['control_metrics']['asr'])})"
                          if (p, t) in by else "-" for t in targets)])
    doc.table(["patch \\ target", *targets], rows)


AGREEMENT_METRICS = ("asr", "asr_all", "flip_rate")


def agreement(transfer: dict, check: dict) -> list[dict]:
    """Cell-by-cell differences between a PyTorch transfer matrix and an ORT check at the same precision.

    Cells pair up by patch name and (weight, activation) bits; only artifacts scored on the same number of
    images with the same seed are comparable. Differences are in percentage points.
    """
    c_matrix = check["transfer"]
    if transfer.get("seed") != c_matrix.get("seed") or transfer.get("n") != c_matrix.get("n"):
        return []
    c_prec, t_prec = _target_precision("check", check), _target_precision("transfer", transfer)
    c_cells = {(c["patch"], c_prec.get(c["target"])): c for c in c_matrix["cells"]}
    rows = []
    for cell in transfer["cells"]:
        precision = t_prec.get(cell["target"])
        ort = c_cells.get((cell["patch"], precision))
        if precision is None or ort is None:
            continue
        diffs = {"clean_acc": (transfer["clean_acc"][cell["target"]], c_matrix["clean_acc"][ort["target"]])}
        for m in AGREEMENT_METRICS:
            diffs[m] = (cell["patch_metrics"][m], ort["patch_metrics"][m])
            diffs[f"control_{m}"] = (cell["control_metrics"][m], ort["control_metrics"][m])
        finite = [abs(a - b) for a, b in diffs.values() if not (np.isnan(a) or np.isnan(b))]
        rows.append({"patch": cell["patch"], "precision": list(precision), "torch_target": cell["target"],
                     "ort_target": ort["target"], "values": {k: list(v) for k, v in diffs.items()},
                     "max_diff_points": 100 * max(finite) if finite else float("nan")})
    return rows


def _agreement_section(doc: Doc, transfers, checks) -> None:
    """ORT check cells beside the PyTorch transfer cells of the same patch and precision."""
    rows = []
    for c_rel, c_obj in checks:
        for t_rel, t_obj in transfers:
            for r in agreement(t_obj, c_obj):
                w, a = r["precision"]
                asr = r["values"]["asr"]
                rows.append([r["patch"], "fp32" if w >= 32 else f"W{w}A{a}", str(t_rel), str(c_rel), _pct(asr[0]),
                             _pct(asr[1]), f"{r['max_diff_points']:.2f}"])
    if rows:
        doc.h3("ONNX Runtime versus PyTorch, cell by cell")
        doc.p("Same images, seed and placements on both sides. Last column: the largest difference, in "
              "percentage points, over clean accuracy, ASR, ASR over all images and flip rate, patch and control.")
        doc.table(["patch", "precision", "PyTorch artifact", "ORT artifact", "PyTorch ASR", "ORT ASR",
                   "max |diff| (points)"], rows)


def _bits_series(found) -> tuple[list, list]:
    """(ASR series, clean-accuracy series) against weight bits, one per artifact."""
    asr, clean = [], []
    for kind in ("transfer", "check"):
        for rel, obj in found[kind]:
            m, bits = _matrix(kind, obj), _target_bits(kind, obj)
            src = f"{'ORT' if kind == 'check' else 'PyTorch'}: {_source_name(rel, obj)}"
            targets = [t for t in m["clean_acc"] if bits.get(t) is not None]
            if not targets:
                continue
            clean.append({"label": src, "bits": [bits[t] for t in targets],
                          "values": [m["clean_acc"][t] for t in targets]})
            mean_asr = {t: [c["patch_metrics"]["asr"] for c in m["cells"] if c["target"] == t] for t in targets}
            mean_ctl = {t: [c["control_metrics"]["asr"] for c in m["cells"] if c["target"] == t] for t in targets}
            keep = [t for t in targets if mean_asr[t]]
            if keep:
                asr.append({"label": f"{src} (patch, mean)", "group": src, "bits": [bits[t] for t in keep],
                            "values": [float(np.nanmean(mean_asr[t])) for t in keep]})
                asr.append({"label": f"{src} (random control)", "group": src, "dashed": True,
                            "bits": [bits[t] for t in keep], "values": [float(np.nanmean(mean_ctl[t])) for t in keep]})
    for rel, obj in found["train"]:
        last = obj["epochs"][-1] if obj["epochs"] else None
        # A finished SWA run's checkpoint holds the average: its accuracy, not the live model's, is the result.
        acc = (last.get("swa_test_acc") or last.get("test_acc")) if last else None
        if acc:
            pairs = [(bits_of_label(k), v) for k, v in acc.items() if bits_of_label(k) is not None]
            if pairs:
                clean.append({"label": f"train: {_source_name(rel, obj)} (full test set)",
                              "bits": [b for b, _ in pairs], "values": [v for _, v in pairs]})
    for rel, obj in found["export"]:
        pairs = [(e.get("weight_bits"), (e.get("parity") or {}).get("accuracy_onnx")) for e in obj.get("models", [])
                 if isinstance(e, dict) and str(e.get("format")) != "qonnx"]
        pairs = [(int(b), v) for b, v in pairs if b is not None and v is not None]
        if pairs:
            clean.append({"label": f"export parity (ORT): {rel.parent}", "bits": [b for b, _ in pairs],
                          "values": [v for _, v in pairs]})
    return asr, clean


def _bench_section(doc: Doc, rel: Path, obj: dict) -> None:
    from .bench import latency_rows

    cfg, base = obj["config"], obj["baselines"]
    doc.h3(f"{rel}")
    timing = f"{cfg['seconds']} s per measurement" if cfg.get("seconds") else f"{cfg['iters']} timed runs"
    doc.p(f"{cfg['warmup']} warm-up runs, {timing}, graph optimization {cfg['ort']['graph_optimization']}, "
          f"providers {', '.join(cfg['ort']['providers'])}. fp32 baseline: {base.get('fp32') or 'none'} "
          f"({base.get('fp32_found_by')}); ORT int8 baseline: {base.get('ort_int8') or 'none'}.")
    rows = latency_rows(obj)
    if plots.available() and rows:
        doc.image(plots.latency_bars(rows, "ONNX Runtime CPU latency"),
                  f"Median latency per batch (ms) for each model, batch size and thread count, from {rel}.")
    doc.table(["model", "role", "bits (W/A)", "file size (KiB)", "packed weights (KiB)", "integer MAC coverage",
               "ORT operators"],
              [[e["label"], e["role"], f"{e['bits']['weight']}/{e['bits']['activation']}" if e.get("bits") else "?",
                f"{e['size_bytes'] / 1024:.1f}",
                "-" if e.get("packed_weight_bytes") is None else f"{e['packed_weight_bytes'] / 1024:.1f}",
                "-" if e["graph"]["coverage"] is None else f"{e['graph']['coverage']:.0%}",
                ", ".join(f"{k} x{v}" for k, v in list(e["graph"]["op_histogram"].items())[:6])]
               for e in obj["models"]])
    lat_rows = []
    for e in obj["models"]:
        for r in e["runs"]:
            if "latency_ms" not in r:
                continue
            lat = r["latency_ms"]
            f2 = lambda v: "-" if v is None else f"{v:.2f}"  # noqa: E731
            lat_rows.append([e["label"], r["batch"], r["threads"], f"{lat['p50']:.3f}", f"{lat['p90']:.3f}",
                             f"{lat['p99']:.3f}", f"{lat['std']:.3f}", f"{r['throughput_ips']:.0f}",
                             f"{r['session_create_s'] * 1e3:.0f}", f"{r['first_inference_s'] * 1e3:.1f}",
                             "-" if not r.get("peak_rss_bytes") else f"{r['peak_rss_bytes'] / 2**20:.0f}",
                             f2(r.get("p50_vs_fp32")), f2(r.get("p50_vs_ort_int8"))])
    doc.table(["model", "batch", "threads", "p50 (ms)", "p90 (ms)", "p99 (ms)", "std (ms)", "images/s",
               "session (ms)", "first run (ms)", "peak RSS (MiB)", "p50 / fp32", "p50 / ORT int8"], lat_rows)


def _low_bit_speed_notes(benches) -> list[str]:
    """The measured side of the first caveat: p50 of each W2/W4 model over the W8 model's, per configuration."""
    notes = []
    for rel, obj in benches:
        models = [e for e in obj["models"] if e["role"] == "model" and e.get("bits")]
        eight = next((e for e in models if e["bits"]["weight"] == 8), None)
        if eight is None:
            continue
        ref = {(r["batch"], r["threads"]): r["latency_ms"]["p50"] for r in eight["runs"] if "latency_ms" in r}
        for e in models:
            if e["bits"]["weight"] >= 8:
                continue
            ratios = [f"{r['latency_ms']['p50'] / ref[r['batch'], r['threads']]:.2f}x at batch {r['batch']}, "
                      f"{r['threads']} thread(s)" for r in e["runs"]
                      if "latency_ms" in r and ref.get((r["batch"], r["threads"]))]
            if ratios:
                notes.append(f"Measured in {rel}: {e['label']} p50 over {eight['label']} p50 is "
                             + "; ".join(ratios) + ".")
    return notes


def _patch_images(found, folder: Path) -> list[tuple[str, np.ndarray]]:
    from qadtr.asr import split_patch

    paths: dict[str, Path] = {}
    for kind, key in (("check", "path"), ("transfer", "file")):
        for rel, obj in found[kind]:
            for name, meta in (obj.get("patches") or {}).items():
                if isinstance(meta, dict) and meta.get(key):
                    p = Path(meta[key])
                    for cand in (p, folder / rel.parent / p.name, folder / p.name):
                        if cand.is_file():
                            paths.setdefault(name, cand)
                            break
    for p in sorted(folder.rglob("*.npy")):
        paths.setdefault(p.stem, p)
    out = []
    for name, p in list(paths.items())[:16]:
        try:
            arr = np.load(p, allow_pickle=False)
            split_patch(arr)
            out.append((name, arr.astype(np.float32)))
        except (OSError, ValueError):
            continue
    return out


def _environment(doc: Doc, found) -> None:
    envs = [(rel, obj["environment"]) for kind in ("bench", "check") for rel, obj in found[kind]
            if isinstance(obj.get("environment"), dict)]
    if not envs:
        doc.p("No check or bench artifact: no environment recorded.")
        return
    fields = [("CPU", lambda e: e.get("cpu")),
              ("usable / logical CPUs", lambda e: f"{e.get('usable_cpus')} / {e.get('logical_cpus')}"),
              ("load average (1 min)", lambda e: "-" if not e.get("load_average") else f"{e['load_average'][0]:.2f}"),
              ("thread variables", lambda e: ", ".join(f"{k}={v}" for k, v in (e.get("thread_env") or {}).items())
               or "-"),
              ("ORT providers", lambda e: ", ".join(e.get("ort_providers", [])))]
    fields += [(pkg, lambda e, pkg=pkg: (e.get("versions") or {}).get(pkg) or "-")
               for pkg in ("onnxruntime", "onnx", "numpy", "python", "qadtr", "matplotlib", "platform")]
    fields.append(("recorded (UTC)", lambda e: e.get("created")))
    doc.table(["", *(str(rel) for rel, _ in envs)], [[name, *(str(get(env)) for _, env in envs)]
                                                     for name, get in fields])
    threads = sorted({t for _, obj in found["bench"] for t in obj["config"].get("threads", [])})
    if threads:
        doc.p(f"Benched with {', '.join(map(str, threads))} intra-op thread(s); one inter-op pool, sequential "
              "execution.")


def build_doc(folder: str | Path) -> tuple[Doc, int]:
    folder = Path(folder)
    found = collect(folder)
    used = sum(len(v) for k, v in found.items() if k != "unused")
    doc = Doc("qadtr report")
    doc.p(f"Built {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} from {used} JSON artifacts under {folder}.")
    doc.table(["kind", "artifact"], [[k, str(rel)] for k in ("train", "transfer", "check", "export", "bench")
                                     for rel, _ in found[k]] or [["-", "no artifact found"]])
    if not plots.available():
        doc.p("matplotlib is not installed: tables only (pip install 'qadtr[report]' for the plots).")
    doc.h2("Caveats")
    caveats = list(CAVEATS)
    for rel, obj in found["bench"]:
        low = [e["label"] for e in obj["models"] if e["graph"]["coverage"] is not None and e["graph"]["coverage"] < 1
               and e.get("quantized")]
        if low:
            caveats.append(f"In {rel}, {', '.join(low)} run some Conv/Gemm nodes as float kernels "
                           "(integer coverage below 100%): ORT did not fuse every QDQ pattern.")
    caveats += _low_bit_speed_notes(found["bench"])
    doc.ul(caveats)

    doc.h2("Patch transfer")
    if not (found["transfer"] or found["check"]):
        doc.p("No transfer or check artifact found.")
    for kind in ("transfer", "check"):
        for rel, obj in found[kind]:
            _matrix_section(doc, kind, rel, obj)
    _agreement_section(doc, found["transfer"], found["check"])

    asr_series, clean_series = _bits_series(found)
    doc.h2("Robustness and accuracy against bit-width")
    if plots.available() and asr_series:
        doc.image(plots.bits_line_plot(asr_series, "Patch ASR against weight bit-width (mean over patches)",
                                       "ASR over originally-correct images (%)"),
                  "Attack success rate against weight bit-width; solid: patch, dashed: random-noise control.")
    if plots.available() and clean_series:
        doc.image(plots.bits_line_plot(clean_series, "Clean accuracy against weight bit-width", "top-1 accuracy (%)"),
                  "Clean top-1 accuracy against weight bit-width, per source.")
    rows = [[s["label"], *(f"{'fp32' if b >= 32 else f'W{b}'}: {_pct(v)}" for b, v in zip(s["bits"], s["values"]))]
            for s in clean_series]
    if rows:
        width = max(len(r) for r in rows)
        doc.table(["clean accuracy source", *[""] * (width - 1)], [r + [""] * (width - len(r)) for r in rows])
    if not (asr_series or clean_series):
        doc.p("No artifact with bit-width labels found.")

    doc.h2("Latency under ONNX Runtime")
    if not found["bench"]:
        doc.p("No bench artifact found.")
    for rel, obj in found["bench"]:
        _bench_section(doc, rel, obj)

    if found["export"]:
        doc.h2("Exported models")
        for rel, obj in found["export"]:
            doc.table(["file", "format", "bits (W/A)", "file size (KiB)", "packed weights (KiB)", "top-1 agreement",
                       "ORT accuracy", "integer coverage"],
                      [[e.get("file"), e.get("format"), f"{e.get('weight_bits')}/{e.get('act_bits')}",
                        f"{(e.get('file_bytes') or 0) / 1024:.1f}",
                        "-" if e.get("packed_weight_bytes") is None else f"{e['packed_weight_bytes'] / 1024:.1f}",
                        _pct((e.get("parity") or {}).get("top1_agreement")),
                        _pct((e.get("parity") or {}).get("accuracy_onnx")),
                        _pct((e.get("integer_kernel_coverage") or {}).get("share"))]
                       for e in obj.get("models", []) if isinstance(e, dict)])
            doc.p(f"From {rel}.")

    if found["train"]:
        doc.h2("Training runs")
        rows = []
        for rel, obj in found["train"]:
            last = obj["epochs"][-1] if obj["epochs"] else {}
            cfg = obj["config"]
            rows.append([str(rel), cfg.get("arch"), cfg.get("defense"), len(obj["epochs"]),
                         ", ".join(f"{b}: {_pct(a)}" for b, a in (last.get("test_acc") or {}).items()) or "-"])
        doc.table(["run", "arch", "defense", "epochs", "test accuracy per bit-width (last epoch)"], rows)

    patches = _patch_images(found, folder)
    doc.h2("Patches")
    if patches and plots.available():
        doc.image(plots.patch_grid(patches, "Adversarial patches (pixels; checkerboard: outside the mask)"),
                  "The patches, nearest-neighbour upscaled.")
    elif not patches:
        doc.p("No patch file found (the check and transfer artifacts point to their .npy files).")

    doc.h2("Environment")
    _environment(doc, found)
    if found["unused"]:
        doc.p("JSON files not used: " + ", ".join(str(r) for r, _ in found["unused"][:20]) + ".")
    return doc, used


def write_doc(doc: Doc, html_path: str | Path) -> dict:
    """Write ``doc`` as HTML to ``html_path`` and as Markdown beside it (PNGs in ``<stem>_files/``)."""
    html_path = Path(html_path)
    md_path = html_path.with_suffix(".md")
    assets = f"{md_path.stem}_files"
    write_text(html_path, doc.html())
    md, files = doc.markdown(assets)
    for name, png in files.items():
        plots.save_png(md_path.parent / assets / name, png)
    write_text(md_path, md + "\n")
    return {"html": str(html_path), "markdown": str(md_path)}


def build_report(folder: str | Path, out: str | Path | None = None) -> dict:
    """Write the HTML report (default ``folder/report.html``) and its Markdown twin beside it."""
    folder = Path(folder)
    doc, used = build_doc(folder)
    return {**write_doc(doc, Path(out) if out else folder / "report.html"), "artifacts": used}
