"""Bad input, built from real Flickr8K files: every item has a defined outcome (embedded
correctly, or recorded as failed with a specific error), the batch goes on, the exit code
is 3 when something failed and the JSON end-of-run report says what and why.

One ``jointembed index images`` run covers the whole image corpus, one ``index texts``
run the caption file, one ``sync`` run the attached table with NULLs; the tests then
check each item of those runs.
"""
from __future__ import annotations

import json
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import psycopg
import pytest
from PIL import Image
from psycopg import sql

from jointembed_pg.limits import MAX_PIXELS
from test_reliability_support import cli, flickr_images, items_table, one_line_error, scenario, stored_items

pytest_plugins = ["_reliability"]
pytestmark = pytest.mark.flickr8k

#: Stored embeddings equal an in-process encode of the same file up to batch-size numerics.
SAME = 1e-3
#: Side of the largest square image under the pixel limit (36 megapixels of 40).
HUGE = 6000
#: Peak RSS growth allowed while decoding a HUGE x HUGE image (two 4-byte/pixel copies at most).
MAX_RSS_GROWTH_MB = 320


def _png_header_only(w: int, h: int) -> bytes:
    """A PNG whose IHDR claims ``w`` x ``h`` RGB pixels (a decompression bomb's header)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b""))


def _save(img: Image.Image, path: Path, fmt: str, **kw) -> Path:
    img.save(path, fmt, **kw)
    return path


def _build_corpus(root: Path, src: list[Path]) -> dict[str, Path]:
    """The bad-input image corpus (in ``root/images``) and its reference files (``root/ref``)."""
    img_dir, ref = root / "images", root / "ref"
    img_dir.mkdir()
    ref.mkdir()
    data = src[0].read_bytes()
    im = Image.open(src[0]).convert("RGB")
    im = im.crop((0, 0, im.width // 16 * 16, im.height // 16 * 16))
    f: dict[str, Path] = {}
    f["good"] = img_dir / "good.jpg"
    f["good"].write_bytes(data)
    f["truncated"] = img_dir / "truncated.jpg"
    f["truncated"].write_bytes(data[: int(len(data) * 0.6)])
    f["zero"] = img_dir / "zero.jpg"
    f["zero"].write_bytes(b"")
    f["text"] = img_dir / "notes.jpg"
    f["text"].write_text("this is a shopping list, not a photo\n")
    png = bytearray(_save(im, ref / "plain.png", "PNG").read_bytes())
    at = png.find(b"IDAT") + 4 + 200
    png[at:at + 16] = bytes(b ^ 0xFF for b in png[at:at + 16])     # corrupt IDAT data (its CRC no longer matches)
    f["corrupt_png"] = img_dir / "corrupt.png"
    f["corrupt_png"].write_bytes(bytes(png))
    f["bomb"] = img_dir / "bomb.png"
    f["bomb"].write_bytes(_png_header_only(50_000, 50_000))         # 2.5 gigapixels
    f["bomb_108mp"] = img_dir / "bomb108.png"
    f["bomb_108mp"].write_bytes(_png_header_only(12_000, 9_000))    # 108 megapixels: over MAX_PIXELS
    f["cmyk"] = _save(im.convert("CMYK"), img_dir / "cmyk.jpg", "JPEG", quality=95)
    gray16 = np.asarray(im.convert("L")).astype(np.uint16) * 257
    f["png16"] = _save(Image.fromarray(gray16), img_dir / "gray16.png", "PNG")
    f["png16_ref"] = _save(im.convert("L"), ref / "gray8.png", "PNG")
    pal = im.convert("P", palette=Image.Palette.ADAPTIVE, colors=255)
    idx = np.asarray(pal).copy()
    idx[:24, :], idx[-24:, :] = 255, 255                            # transparent bands
    pal_t = Image.fromarray(idx, "P")
    pal_t.putpalette(pal.getpalette()[:765] + [0, 255, 0])
    f["palette"] = _save(pal_t, img_dir / "palette.png", "PNG", transparency=255)
    frames = [Image.open(p).convert("RGB").resize((400, 300)) for p in src[:3]]
    f["gif"] = _save(frames[0], img_dir / "animated.gif", "GIF", save_all=True, append_images=frames[1:],
                     duration=100, loop=0)
    exif = Image.Exif()
    exif[0x0112] = 6                                                # "rotate 90 CW to display"
    f["exif"] = _save(im, img_dir / "exif_rotated.jpg", "JPEG", quality=95, exif=exif.tobytes())
    f["exif_upright"] = _save(im.transpose(Image.Transpose.ROTATE_270), ref / "upright.jpg", "JPEG", quality=95)
    f["exif_unrotated"] = _save(im, ref / "unrotated.jpg", "JPEG", quality=95)
    f["huge"] = _save(im.resize((HUGE, HUGE)), img_dir / "huge.jpg", "JPEG", quality=70)
    f["dir_jpg"] = img_dir / "folder.jpg"                           # a directory with an image name
    f["dir_jpg"].mkdir()
    f["missing"] = root / "does-not-exist.jpg"
    return f


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, flickr8k_dir):
    src = flickr_images(flickr8k_dir, 8, start=100)
    files = _build_corpus(tmp_path_factory.mktemp("bad-input"), src)
    return files, src


@pytest.fixture(scope="module")
def image_run(corpus, module_pg_dsn, bundle_dir):
    files, _ = corpus
    p = cli(["index", "images", files["good"].parent, files["missing"], "--collection", "bad",
             "--dsn", module_pg_dsn, "--bundle", bundle_dir, "--json", "--no-progress"])
    assert p.stdout.strip(), p.stderr[-3000:]
    report = json.loads(p.stdout)
    failed = {Path(f["key"]).name: f["error"] for f in report["failed"]}
    stored = {Path(k).name: e for k, _h, _m, e in stored_items(module_pg_dsn, "bad")}
    return p, report, failed, stored


def _failed_with(image_run, name: str, *needles: str) -> str:
    _p, _rep, failed, stored = image_run
    assert name in failed, (name, failed)
    assert name not in stored
    err = failed[name]
    for n in needles:
        assert n in err, (n, err)
    return err


def _close(a, b, tol=SAME) -> float:
    d = float(np.linalg.norm(np.asarray(a) - np.asarray(b)))
    assert d < tol, d
    return d


@scenario("Image batch with bad files mixed in", "batch continues; exit code 3; JSON report counts "
          "failed items, each with its reason; every good file embedded once", "bad input")
def test_batch_continues_exit_3_and_json_report(image_run, corpus, bundle, observe):
    p, rep, failed, stored = image_run
    assert p.returncode == 3, p.stderr[-2000:]
    bad = {"truncated.jpg", "zero.jpg", "notes.jpg", "corrupt.png", "bomb.png", "bomb108.png", "does-not-exist.jpg"}
    good = {"good.jpg", "cmyk.jpg", "gray16.png", "palette.png", "animated.gif", "exif_rotated.jpg", "huge.jpg"}
    assert set(failed) == bad and set(stored) == good
    assert rep["total"] == len(bad) + len(good) and rep["written"] == len(good)
    assert "Traceback" not in p.stderr
    observe(f"exit {p.returncode}; report: total {rep['total']}, written {rep['written']}, "
            f"failed {len(rep['failed'])} (each with its error); folder.jpg (a directory) not taken as an image")


@scenario("Truncated JPEG (cut at 60 %)", "failed: 'corrupt or truncated image'", "bad input")
def test_truncated_jpeg(image_run, observe):
    observe(_failed_with(image_run, "truncated.jpg", "truncated"))


@scenario("Zero-byte file", "failed: 'empty file (0 bytes)'", "bad input")
def test_zero_byte_file(image_run, observe):
    observe(_failed_with(image_run, "zero.jpg", "empty file (0 bytes)"))


@scenario("Text file named .jpg", "failed: 'not a readable image'", "bad input")
def test_text_file_named_jpg(image_run, observe):
    observe(_failed_with(image_run, "notes.jpg", "not a readable image"))


@scenario("PNG with corrupt IDAT data / CRC", "failed: 'corrupt or truncated image'", "bad input")
def test_corrupt_png(image_run, observe):
    observe(_failed_with(image_run, "corrupt.png", "corrupt or truncated"))


@scenario("Decompression bomb (PNG header claiming 50,000 x 50,000 and 12,000 x 9,000 pixels)",
          "failed before decoding: pixel limit named; memory untouched", "bad input")
def test_decompression_bomb(image_run, observe):
    e1 = _failed_with(image_run, "bomb.png", "2500000000 pixels")
    e2 = _failed_with(image_run, "bomb108.png", "108000000 pixels", f"{MAX_PIXELS}-pixel limit")
    observe(e1)
    observe(e2)


@scenario("Path that does not exist (named on the command line)", "failed: 'no such file or directory'",
          "bad input")
def test_missing_path(image_run, observe):
    observe(_failed_with(image_run, "does-not-exist.jpg", "no such file or directory"))


def _stored_equals_runtime(image_run, bundle, name: str, path: Path) -> np.ndarray:
    stored = image_run[3][name]
    _close(stored, bundle.encode_images([path])[0])
    return stored


def _nearest(vec, refs: list[np.ndarray]) -> int:
    return int(np.argmin([np.linalg.norm(vec - r) for r in refs]))


@scenario("CMYK JPEG", "embedded; within 0.1 (L2) of the RGB original", "bad input")
def test_cmyk_jpeg(image_run, corpus, bundle, observe):
    files, src = corpus
    e = _stored_equals_runtime(image_run, bundle, "cmyk.jpg", files["cmyk"])
    observe(f"embedded; L2 to RGB original {_close(e, bundle.encode_images([src[0]])[0], 0.1):.3f}")


@scenario("16-bit greyscale PNG", "embedded; equal to the 8-bit greyscale version", "bad input")
def test_16bit_png(image_run, corpus, bundle, observe):
    files, _ = corpus
    e = _stored_equals_runtime(image_run, bundle, "gray16.png", files["png16"])
    observe(f"embedded; L2 to 8-bit version {_close(e, bundle.encode_images([files['png16_ref']])[0]):.1e}")


@scenario("Palette PNG with transparency", "embedded (transparency on white); nearest to its source photo",
          "bad input")
def test_palette_png_with_transparency(image_run, corpus, bundle, observe):
    files, src = corpus
    e = _stored_equals_runtime(image_run, bundle, "palette.png", files["palette"])
    assert _nearest(e, list(bundle.encode_images(src))) == 0
    observe("embedded; nearest of 8 real photos is its source")


@scenario("Animated GIF (3 frames of 3 photos)", "embedded from the first frame", "bad input")
def test_animated_gif(image_run, corpus, bundle, observe):
    files, src = corpus
    e = _stored_equals_runtime(image_run, bundle, "animated.gif", files["gif"])
    assert _nearest(e, list(bundle.encode_images(src[:3]))) == 0
    observe("embedded; nearest frame source is frame 0")


@scenario("EXIF-rotated JPEG (Orientation = 6)", "embedded upright: equal to the physically rotated image "
          "within JPEG noise (L2 < 0.15), far from the unrotated pixels", "bad input")
def test_exif_rotated_jpeg(image_run, corpus, bundle, observe):
    files, _ = corpus
    e = _stored_equals_runtime(image_run, bundle, "exif_rotated.jpg", files["exif"])
    up, unrot = bundle.encode_images([files["exif_upright"], files["exif_unrotated"]])
    d_up, d_unrot = _close(e, up, 0.15), float(np.linalg.norm(e - unrot))
    assert d_up < d_unrot / 4
    observe(f"L2 to physically rotated {d_up:.3f}; to unrotated {d_unrot:.3f}")


# Peak RSS of this process image: VmHWM (ru_maxrss would include the pytest parent's
# size, which Linux folds into the child's ru_maxrss at fork + exec).
_RSS_CODE = """
import sys
from jointembed_pg.model import preprocess

