"""Screenshot an HTML gallery with headless Chromium (docs/img/gallery.png).

    jointembed demo                                   # writes jointembed-demo.html
    python docs/screenshot_gallery.py jointembed-demo.html docs/img/gallery.png

Needs a Chromium binary (``apt-get install -y chromium``; ``$CHROMIUM`` names another).
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def find_chromium() -> str | None:
    """Path of a Chromium/Chrome binary, or None."""
    env = os.environ.get("CHROMIUM")
    if env:
        return shutil.which(env) or (env if Path(env).is_file() else None)
    return next((p for p in map(shutil.which, CANDIDATES) if p), None)


def screenshot(html: Path, png: Path, *, width: int = 1280, height: int = 1400, timeout: float = 120) -> Path:
    """Render ``html`` at ``width`` x ``height`` CSS pixels into ``png``.

    Raises:
        RuntimeError: no Chromium found, or it failed / wrote no file.
    """
    exe = find_chromium()
    if exe is None:
        raise RuntimeError("no chromium binary found (apt-get install -y chromium, or set $CHROMIUM)")
    png = Path(png).resolve()
    png.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="jointembed-chromium-") as profile:
        cmd = [exe, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
               f"--user-data-dir={profile}", f"--window-size={width},{height}",
               f"--screenshot={png}", Path(html).resolve().as_uri()]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0 or not png.is_file():
        raise RuntimeError(f"chromium failed ({done.returncode}): {done.stderr.strip()[-500:]}")
    return png


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("html", type=Path, nargs="?", default=Path("jointembed-demo.html"))
    ap.add_argument("png", type=Path, nargs="?", default=Path(__file__).resolve().parent / "img" / "gallery.png")
    ap.add_argument("--width", type=int, default=1280)
    ap.add_argument("--height", type=int, default=1400)
    ap.add_argument("--full-color", action="store_true", help="Keep 24-bit colour (default: a 256-colour "
                                                              "palette, ~3x smaller for the repository).")
    a = ap.parse_args(argv)
    try:
        out = screenshot(a.html, a.png, width=a.width, height=a.height)
    except (RuntimeError, OSError, subprocess.TimeoutExpired) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    if not a.full_color:
        from PIL import Image

        with Image.open(out) as im:
            small = im.convert("RGB").quantize(256, dither=Image.Dither.FLOYDSTEINBERG)
        small.save(out, optimize=True)
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
