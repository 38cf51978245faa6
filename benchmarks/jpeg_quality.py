"""How lossy the shared CIFAR-10 is: the JPEG quality and chroma subsampling its pixels were decoded from.

The shared data's README says only "JPEG-decoded". This reads the encoder's settings back out of the pixels:

- *Luma quantization table.* JPEG rounds each 8x8 block's DCT coefficient (i, j) of Y - 128 to a multiple of a
  step q[i, j]; decoding to uint8 adds at most +-0.5 per pixel, which moves a coefficient by well under one
  step. So the coefficients of frequency (i, j) over many blocks cluster at multiples of q[i, j], and q[i, j]
  is the largest step whose phase statistic ``mean(cos(2 pi c / q))`` stays high, among steps that leave
  fewer than 5% of the non-zero coefficients below half a step. Only frequencies where
  enough coefficients are non-zero can be read; the rest were zeroed by the encoder.
- *Quality.* The readable steps are matched against the IJG table scaled to each quality 1..100 (what
  Pillow and libjpeg write); the best match and its agreement are reported.
- *Chroma subsampling.* Stored at full resolution (4:4:4), Cb shows its own quantization lattice on the same
  8x8 grid as luma, so its steps read like luma's. Stored at half resolution (4:2:0), each chroma block covered
  16x16 pixels and was upsampled on decoding, so no step can be read on the 8x8 grid: zero readable chroma
  steps means subsampled chroma.

``--self-check Q`` re-encodes the images at quality Q with Pillow (4:2:0; ``--self-check-444`` adds 4:4:4)
and runs the same estimate, so the estimator is checked against a known answer on the same pictures.
``--write-recompressed Q DIR`` writes both splits re-encoded at quality Q (4:2:0) as
``cifar10_{train,test}.npz`` for an accuracy-versus-quality run (``qadtr train --data-dir DIR``).

    python benchmarks/jpeg_quality.py --out runs/jpeg --self-check 30 --self-check 50 --self-check 75 \
        --self-check 90 --self-check-444
"""
from __future__ import annotations

import argparse
import io
import os
from pathlib import Path

import numpy as np
from PIL import Image
from qadtr.io import sha256_file, versions, write_json, write_text

# ITU-T T.81 Annex K luminance table: the base every IJG quality setting scales.
IJG_LUMA = np.array([
    16, 11, 10, 16, 24, 40, 51, 61, 12, 12, 14, 19, 26, 58, 60, 55, 14, 13, 16, 24, 40, 57, 69, 56,
    14, 17, 22, 29, 51, 87, 80, 62, 18, 22, 37, 56, 68, 109, 103, 77, 24, 35, 55, 64, 81, 104, 113, 92,
    49, 64, 78, 87, 103, 121, 120, 101, 72, 92, 95, 98, 112, 100, 103, 99]).reshape(8, 8)