def hwm_mb():
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM")) // 1024

base = hwm_mb()
x = preprocess.load(sys.argv[1])
assert x.shape == (3, 224, 224), x.shape
print(hwm_mb() - base, hwm_mb())
"""


def _decode_rss(path) -> tuple[int, int]:
    """(peak RSS growth, peak RSS) in MB of a fresh process decoding ``path``."""
    p = subprocess.run([sys.executable, "-c", _RSS_CODE, str(path)], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    growth, peak = map(int, p.stdout.split())
    return growth, peak


@scenario(f"{HUGE:,} x {HUGE:,} valid images (under the {MAX_PIXELS:,}-pixel limit): a JPEG (in the batch) "
          "and a PNG (no DCT downscale possible)",
          f"embedded; decoding peak RSS growth < {MAX_RSS_GROWTH_MB} MB each", "bad input")
def test_huge_valid_image_memory_bounded(image_run, corpus, bundle, observe, tmp_path, flickr8k_dir):
    files, src = corpus
    _stored_equals_runtime(image_run, bundle, "huge.jpg", files["huge"])
    tile = np.asarray(Image.open(src[0]).convert("RGB").resize((500, 500)))
    reps = HUGE // 500
    png = _save(Image.fromarray(np.tile(tile, (reps, reps, 1))), tmp_path / "huge.png", "PNG", compress_level=1)
    seen = []
    for path in (files["huge"], png):
        growth, peak = _decode_rss(path)
        assert growth < MAX_RSS_GROWTH_MB, (path, growth)
        seen.append(f"{path.suffix[1:].upper()} growth {growth} MB (peak {peak} MB)")
    observe("JPEG embedded in the batch run; decoding peak RSS: " + "; ".join(seen))


# -- captions ------------------------------------------------------------------------

_LONG = " ".join(["dog"] * 5000)
_MIXED = "Ein Hund 🐕 läuft am Strand — 海滩上的狗 — собака на пляже — كلب على الشاطئ 🌊"


@pytest.fixture(scope="module")
def text_run(tmp_path_factory, flickr8k_dir, module_pg_dsn, bundle_dir):
    lines = (flickr8k_dir / "Flickr8k.token.txt").read_bytes().splitlines()[:3]
    body = [*lines, b"empty.jpg#0\t", b"blank.jpg#0\t   \t  ", ("long.jpg#0\t" + _LONG).encode(),
            ("mixed.jpg#0\t" + _MIXED).encode(), b"badutf8.jpg#0\tA dog \xff\xfe runs \xc3\x28 fast"]
    path = tmp_path_factory.mktemp("captions") / "captions.txt"
    path.write_bytes(b"\n".join(body) + b"\n")
    p = cli(["index", "texts", path, "--collection", "bad", "--dsn", module_pg_dsn, "--bundle", bundle_dir,
             "--json", "--no-progress"])
    report = json.loads(p.stdout)
    failed = {f["key"]: f["error"] for f in report["failed"]}
    stored = {k: e for k, _h, _m, e in stored_items(module_pg_dsn, "bad", "text")}
    return p, report, failed, stored


@scenario("Empty and whitespace-only captions", "failed: 'empty caption'; the other captions embedded; "
          "exit 3", "bad input")
def test_empty_captions(text_run, observe):
    p, rep, failed, stored = text_run
    assert p.returncode == 3
    assert "empty caption" in failed["empty.jpg#0"] and "empty caption" in failed["blank.jpg#0"]
    assert len(stored) == 5 and rep["written"] == 5 and len(rep["failed"]) == 3
    observe(f"exit 3; {failed['empty.jpg#0']}; {failed['blank.jpg#0']}; 5 of 8 embedded")


@scenario("Invalid UTF-8 bytes in a caption file", "that line failed: 'invalid UTF-8 (... at byte N)'",
          "bad input")
def test_invalid_utf8_caption(text_run, observe):
    _p, _rep, failed, _stored = text_run
    (key, err), = [(k, e) for k, e in failed.items() if "UTF-8" in e]
    assert key.startswith("captions.txt:") and "invalid UTF-8" in err
    observe(err)


@scenario("5,000-word caption", "truncated to max_tokens with a TruncationWarning; embedded", "bad input")
def test_long_caption_truncated_with_warning(text_run, bundle, observe):
    p, _rep, _failed, stored = text_run
    assert "long.jpg#0" in stored
    assert "TruncationWarning" in p.stderr and "tokens were dropped" in p.stderr
    with pytest.warns(UserWarning, match="tokens were dropped"):
        ref = bundle.encode_texts([_LONG])[0]
    _close(stored["long.jpg#0"], ref)
    line = next(ln for ln in p.stderr.splitlines() if "tokens were dropped" in ln)
    observe(f"embedded; warning: {line.split('TruncationWarning: ')[-1][:110]}")


@scenario("Emoji + mixed scripts caption", "embedded, text stored unchanged", "bad input")
def test_emoji_mixed_scripts_caption(text_run, bundle, module_pg_dsn, observe):
    _p, _rep, _failed, stored = text_run
    _close(stored["mixed.jpg#0"], bundle.encode_texts([_MIXED])[0])
    with psycopg.connect(module_pg_dsn) as conn:
        text = conn.execute(sql.SQL("SELECT text FROM {} WHERE key = 'mixed.jpg#0'").format(
            items_table(conn, "bad"))).fetchone()[0]
    assert text == _MIXED
    observe("embedded; text round-trips byte for byte")


@scenario("A directory given where a file is expected (`index texts DIR`)",
          "exit 1, one line: 'is a directory, not a caption file'", "bad input")
def test_directory_instead_of_file(tmp_path, module_pg_dsn, bundle_dir, observe):
    p = cli(["index", "texts", tmp_path, "--dsn", module_pg_dsn, "--bundle", bundle_dir])
    line = one_line_error(p)
    assert "is a directory" in line
    observe(f"exit 1: {line}")


# -- attached table with NULLs ------------------------------------------------------

@scenario("NULLs (and a directory path) in an attached table's columns",
          "`sync` exit 3; NULL text / NULL image / directory recorded as failed with reasons, "
          "given up (not retried); other rows embedded", "bad input")
def test_nulls_in_attached_table(pg_dsn, bundle_dir, flickr8k_dir, tmp_path, observe):
    imgs = flickr_images(flickr8k_dir, 3, start=200)
    (tmp_path / "adir").mkdir()
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE photos (id int PRIMARY KEY, caption text, image_path text)")
        conn.cursor().executemany("INSERT INTO photos VALUES (%s, %s, %s)",
                         [(1, "a dog on the grass", str(imgs[0])), (2, None, str(imgs[1])),
                          (3, "two children play", None), (4, None, None), (5, "a red car", str(tmp_path / "adir"))])
    args = ["--dsn", pg_dsn, "--bundle", bundle_dir]
    p = cli(["attach", "--table", "photos", "--key", "id", "--text-column", "caption",
             "--image-column", "image_path", *args])
    assert p.returncode == 0, p.stderr
    p = cli(["sync", "--table", "photos", "--json", "--no-progress", *args])
    assert p.returncode == 3, p.stderr
    rep = json.loads(p.stdout)
    failed = {(f["key"], f["modality"]): f["error"] for f in rep["failed"]}
    assert set(failed) == {("2", "text"), ("3", "image"), ("4", "text"), ("4", "image"), ("5", "image")}, failed
    assert "NULL" in failed[("2", "text")] and "NULL" in failed[("3", "image")]
    assert "is a directory" in failed[("5", "image")]
    assert rep["written"] == 5                                      # 1: both, 2: image, 3: text, 5: text
    st = json.loads(cli(["status", "--table", "photos", "--json", "--dsn", pg_dsn]).stdout)
    assert st["done"] == 5 and st["failed"] == 5
    observe(f"exit 3; written {rep['written']}, failed {len(failed)}: {failed[('2', 'text')]}; "
            f"{failed[('5', 'image')]}")
