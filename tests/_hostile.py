"""The hostile-input corpus: files, caption lines and table values an attacker controls.

:func:`build_images` writes the image corpus into a directory (the image root of the
attached-table runs too), :func:`caption_files` the caption corpus (one JSONL, one CSV,
one Flickr8K token file). Every entry is a :class:`Case`: its name (file name, caption
id or table key), the attack, where it applies and what must happen:

* ``stored``: embedded and stored (a control, or an odd-but-valid input);
* ``failed``: recorded as failed, the reason containing ``needle``;
* ``ignored``: not taken as an image by the folder scan, reported by kind (``needle``).

Nothing here is big on disk or in memory: bombs are small files that *declare* or
*decompress to* huge images (written by streaming zlib), oversized files are sparse.
"""
from __future__ import annotations

import io
import os
import socket
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from jointembed_pg.limits import MAX_FILE_BYTES, MAX_KEY_BYTES, MAX_PIXELS, MAX_TEXT_CHARS


@dataclass(frozen=True)
class Case:
    """One hostile input. ``where``: which runs see it (``scan``: `index images` of the
    folder; ``table``: the attached table's path column; ``bytea``: its bytea column;
    ``text``: caption files; ``tabletext``: the attached table's text column)."""

    name: str
    attack: str
    expect: str          # stored | failed | ignored
    needle: str = ""     # alternatives separated by "|" (e.g. the reason with and without an image root)
    where: tuple[str, ...] = ("scan", "table")


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_bomb(w: int, h: int, *, bit_depth: int = 8, color: int = 6, header_only: bool = False) -> bytes:
    """A valid PNG of ``w`` x ``h`` zero pixels (color type ``color``: 0 grey, 2 RGB, 6 RGBA),
    zlib-compressed row by row (kilobytes on disk); ``header_only``: an IHDR and a stub IDAT."""
    sig = b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, bit_depth, color, 0, 0, 0))
    if header_only:
        return sig + _chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + _chunk(b"IEND", b"")
    channels = {0: 1, 2: 3, 4: 2, 6: 4}[color]
    row = b"\x00" * (1 + w * channels * bit_depth // 8)
    z, parts = zlib.compressobj(9), []
    for _ in range(h):
        parts.append(z.compress(row))
    parts.append(z.flush())
    return sig + _chunk(b"IDAT", b"".join(parts)) + _chunk(b"IEND", b"")


def gif_bomb(w: int, h: int) -> bytes:
    """A GIF whose logical screen and only frame claim ``w`` x ``h`` (data: one tiny block)."""
    head = b"GIF89a" + struct.pack("<HHBBB", w, h, 0x80, 0, 0) + b"\x00\x00\x00\xff\xff\xff"
    frame = b"," + struct.pack("<HHHHB", 0, 0, w, h, 0) + b"\x02\x02\x44\x01\x00"
    return head + frame + b";"


def tiff_bomb(w: int, h: int) -> bytes:
    """A little-endian TIFF declaring ``w`` x ``h`` 8-bit greyscale, uncompressed, one strip."""
    entries = [(256, 4, 1, w), (257, 4, 1, h), (258, 3, 1, 8), (259, 3, 1, 1), (262, 3, 1, 1),
               (273, 4, 1, 8 + 2 + 12 * 9 + 4), (277, 3, 1, 1), (278, 4, 1, h), (279, 4, 1, min(w * h, 2**32 - 1))]
    ifd = struct.pack("<H", len(entries)) + b"".join(struct.pack("<HHII", *e) for e in entries) + b"\x00" * 4
    return b"II*\x00" + struct.pack("<I", 8) + ifd + b"\x00" * 1024


def bmp_bomb(w: int, h: int) -> bytes:
    """A BMP header declaring ``w`` x ``h`` 24-bit pixels, followed by a few bytes."""
    info = struct.pack("<IiiHHIIiiII", 40, w, h, 1, 24, 0, 0, 2835, 2835, 0, 0)
    return b"BM" + struct.pack("<IHHI", 14 + 40 + 64, 0, 0, 54) + info + b"\x00" * 64


def webp_bomb(w: int, h: int) -> bytes:
    """A lossless WebP whose VP8L header is patched to claim ``w`` x ``h`` (<= 16384)."""
    buf = io.BytesIO()
    Image.new("RGBA", (16, 16), (1, 2, 3, 128)).save(buf, "WEBP", lossless=True)
    d = bytearray(buf.getvalue())
    j = d.find(b"VP8L") + 9
    bits = int.from_bytes(d[j:j + 4], "little")
    bits = (bits & ~((1 << 28) - 1)) | (w - 1) | ((h - 1) << 14)
    d[j:j + 4] = bits.to_bytes(4, "little")
    return bytes(d)


def jpeg_bomb(w: int, h: int, *, progressive: bool = False) -> bytes:
    """A small real JPEG whose SOF is patched to claim ``w`` x ``h`` (data then runs out)."""
    buf = io.BytesIO()
    Image.new("RGB", (64, 64), (10, 200, 30)).save(buf, "JPEG", quality=50, progressive=progressive)
    d = bytearray(buf.getvalue())
    sof = next(i for i in range(2, len(d) - 9) if d[i] == 0xFF and d[i + 1] in (0xC0, 0xC2))
    d[sof + 5:sof + 9] = struct.pack(">HH", h, w)
    return bytes(d)


def ico_bomb(inner: int) -> bytes:
    """An ICO whose directory says 16 x 16 but whose PNG payload is ``inner`` x ``inner`` RGBA."""
    png = png_bomb(inner, inner, color=6)
    entry = struct.pack("<BBBBHHII", 16, 16, 0, 0, 1, 32, len(png), 6 + 16)
    return struct.pack("<HHH", 0, 1, 1) + entry + png


def image_cases() -> list[Case]:
    """The image cases without writing anything (names, attacks, expectations)."""
    return build_images(None, [])


def build_images(root: Path | None, good: list[Path]) -> list[Case]:
    """Write the image corpus into ``root`` (created) from real photos ``good`` (>= 3).

    Returns the cases; names are paths relative to ``root``. ``root/../outside`` holds
    files the symlink escapes point at. ``root=None`` only lists the cases.
    """
    write = root is not None
    if write:
        root.mkdir(parents=True)
        outside = root.parent / "outside"
        outside.mkdir()
        photo = Image.open(good[0]).convert("RGB")
        jpg = good[0].read_bytes()
    else:
        root = outside = Path("/nonexistent")
        photo, jpg = None, b""
    cases: list[Case] = []

    def put(name: str, data, attack: str, expect: str, needle: str = "", where=("scan", "table", "bytea")):
        if write:
            (root / name).write_bytes(data() if callable(data) else data)
        cases.append(Case(name, attack, expect, needle, where))

    def enc(img: Image.Image, fmt: str, **kw) -> bytes:
        b = io.BytesIO()
        img.save(b, fmt, **kw)
        return b.getvalue()

    # controls and odd-but-valid images
    put("good.jpg", jpg, "control: a real photo", "stored")
    put("good2.jpg", lambda: good[1].read_bytes(), "control: another real photo", "stored")
    put("png_named.jpg", lambda: enc(photo, "PNG"), "PNG content under a .jpg name", "stored")
    put("photo.avif", lambda: enc(photo.resize((320, 240)), "AVIF"), "AVIF (Pillow decodes it: scanned)", "stored")
    ex = Image.Exif()
    ex[0x0112] = 99
    put("bad_orientation.jpg", lambda: enc(photo, "JPEG", exif=ex.tobytes()), "EXIF orientation 99 (invalid)", "stored")
    # broken files
    put("zero.jpg", b"", "zero-byte file", "failed", "empty")
    put("truncated.jpg", lambda: jpg[: len(jpg) // 2], "JPEG cut in half", "failed", "truncated")
    put("soi_only.jpg", b"\xff\xd8\xff", "JPEG start marker only", "failed", "image")
    put("notes.jpg", b"shopping list: eggs, milk\n", "text file named .jpg", "failed", "not a readable image")
    put("bad_ihdr.png", b"\x89PNG\r\n\x1a\n" + b"\x00\x00\x00\x0dIHDR" + b"\xff" * 13, "PNG with a corrupt IHDR",
        "failed", "image")

    def corrupt_png() -> bytes:
        png = bytearray(enc(photo, "PNG"))
        at = png.find(b"IDAT") + 200
        png[at:at + 32] = bytes(b ^ 0xFF for b in png[at:at + 32])
        return bytes(png)

    put("corrupt_idat.png", corrupt_png, "PNG with corrupt IDAT data", "failed", "corrupt")
    put("gif_header.gif", b"GIF89a\x10\x00\x10\x00", "GIF header only", "failed", "image")
    put("tiff_bad_strips.tif", tiff_bomb(64, 64)[:200], "TIFF whose strip runs past the end", "failed", "image")

    def ztxt_bomb() -> bytes:
        zt = enc(photo.resize((64, 64)), "PNG")
        return zt[:33] + _chunk(b"zTXt", b"Comment\x00\x00" + zlib.compress(b"A" * (64 << 20), 9)) + zt[33:]

    put("ztxt_bomb.png", ztxt_bomb, "PNG with a 64 MiB zTXt text bomb", "failed", "image")
    # decompression bombs: declared sizes over the limit (refused before decoding)
    put("bomb_png_50k.png", png_bomb(50_000, 50_000, header_only=True), "PNG declaring 50,000 x 50,000",
        "failed", "pixel")
    put("bomb_png16.png", lambda: png_bomb(8_000, 8_000, bit_depth=16, color=0), "16-bit PNG, 8,000 x 8,000 of zeros "
        "(real data, 64 Mpx)", "failed", "pixel")
    put("bomb_gif.gif", gif_bomb(65_535, 65_535), "GIF declaring 65,535 x 65,535", "failed", "pixel")
    put("bomb_tiff.tif", tiff_bomb(100_000, 100_000), "TIFF declaring 100,000 x 100,000", "failed", "pixel")
    put("bomb_bmp.bmp", bmp_bomb(50_000, 50_000), "BMP declaring 50,000 x 50,000", "failed", "pixel")
    put("bomb_webp.webp", webp_bomb(16_383, 16_383), "WebP declaring 16,383 x 16,383", "failed", "pixel")
    put("bomb_jpeg.jpg", jpeg_bomb(60_000, 60_000), "JPEG declaring 60,000 x 60,000", "failed", "pixel")
    put("bomb_jpeg_prog.jpg", jpeg_bomb(9_000, 9_000, progressive=True),
        "progressive JPEG declaring 9,000 x 9,000 (full-size coefficient buffers)", "failed", "pixel")
    put("bomb_ico.ico", lambda: ico_bomb(8_000), "ICO saying 16 x 16 holding an 8,000 x 8,000 PNG", "failed", "pixel")
    # bombs under the limit: real data that decodes to a bounded size (memory is measured)
    side = int((MAX_PIXELS * 0.9) ** 0.5)
    put("near_limit_rgba.png", lambda: png_bomb(side, side, color=6), f"RGBA PNG of zeros, {side} x {side} "
        "(just under the pixel limit; ~100 KB on disk)", "stored")
    put("near_limit_16bit.png", lambda: png_bomb(side, side, bit_depth=16, color=0), f"16-bit grey PNG of zeros, "
        f"{side} x {side}", "stored")
    if write:
        _write_special(root, outside, good, jpg)
    # oversized file (sparse: no disk used), refused before reading
    cases.append(Case("huge_sparse.jpg", f"file of {MAX_FILE_BYTES + 1} bytes (sparse)", "failed", "-byte limit"))
    # not regular files
    cases.append(Case("fifo.jpg", "FIFO named .jpg (a read would block forever)", "failed", "FIFO"))
    cases.append(Case("sock.jpg", "Unix socket named .jpg", "failed", "socket"))
    cases.append(Case("zero_dev.jpg", "symlink to /dev/zero (endless bytes)", "failed",
                      "character device|leaves the image root"))
    cases.append(Case("urandom.png", "symlink to /dev/urandom", "failed", "character device|leaves the image root"))
    cases.append(Case("dir.jpg", "directory named .jpg", "failed", "directory", ("table",)))
    cases.append(Case("dangling.jpg", "dangling symlink", "failed", "no such file"))
    # links: inside the root is fine, pointing outside is refused below an image root
    cases.append(Case("link_inside.jpg", "symlink to a file inside the root", "stored"))
    cases.append(Case("escape.jpg", "symlink to a file outside the image root", "failed", "leaves the image root",
                      ("table",)))
    cases.append(Case("escdir/secret.jpg", "path through a symlinked directory leading outside", "failed",
                      "leaves the image root", ("table",)))
    cases.append(Case("escdir", "symlink to a directory in a scanned folder", "ignored", "not followed", ("scan",)))
    # file names
    bad_name = os.fsdecode(b"bad_\xff\xfe.jpg")
    cases.append(Case(bad_name, "file name that is not valid UTF-8", "failed", "not valid Unicode", ("scan",)))
    cases.append(Case("new\nline.jpg", "newline in a file name", "stored", "", ("scan",)))
    deep = root / ("d" * 200)
    for _ in range((MAX_KEY_BYTES // 201) + 1):
        deep = deep / ("d" * 200)
    cases.append(Case(str((deep / "long.jpg").relative_to(root)), f"path longer than {MAX_KEY_BYTES} bytes",
                      "failed", "-byte limit", ("scan",)))
    # files the scan must report, not take (and an explicitly refused format)
    for name, kind in [("photo.heic", ".heic (no decoder)"), ("drawing.svg", ".svg (no decoder)"),
                       ("readme.txt", ".txt"), ("vector.eps", ".eps (no decoder)"), ("noext", "(no suffix)")]:
        cases.append(Case(name, f"{name.rsplit('.', 1)[-1]} file in a scanned folder", "ignored", kind, ("scan",)))
    return cases


def _write_special(root: Path, outside: Path, good: list[Path], jpg: bytes) -> None:
    """The corpus entries that are not plain files: devices, FIFOs, sockets, links, names."""
    with open(root / "huge_sparse.jpg", "wb") as f:
        f.truncate(MAX_FILE_BYTES + 1)
    os.mkfifo(root / "fifo.jpg")
    s = socket.socket(socket.AF_UNIX)
    s.bind(str(root / "sock.jpg"))
    s.close()
    (root / "zero_dev.jpg").symlink_to("/dev/zero")
    (root / "urandom.png").symlink_to("/dev/urandom")
    (root / "dir.jpg").mkdir()
    (root / "dangling.jpg").symlink_to(root / "nothing-here.jpg")
    (outside / "secret.jpg").write_bytes(good[2].read_bytes())
    (root / "link_inside.jpg").symlink_to(root / "good.jpg")
    (root / "escape.jpg").symlink_to(outside / "secret.jpg")
    (root / "escdir").symlink_to(outside, target_is_directory=True)
    (root / os.fsdecode(b"bad_\xff\xfe.jpg")).write_bytes(jpg)
    (root / "new\nline.jpg").write_bytes(good[1].read_bytes())
    deep = root / ("d" * 200)
    for _ in range((MAX_KEY_BYTES // 201) + 1):
        deep = deep / ("d" * 200)
    deep.mkdir(parents=True)
    (deep / "long.jpg").write_bytes(jpg)
    for name in ("photo.heic", "drawing.svg", "readme.txt", "noext"):
        (root / name).write_bytes(b"not an image\n")
    (root / "vector.eps").write_bytes(b"%!PS-Adobe-3.0 EPSF-3.0\n")


def table_only_cases(root: Path) -> list[Case]:
    """Values of an attached table's path column that are not files of the corpus."""
    return [
        Case("../outside/secret.jpg", "'..' out of the image root", "failed", "leaves the image root", ("table",)),
        Case("sub/../good.jpg", "'..' that comes back inside", "failed", "leaves the image root", ("table",)),
        Case(str(root.parent / "outside" / "secret.jpg"), "absolute path", "failed", "absolute path", ("table",)),
        Case("/dev/zero", "absolute path to /dev/zero", "failed", "absolute path", ("table",)),
        Case("~root/.ssh/id_rsa", "home-relative path", "failed", "absolute path", ("table",)),
        Case("x" * 5000 + ".jpg", "5,000-character file name", "failed", "cannot read", ("table",)),
        Case("   ", "whitespace-only path", "failed", "empty", ("table",)),
    ]


#: Captions: (id, text or raw bytes line, attack, expect, needle). The same list goes into
#: JSONL (JSON-encoded), CSV (quoted) and the token file (TAB-separated), except the
#: entries marked for one format.
def caption_cases() -> list[tuple[str, object, str, str, str, tuple[str, ...]]]:
    big = "a dog runs on the beach " * (1_000_000 // 24)
    return [
        ("ok1", "a dog runs on the beach", "control caption", "stored", "", ("jsonl", "csv", "tok")),
        ("ok2", "two children play in the snow", "control caption", "stored", "", ("jsonl", "csv", "tok")),
        ("bidi", "a cat \u202eesrever\u202c \u200b sits", "bidi override and zero-width characters", "stored", "",
         ("jsonl", "csv", "tok")),
        ("ctrl", "\x01\x02 a bell \x07 rings", "control characters", "stored", "", ("jsonl", "csv", "tok")),
        ("nul", "a dog\x00 barks", "NUL character in a caption", "failed", "NUL", ("jsonl", "csv", "tok")),
        ("nul\x00id", "a red car", "NUL character in an id", "failed", "NUL", ("jsonl", "csv", "tok")),
        ("surrogate", "a bird \ud800 flies", "lone surrogate (JSON \\ud800)", "failed", "lone surrogate", ("jsonl",)),
        ("surr\udfffid", "a boat", "lone surrogate in an id", "failed", "lone surrogate", ("jsonl",)),
        ("badutf8", b"a horse \xff\xfe gallops", "invalid UTF-8 bytes", "failed", "invalid UTF-8",
         ("jsonl", "csv", "tok")),
        ("empty", "   ", "whitespace-only caption", "failed", "empty caption", ("jsonl", "csv", "tok")),
        ("mb", big, "1 MB caption", "failed", "character limit", ("jsonl", "csv", "tok")),
        ("longline", "y" * (9 * MAX_TEXT_CHARS), "line over the line limit (1.2 MB)", "failed", "line longer",
         ("tok",)),
        ("k" * (MAX_KEY_BYTES + 1), "an overlong id", f"id of {MAX_KEY_BYTES + 1} bytes", "failed", "-byte limit",
         ("jsonl", "csv", "tok")),
        ("objid", "a kite", "id that is a JSON object", "failed", "string or a number", ("jsonl",)),
        ("nested", "a plane", "JSON nested 100,000 deep", "failed", "invalid JSON", ("jsonl",)),
    ]


def caption_files(root: Path) -> dict[str, Path]:
    """Write ``captions.jsonl``, ``captions.csv`` and ``captions.txt`` (token file) into ``root``."""
    import json

    root.mkdir(parents=True, exist_ok=True)
    out = {"jsonl": [], "csv": [b"id,text"], "tok": []}
    for key, text, _attack, _expect, _needle, fmts in caption_cases():
        raw = text if isinstance(text, bytes) else None
        if "jsonl" in fmts:
            if key == "objid":
                out["jsonl"].append(json.dumps({"id": {"x": 1}, "text": text}).encode())
            elif key == "nested":
                out["jsonl"].append(b"[" * 100_000 + b"]" * 100_000)
            elif raw is not None:
                out["jsonl"].append(b'{"id": "' + key.encode() + b'", "text": "' + raw + b'"}')
            else:
                out["jsonl"].append(json.dumps({"id": key, "text": text}).encode())
        if "csv" in fmts:
            body = raw if raw is not None else str(text).encode("utf-8", "surrogatepass")
            out["csv"].append(key.encode("utf-8", "surrogatepass") + b',"' + body.replace(b'"', b'""') + b'"')
        if "tok" in fmts:
            body = raw if raw is not None else str(text).encode("utf-8", "surrogatepass")
            out["tok"].append(key.encode("utf-8", "surrogatepass") + b"\t" + body)
    paths = {}
    for fmt, name in (("jsonl", "captions.jsonl"), ("csv", "captions.csv"), ("tok", "captions.txt")):
        paths[fmt] = root / name
        paths[fmt].write_bytes(b"\n".join(out[fmt]) + b"\n")
    return paths
