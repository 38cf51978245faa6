"""Render a `qadtr report` page in headless Chromium with the network cut off, and save a screenshot.

    python benchmarks/report_screenshot.py ARTIFACT_DIR [--png /tmp/qadtr_report.png]

Builds ARTIFACT_DIR/report.html with `qadtr report`, opens it in Debian's `chromium`
(`apt-get install chromium`) with every host name unresolvable and a dead proxy,
so a page that needed the network would show broken images, and writes the PNG
outside the repository (default: the system temp folder). Exits 1 if Chromium is
missing or the screenshot is blank, 0 otherwise.
"""
from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome")


def find_chromium() -> str | None:
    return next((p for p in map(shutil.which, CHROMIUM_NAMES) if p), None)


def screenshot(html: Path, png: Path, width: int = 1280, height: int = 9000, timeout: float = 120) -> Path:
    """Screenshot ``html`` (``width`` x ``height`` window) into ``png`` with no network; returns ``png``."""
    chromium = find_chromium()
    if chromium is None:
        raise FileNotFoundError("no chromium on PATH: apt-get install chromium")
    png.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="qadtr-chromium-") as profile:
        cmd = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--no-first-run",
               f"--user-data-dir={profile}", "--host-resolver-rules=MAP * ~NOTFOUND", "--proxy-server=127.0.0.1:9",
               f"--window-size={width},{height}", f"--screenshot={png}", html.resolve().as_uri()]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0 or not png.is_file():
        raise RuntimeError(f"chromium failed ({proc.returncode}): {proc.stderr.strip()[-500:]}")
    return png


def trim_and_check(png: Path) -> tuple[int, int]:
    """Crop the empty space below the page and check the image is not blank; returns its size."""
    try:
        import numpy as np
        from PIL import Image
    except ImportError:  # without Pillow: keep the full window, check the file is not trivially small
        if png.stat().st_size < 20_000:
            raise RuntimeError(f"{png} looks blank ({png.stat().st_size} bytes)") from None
        return (0, 0)
    pixels = np.asarray(Image.open(png).convert("RGB"))
    rows = np.nonzero((pixels != pixels[-1, -1]).any(axis=(1, 2)))[0]
    if len(rows) == 0 or pixels.std() < 5:
        raise RuntimeError(f"{png} is blank")
    Image.fromarray(pixels[:rows[-1] + 40]).save(png)
    return pixels.shape[1], rows[-1] + 40


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("folder", type=Path, help="folder with check/bench/transfer/... JSON artifacts")
    ap.add_argument("--png", type=Path, default=Path(tempfile.gettempdir()) / "qadtr_report_screenshot.png")
    ap.add_argument("--width", type=int, default=1280)
    ap.add_argument("--height", type=int, default=9000, help="window height; the blank rest is cropped")
    args = ap.parse_args(argv)
    from qadtr.deploy.report import build_report

    written = build_report(args.folder)
    try:
        screenshot(Path(written["html"]), args.png, args.width, args.height)
        size = trim_and_check(args.png)
    except (FileNotFoundError, RuntimeError, subprocess.TimeoutExpired) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"{written['html']} rendered offline to {args.png} ({size[0]}x{size[1]} px)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
