"""Per-item limits and the lean conversions behind them (no database, no model).

* the strip-wise RGB conversion of ``preprocess._to_rgb`` equals the whole-image reference
  (the pre-limits implementation, kept here) pixel for pixel, on images taller than a strip;
* the folder scan and the decoder agree on what an image is, and report the rest by kind;
* limits come from the environment and refuse nonsense;
* ``files.open_regular`` refuses non-regular files and escapes from a root.
"""
from __future__ import annotations

import io
import os

import numpy as np
import pytest
from PIL import Image

from jointembed_pg import files
from jointembed_pg.model import preprocess
from jointembed_pg.ingest import readers
from jointembed_pg.errors import InputError
from jointembed_pg.limits import Limits


def _reference_to_rgb(img: Image.Image) -> Image.Image:
    """The whole-image conversion (before strips): the slow reference."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(img, dtype=np.float64)
        hi = 65535.0 if arr.max(initial=0) > 255 else 255.0
        img = Image.fromarray(np.clip(arr / hi * 255.0 + 0.5, 0, 255).astype(np.uint8), "L")
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(background, rgba)
    return img.convert("RGB")


def _images():
    rng = np.random.default_rng(3)
    h, w = 1900, 1300  # > 1 strip (2**20 pixels) of rows
    rgb = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    alpha = rng.integers(0, 256, (h, w), dtype=np.uint8)
    rgba = Image.fromarray(np.dstack([rgb, alpha]), "RGBA")
    pal = Image.fromarray(rgb, "RGB").convert("P", palette=Image.Palette.ADAPTIVE, colors=200)
    pal.info["transparency"] = 7
    return {
        "RGBA": rgba, "LA": rgba.convert("LA"), "P+transparency": pal,
        "I;16": Image.fromarray(rng.integers(0, 65536, (h, w), dtype=np.uint16)),
        "I;16 low": Image.fromarray(rng.integers(0, 256, (h, w), dtype=np.uint16)),
        "CMYK": Image.fromarray(rgb, "RGB").convert("CMYK"), "L": Image.fromarray(rgb[..., 0], "L"),
    }


@pytest.mark.parametrize("mode", list(_images()))
def test_strip_conversion_equals_whole_image(mode):
    img = _images()[mode]
    fast, slow = preprocess._to_rgb(img.copy()), _reference_to_rgb(img.copy())
    assert fast.mode == slow.mode == "RGB"
    np.testing.assert_array_equal(np.asarray(fast), np.asarray(slow))


def test_scan_and_decoder_agree_and_ignored_files_are_counted(tmp_path):
    exts = readers.image_extensions()
    assert {".jpg", ".png", ".gif", ".webp", ".tif", ".bmp", ".avif"} <= exts
    assert ".eps" not in exts and ".heic" not in exts       # Ghostscript / no decoder
    Image.new("RGB", (8, 8)).save(tmp_path / "a.avif")
    for name in ("b.heic", "c.heic", "d.svg", "e.txt", "noext"):
        (tmp_path / name).write_bytes(b"x")
    scan = readers.scan_images([tmp_path])
    assert [r.path.name for r in scan.records] == ["a.avif"]
    assert scan.ignored_summary() == "5 files ignored: 2 .heic (no decoder), 1 (no suffix), 1 .svg (no decoder), 1 .txt"
    assert preprocess.load(tmp_path / "a.avif").shape == (3, 224, 224)


def test_limits_from_env():
    lim = Limits.from_env({"JOINTEMBED_MAX_PIXELS": "1000", "JOINTEMBED_ITEM_TIMEOUT_S": "2.5"})
    assert (lim.max_pixels, lim.timeout_s, lim.max_file_bytes) == (1000, 2.5, Limits().max_file_bytes)
    assert (Limits().max_ref_chars, Limits.from_env({"JOINTEMBED_MAX_REF_CHARS": "300"}).max_ref_chars) == (8192, 300)
    with pytest.raises(InputError, match="JOINTEMBED_MAX_PIXELS"):
        Limits.from_env({"JOINTEMBED_MAX_PIXELS": "lots"})
    with pytest.raises(InputError, match="positive"):
        Limits.from_env({"JOINTEMBED_MAX_FILE_BYTES": "0"})
    buf = io.BytesIO()
    Image.new("RGB", (40, 30)).save(buf, "PNG")
    with pytest.raises(InputError, match="1200 pixels, over the 1000-pixel limit"):
        preprocess.decode(buf.getvalue(), limits=lim)


def test_open_regular_refuses_specials_and_escapes(tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    (root / "ok.bin").write_bytes(b"data")
    (tmp_path / "secret.bin").write_bytes(b"secret")
    (root / "link").symlink_to(tmp_path / "secret.bin")
    os.mkfifo(root / "fifo")
    assert files.read_regular(root / "ok.bin", 10) == b"data"
    for path, needle in ((root / "fifo", "FIFO"), ("/dev/zero", "character device"), (root, "directory")):
        with pytest.raises(InputError, match=needle) as e:
            files.read_regular(path, 10)
        assert e.value.retry is False
    with pytest.raises(InputError, match="over the 3-byte limit"):
        files.read_regular(root / "ok.bin", 3)
    for value in ("link", "../secret.bin", str(tmp_path / "secret.bin"), "x/../ok.bin"):
        with pytest.raises(InputError, match="image root|absolute"):
            files.resolve_under(value, str(root))
    # a root given through a symlink is compared by real path; the fd check catches a late swap
    with pytest.raises(InputError, match="leaves the image root"):
        files.read_regular(root / "link", 10, root=str(root))
    assert files.resolve_under("ok.bin", str(root)) == str((root / "ok.bin").resolve())


def test_text_checks():
    assert readers.clean_text("  a dog  ", "k") == "a dog"
    for text, needle in (("a\x00b", "NUL"), ("a\ud800b", "lone surrogate"), ("x" * 10, "10 characters, over")):
        with pytest.raises(InputError, match=needle):
            readers.clean_text(text, "k", max_chars=5)
    with pytest.raises(InputError, match="over the 4-byte limit"):
        readers.check_key("ééé", max_bytes=4)
    assert readers.printable("a\udcffb\x00") == "a\\udcffb\\x00"
