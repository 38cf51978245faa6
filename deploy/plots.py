"""PNG figures for check, bench and report; matplotlib is optional (the ``report`` extra).

Every figure has a title and axis labels with units. Figures are built with
``matplotlib.figure.Figure`` directly (no pyplot), so nothing global is touched and
no display is needed.
"""
from __future__ import annotations

import io

import numpy as np


def available() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    return buf.getvalue()


def transfer_heatmap(result: dict, title: str, metric: str = "asr") -> bytes:
    """Rows: patches; columns: targets; colour: ``metric`` in percent; text: patch (control)."""
    from matplotlib.figure import Figure

    targets = list(result["clean_acc"])
    patches = list(dict.fromkeys(c["patch"] for c in result["cells"]))
    by = {(c["patch"], c["target"]): c for c in result["cells"]}
    grid = np.full((len(patches), len(targets)), np.nan)
    ctrl = np.full_like(grid, np.nan)
    for i, p in enumerate(patches):
        for j, t in enumerate(targets):
            if (p, t) in by:
                grid[i, j] = 100 * by[p, t]["patch_metrics"].get(metric, np.nan)
                ctrl[i, j] = 100 * by[p, t]["control_metrics"].get(metric, np.nan)
    fig = Figure(figsize=(1.6 + 1.25 * len(targets), 1.4 + 0.55 * len(patches)))
    ax = fig.add_subplot()
    im = ax.imshow(grid, vmin=0, vmax=100, cmap="magma_r", aspect="auto")
    for i in range(len(patches)):
        for j in range(len(targets)):
            if not np.isnan(grid[i, j]):
                ax.text(j, i, f"{grid[i, j]:.1f}\n({ctrl[i, j]:.1f})", ha="center", va="center", fontsize=8,
                        color="white" if grid[i, j] > 55 else "black")
    ax.set_xticks(range(len(targets)), targets, rotation=30, ha="right", fontsize=8)
    ax.set_yticks(range(len(patches)), patches, fontsize=8)
    ax.set_xlabel("target model (evaluated on)")
    ax.set_ylabel("patch (trained on)")
    ax.set_title(title, fontsize=10)
    name = {"asr": "ASR", "asr_all": "ASR over all images", "flip_rate": "flip rate"}.get(metric, metric)
    fig.colorbar(im, ax=ax, label=f"{name} (%), random-noise control in brackets")
    return _png(fig)


def bits_line_plot(series: list[dict], title: str, ylabel: str) -> bytes:
    """``series``: [{"label", "bits": [..], "values": [..] (fractions), "dashed": bool}]; x is the weight bit-width."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.4, 3.8))
    ax = fig.add_subplot()
    all_bits = sorted({b for s in series for b in s["bits"]})
    pos = {b: i for i, b in enumerate(all_bits)}
    colours = {}
    for s in series:
        key = s.get("group", s["label"])
        colour = colours.setdefault(key, f"C{len(colours) % 10}")
        order = np.argsort([pos[b] for b in s["bits"]])
        xs = [pos[s["bits"][k]] for k in order]
        ys = [100 * s["values"][k] for k in order]
        ax.plot(xs, ys, "--" if s.get("dashed") else "-", marker="o", color=colour, label=s["label"],
                alpha=0.6 if s.get("dashed") else 1.0)
    ax.set_xticks(range(len(all_bits)), [("fp32" if b >= 32 else f"{b}") for b in all_bits])
    ax.set_xlabel("weight bit-width (bits)")
    ax.set_ylabel(ylabel)
    ax.set_ylim(0, 100)
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    return _png(fig)


def latency_bars(rows: list[dict], title: str) -> bytes:
    """``rows``: [{"model", "batch", "threads", "p50_ms", "p90_ms"}]; one panel per batch size."""
    from matplotlib.figure import Figure

    batches = sorted({r["batch"] for r in rows})
    models = list(dict.fromkeys(r["model"] for r in rows))
    threads = sorted({r["threads"] for r in rows})
    fig = Figure(figsize=(max(6.0, 1.2 + 0.5 * len(models) * len(threads)), 3.6 * len(batches)))
    width = 0.8 / max(1, len(models))
    for k, batch in enumerate(batches):
        ax = fig.add_subplot(len(batches), 1, k + 1)
        for m_i, model in enumerate(models):
            xs, ys, errs = [], [], []
            for t_i, t in enumerate(threads):
                r = next((r for r in rows if r["model"] == model and r["batch"] == batch and r["threads"] == t), None)
                if r:
                    xs.append(t_i + (m_i - (len(models) - 1) / 2) * width)
                    ys.append(r["p50_ms"])
                    errs.append(max(0.0, r["p90_ms"] - r["p50_ms"]))
            ax.bar(xs, ys, width, yerr=[np.zeros(len(errs)), errs], capsize=2, label=model, color=f"C{m_i % 10}")
        ax.set_xticks(range(len(threads)), [f"{t} thread{'s' if t != 1 else ''}" for t in threads])
        ax.set_xlabel("intra-op threads")
        ax.set_ylabel("median latency (ms per batch)")
        ax.set_title(f"{title}: batch {batch} (bar: p50, whisker: p90)", fontsize=10)
        ax.grid(axis="y", alpha=0.3)
        ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    return _png(fig)


def patch_grid(patches: list[tuple[str, np.ndarray]], title: str = "Patches") -> bytes:
    """Each patch as an image (masked-out pixels shown as a checkerboard), axes in pixels."""
    from matplotlib.figure import Figure

    cols = min(4, max(1, len(patches)))
    rows = (len(patches) + cols - 1) // cols
    fig = Figure(figsize=(2.6 * cols, 2.7 * rows + 0.4))
    for i, (name, arr) in enumerate(patches):
        ax = fig.add_subplot(rows, cols, i + 1)
        rgb = np.clip(arr[:3].transpose(1, 2, 0), 0, 1)
        if arr.shape[0] == 4:
            yy, xx = np.mgrid[0:rgb.shape[0], 0:rgb.shape[1]]
            board = np.where(((yy // 2 + xx // 2) % 2)[..., None] == 0, 0.85, 0.65)
            rgb = rgb * arr[3][..., None] + board * (1 - arr[3][..., None])
        ax.imshow(rgb, interpolation="nearest")
        ax.set_title(name, fontsize=8)
        ax.set_xlabel("x (px)", fontsize=7)
        ax.set_ylabel("y (px)", fontsize=7)
        ax.tick_params(labelsize=6)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return _png(fig)


def save_png(path, png: bytes) -> None:
    """Write PNG bytes atomically (a reader never sees half an image)."""
    from pathlib import Path

    from qadtr.io import atomic_path

    with atomic_path(path) as tmp:
        Path(tmp).write_bytes(png)