def ijg_luma_table(quality: int) -> np.ndarray:
    """libjpeg's ``jpeg_quality_scaling`` applied to the Annex K luminance table."""
    scale = 5000 // quality if quality < 50 else 200 - 2 * quality
    return np.clip((IJG_LUMA * scale + 50) // 100, 1, 255)


def _ycbcr(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    r, g, b = (x[..., k].astype(np.float64) for k in range(3))
    y = 0.299 * r + 0.587 * g + 0.114 * b
    cb = -0.168736 * r - 0.331264 * g + 0.5 * b + 128
    cr = 0.5 * r - 0.418688 * g - 0.081312 * b + 128
    return y, cb, cr


def _dct_matrix(n: int = 8) -> np.ndarray:
    k, i = np.meshgrid(np.arange(n), np.arange(n), indexing="ij")
    m = np.cos(np.pi * (2 * i + 1) * k / (2 * n)) * np.sqrt(2 / n)
    m[0] /= np.sqrt(2)
    return m


def block_dct(channel: np.ndarray) -> np.ndarray:
    """[N, H, W] -> [N * H/8 * W/8, 8, 8] orthonormal DCT-II of each aligned 8x8 block of channel - 128."""
    n, h, w = channel.shape
    blocks = channel.reshape(n, h // 8, 8, w // 8, 8).transpose(0, 1, 3, 2, 4).reshape(-1, 8, 8) - 128
    m = _dct_matrix()
    return m @ blocks @ m.T


def estimate_steps(coef: np.ndarray, max_step: int = 128, min_nonzero: float = 0.2,
                   threshold: float = 0.6) -> np.ndarray:
    """Per-frequency quantization step; 0 where too few coefficients are non-zero to read it."""
    steps = np.zeros((8, 8), dtype=int)
    for i in range(8):
        for j in range(8):
            c = coef[:, i, j]
            c = c[np.abs(c) > 1.5]  # decode rounding moves a zeroed coefficient by ~0.3 (std)
            if len(c) < min_nonzero * len(coef):
                continue
            # every non-zero coefficient is at least one step, so a step that would put many of them below
            # half a step is ruled out; without this a huge step phases every small value near 0
            phase = {q: np.mean(np.cos(2 * np.pi * c / q)) for q in range(1, max_step + 1)
                     if np.mean(np.abs(c) < q / 2) < 0.05}
            if not phase or max(phase.values()) < threshold:
                continue
            # divisors of the step phase as well as the step itself, and a step one or two above it still
            # phases at 0.8-0.95 when most values are one step: take the largest within 3% of the best
            best = max(phase.values())
            steps[i, j] = max(q for q, s in phase.items() if s >= 0.97 * best)
    return steps


def match_quality(steps: np.ndarray) -> dict:
    """The IJG quality whose luma table agrees with the readable steps most often."""
    readable = steps > 0
    agree = {q: float(np.mean(ijg_luma_table(q)[readable] == steps[readable])) for q in range(1, 101)}
    best = max(agree, key=agree.get)
    return {"quality": best, "agreement": agree[best], "readable_frequencies": int(readable.sum())}


def analyse(x: np.ndarray) -> dict:
    y, cb, _ = _ycbcr(x)
    steps = estimate_steps(block_dct(y))
    chroma_readable = int((estimate_steps(block_dct(cb)) > 0).sum())
    return {"luma_steps": steps.tolist(), **match_quality(steps), "chroma_readable_steps": chroma_readable,
            "chroma": "4:4:4 (full resolution)" if chroma_readable else "subsampled (4:2:0 or 4:2:2)"}


def recompress(x: np.ndarray, quality: int, subsampling: int = 2) -> np.ndarray:
    """Each uint8 HWC image through Pillow's JPEG encoder at ``quality`` and back (subsampling 2: 4:2:0, 0: 4:4:4)."""
    out = np.empty_like(x)
    for k, img in enumerate(x):
        buf = io.BytesIO()
        Image.fromarray(img).save(buf, format="JPEG", quality=quality, subsampling=subsampling)
        out[k] = np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))
    return out


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float(10 * np.log10(255.0 ** 2 / mse))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", type=Path, default=None, help="CIFAR-10 npz folder (default: QADTR_DATA_DIR)")
    ap.add_argument("--n", type=int, default=5000, help="Test images analysed.")
    ap.add_argument("--self-check", type=int, action="append", default=[], metavar="Q",
                    help="Also re-encode at quality Q and estimate that (repeatable).")
    ap.add_argument("--self-check-444", action="store_true", help="Self-checks also at 4:4:4 chroma.")
    ap.add_argument("--write-recompressed", nargs=2, metavar=("Q", "DIR"), default=None,
                    help="Write both splits re-encoded at quality Q into DIR.")
    ap.add_argument("--out", type=Path, required=True, help="Folder for jpeg_quality.json and .md.")
    ap.add_argument("--seed", type=int, default=0, help="Recorded only: nothing here is random.")
    args = ap.parse_args()
    data_dir = args.data_dir or Path(os.environ["QADTR_DATA_DIR"])
    test_path = data_dir / "cifar10_test.npz"
    x = np.load(test_path)["x"][: args.n]
    rows = {"shared data": analyse(x)}
    for q in args.self_check:
        for subsampling in (2, 0) if args.self_check_444 else (2,):
            again = recompress(x, q, subsampling)
            name = f"re-encoded at {q}, {'4:2:0' if subsampling else '4:4:4'}"
            rows[name] = {**analyse(again), "psnr_vs_shared_db": _psnr(again, x)}
    if args.write_recompressed:
        q, folder = int(args.write_recompressed[0]), Path(args.write_recompressed[1])
        folder.mkdir(parents=True, exist_ok=True)
        for split in ("train", "test"):
            d = np.load(data_dir / f"cifar10_{split}.npz")
            np.savez(folder / f"cifar10_{split}.npz", x=recompress(d["x"], q), y=d["y"])
    record = {"rows": rows, "n": len(x), "seed": args.seed, "versions": versions(),
              "inputs": {str(test_path): sha256_file(test_path)}}
    lines = ["| images | best IJG quality | agreement (readable luma steps) | readable Cb steps | chroma | "
             "PSNR vs shared |", "| --- | --- | --- | --- | --- | --- |"]
    for name, r in rows.items():
        psnr = f"{r['psnr_vs_shared_db']:.1f} dB" if "psnr_vs_shared_db" in r else "-"
        lines.append(f"| {name} | {r['quality']} | {r['agreement']:.0%} of {r['readable_frequencies']} | "
                     f"{r['chroma_readable_steps']} | {r['chroma']} | {psnr} |")
    lines += ["", "Luma steps read from the shared data (0: zeroed by the encoder, unreadable):", "```"]
    lines += [" ".join(f"{v:3d}" for v in row) for row in rows["shared data"]["luma_steps"]] + ["```"]
    args.out.mkdir(parents=True, exist_ok=True)
    write_json(args.out / "jpeg_quality.json", record)
    write_text(args.out / "jpeg_quality.md", "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
