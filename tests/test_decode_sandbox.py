"""Every image decode in a bounded decoder process (issue 23, item 3).

Each hostile payload below goes through a decoder process (``jointembed_pg.model.decoder``)
and must either succeed with the process's peak RSS (``VmHWM``) <= 512 MiB, or fail with a
one-line reason, through ``index images``, ``search image`` and ``sync`` of a bytea table
(CLI), the Python ``Collection.search(Path)`` / ``Bundle.encode_images(bytes)``, and the bytea/path sources
of ``sync``/``worker``. The payloads are crafted small (zlib-compressed equal rows, solid
colours): writing all of them takes a few seconds, and most of the module's time is
the CLI runs. Also: ``/proc`` and
``/sys`` pseudo-files are refused with their reason, and the bounded preprocessing gives
the same pixels as the plain ``decode -> resize_shorter -> center_crop`` path.
"""
from __future__ import annotations

import io
import json
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from jointembed_pg.errors import InputError, JointEmbedError
from jointembed_pg.ingest.sources import ImageSource
from jointembed_pg.limits import Limits
from jointembed_pg.model import preprocess
from jointembed_pg.model.decoder import ImageJob, ImageLoader, bytes_job, shared_loader
from test_hostile_corpus import run_measured
from test_reliability_support import cli, one_line_error, scenario

pytest_plugins = ["_reliability"]

MAX_RSS = 512 << 20


def _png(w: int, h: int, *, ctype: int = 2, depth: int = 8, icc: bytes | None = None, rows: int | None = None) -> bytes:
    """A ``w`` x ``h`` PNG of equal zero rows (colour type ``ctype``, ``depth`` bits), written
    without holding the raw pixels: a few hundred bytes for a 200000x1 or 1x39M image.
    ``rows``: write only that many rows (a header that is refused before any decoding)."""
    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    channels = {0: 1, 2: 3, 4: 2, 6: 4}[ctype]
    row = b"\x00" * (1 + (w * channels * depth + 7) // 8)
    z = zlib.compressobj(9 if len(row) * h < 1 << 26 else 1)  # small files; fast for the big ones
    per = max(1, (1 << 22) // len(row))
    block, parts, left = row * per, [], h if rows is None else rows
    while left:
        k = min(left, per)
        parts.append(z.compress(block if k == per else row * k))
        left -= k
    parts.append(z.flush())
    extra = chunk(b"iCCP", b"icc\x00\x00" + zlib.compress(icc, 9)) if icc is not None else b""
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, depth, ctype, 0, 0, 0)) + extra
            + chunk(b"IDAT", b"".join(parts)) + chunk(b"IEND", b""))


def _tiff(w: int, h: int) -> bytes:
    """A ``w`` x ``h`` 8-bit grey TIFF, one deflate strip of zeros (crafted: fast to write)."""
    strip = zlib.compress(b"\x00" * (w * h), 1)
    tags = [(256, 4, w), (257, 4, h), (258, 3, 8), (259, 3, 8), (262, 3, 1), (273, 4, 0), (277, 3, 1),
            (278, 4, h), (279, 4, len(strip))]
    offset = 8 + 2 + 12 * len(tags) + 4
    ifd = struct.pack("<H", len(tags)) + b"".join(
        struct.pack("<HHI", tag, typ, 1) + (struct.pack("<I", offset if tag == 273 else val) if typ == 4
                                            else struct.pack("<HH", val, 0))
        for tag, typ, val in tags) + struct.pack("<I", 0)
    return b"II*\x00" + struct.pack("<I", 8) + ifd + strip


def _saved(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def _gif_frames() -> bytes:
    frames = [Image.new("L", (200, 200), i % 256) for i in range(300)]
    return _saved(frames[0], "GIF", save_all=True, append_images=frames[1:], loop=0, duration=10)


#: name -> (bytes factory, "ok" | "fail" | "either"): what a decoder must do with it.
PAYLOADS = {
    "png_20000x2": (lambda: _png(20000, 2), "ok"),  # issue: 2.14 GB in the search CLI
    "png_200000x1": (lambda: _png(200000, 1), "ok"),  # issue: asked for ~30 GB, traceback
    "webp_6000x6000_lossless": (lambda: _saved(Image.new("RGB", (6000, 6000)), "WEBP", lossless=True), "either"),
    "tiff_1x39M": (lambda: _tiff(1, 39_000_000), "either"),
    "jpeg_cmyk_6300x6300": (lambda: _saved(Image.new("CMYK", (6300, 6300), (10, 200, 30, 5)), "JPEG"), "ok"),
    "png_16bit_grey_6000x6000": (lambda: _png(6000, 6000, ctype=0, depth=16), "either"),
    "png_16bit_rgba_6000x6000": (lambda: _png(6000, 6000, ctype=6, depth=16), "either"),
    "gif_300_frames_200x200": (_gif_frames, "ok"),
    "png_16MB_icc_bomb": (lambda: _png(64, 64, icc=b"\x00" * (16 << 20)), "either"),
    "jpeg_8MB_icc": (lambda: _saved(Image.new("RGB", (64, 64)), "JPEG", icc_profile=b"\x01" * (8 << 20)), "either"),
    "png_bomb_1x39M": (lambda: _png(1, 39_000_000, ctype=0), "either"),
    "png_bomb_39Mx1_rgba": (lambda: _png(39_000_000, 1, ctype=6), "either"),
    "png_bomb_1x100M": (lambda: _png(1, 100_000_000, ctype=0, rows=1000), "fail"),  # over the 40 MP cap
}


def _file(name: str) -> str:
    """``png_20000x2.png``: the payload's file name (a suffix a folder scan takes)."""
    return f"{name}.{ {'tiff': 'tif'}.get(name.split('_')[0], name.split('_')[0]) }"


@pytest.fixture(scope="module")
def payloads(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("bombs")
    for name, (make, _) in PAYLOADS.items():
        (d / _file(name)).write_bytes(make())
    return d


def _one_line(reason: str) -> None:
    assert "\n" not in reason and "Traceback" not in reason and reason.strip(), reason


@scenario("Decode bomb in a decoder process (as a file, a bytea value, query bytes): the payload named",
          "succeeds, or fails with a one-line reason; decoder peak RSS <= 512 MiB", "security")
@pytest.mark.parametrize("name", sorted(PAYLOADS))
def test_payload_bounded_in_a_decoder_process(payloads, name, observe):
    """Each payload in a fresh decoder process: succeeds or fails with one line; peak RSS <= 512 MiB."""
    want = PAYLOADS[name][1]
    path = payloads / _file(name)
    jobs = [ImageJob(where=name, path=str(path)),  # index, search image: a file
             ImageJob(where=name, source=ImageSource("bytea", max_bytes=64 << 20), value=path.read_bytes())]  # sync
    if path.stat().st_size < 1 << 20 and "6000" not in name:  # the query bytes of Bundle.encode_images
        jobs.append(bytes_job(path.read_bytes(), name))
    with ImageLoader(preprocess.ImageSpec(), Limits(), workers=1) as loader:
        for job in jobs:
            try:
                pixels = loader.load(job).pixels
                outcome = "ok"
                assert pixels is not None and pixels.shape == (3, 224, 224) and np.isfinite(pixels).all()
            except InputError as e:
                outcome, reason = "fail", str(e)[len(name) + 2:]
                _one_line(str(e))
                assert str(e).startswith(name), str(e)
            assert want in (outcome, "either"), (name, outcome)
        peak = loader.peak_rss
    print(f"{name}: {path.stat().st_size} bytes, {outcome}, decoder peak RSS {peak / 2**20:.0f} MiB")
    observe(f"{name} ({path.stat().st_size} bytes): {outcome}" + (f" ({reason})" if outcome == "fail" else "")
            + f"; decoder peak RSS {peak / 2**20:.0f} MiB")
    assert 0 < peak <= MAX_RSS, (name, peak / 2**20)


def test_memory_limit_is_the_one_knob(payloads, monkeypatch):
    """JOINTEMBED_DECODE_MEMORY_MB (default 512) bounds both the estimate and the process."""
    assert Limits().memory_mb == 512
    monkeypatch.setenv("JOINTEMBED_DECODE_MEMORY_MB", "128")
    limits = Limits.from_env()
    assert limits.memory_mb == 128
    with ImageLoader(preprocess.ImageSpec(), limits, workers=1) as loader:
        with pytest.raises(InputError, match=r"needs about \d+ MiB to decode, over the decoder's 128 MiB limit"):
            loader.load(ImageJob(where="rgba", path=str(payloads / _file("png_16bit_rgba_6000x6000"))))
        assert loader.peak_rss <= 128 << 20


@scenario("A /proc or /sys pseudo-file (/proc/kmsg: size 0, blocks, consumed when read) as a row path or "
          "a CLI path", "refused before opening with a one-line reason (no TypeError)", "security")
@pytest.mark.parametrize("path", ["/proc/kmsg", "/proc/self/status", "/sys/kernel/mm/transparent_hugepage/enabled"])
def test_pseudo_files_refused_with_a_reason(path, observe):
    """A /proc or /sys pseudo-file as a row path or a CLI path: refused before opening, one line."""
    if not Path(path).exists():
        pytest.skip(f"{path} absent here")
    with pytest.raises(InputError, match="pseudo-file") as e:
        ImageSource("path").read(path, "t[1].image")
    _one_line(str(e.value))
    observe(str(e.value))
    with pytest.raises(InputError, match="pseudo-file"):
        shared_loader(preprocess.ImageSpec(), Limits()).load(ImageJob(where=path, path=path))


@scenario("The issue's payloads through Python `Collection.search(Path)` and `Bundle.encode_images(bytes)`",
          "decoded in a decoder process (not the caller); one-line reasons; decoder peak RSS <= 512 MiB", "security")
def test_python_search_and_encode_decode_in_a_decoder_process(payloads, pg_dsn, bundle, tmp_path, observe):
    """Collection.search(Path) and Bundle.encode_images(bytes) never decode in the caller:
    the caller's RSS does not grow by the image, the decoder's peak stays <= 512 MiB."""
    from jointembed_pg import Store
    from jointembed_pg.model import decoder

    good = tmp_path / "good.png"
    Image.new("RGB", (300, 200), (200, 30, 30)).save(good)
    with Store(pg_dsn) as store:
        coll = store.collection("bombs", bundle=bundle)
        coll.add_images([good]) if hasattr(coll, "add_images") else None
        for name in ("png_20000x2", "png_200000x1", "webp_6000x6000_lossless", "tiff_1x39M", "png_bomb_1x100M"):
            want, path = PAYLOADS[name][1], payloads / _file(name)
            try:
                coll.search(path, k=1, target="image")
                assert want in ("ok", "either"), name
            except JointEmbedError as e:
                _one_line(str(e))
                assert want in ("fail", "either"), (name, str(e))
        with pytest.raises(JointEmbedError) as e:
            bundle.encode_images(_png(1, 100_000_000, ctype=0, rows=10))
        _one_line(str(e.value))
    assert bundle.encode_images((payloads / _file("png_200000x1")).read_bytes()).shape == (bundle.dim,)
    loaders = [ld for ld in decoder._SHARED.values() if ld.peak_rss]
    assert loaders and max(ld.peak_rss for ld in loaders) <= MAX_RSS
    observe(f"decoder peak RSS {max(ld.peak_rss for ld in loaders) / 2**20:.0f} MiB")


@scenario("Every decode bomb through `index images` (CLI) and the issue's payloads through `search image` (CLI)",
          "no traceback, one-line reasons, exit 3 / 0 / 1; peak RSS of the CLI and its decoder processes <= 512 MB",
          "security")
def test_cli_index_and_search_image(payloads, pg_dsn, bundle_dir, tmp_path, observe):
    """``index images`` of the payload folder and ``search image`` of the issue's payloads:
    no traceback, one-line reasons, peak RSS of the CLI and of its decoders <= 512 MiB."""
    m = run_measured(["index", "images", payloads, "--collection", "bombs", "--dsn", pg_dsn, "--bundle", bundle_dir,
                      "--json", "--no-progress"], timeout=300)
    assert m.rc in (0, 3) and "Traceback" not in m.err, (m.rc, m.out[-2000:], m.err[-2000:])
    rep = json.loads(m.out)
    for f in rep["failed"]:
        _one_line(f["error"])
    failed = {Path(f["key"]).stem for f in rep["failed"]}
    assert {n for n, (_m, w) in PAYLOADS.items() if w == "fail"} <= failed
    assert not failed & {n for n, (_m, w) in PAYLOADS.items() if w == "ok"}
    assert m.peak_mb <= 512, (m.main_mb, m.child_mb)
    print(f"index: peak RSS CLI {m.main_mb} MB, decoders {m.child_mb} MB; failed {sorted(failed)}")
    observe(f"index images: exit {m.rc}, written {rep['written']}, failed {len(failed)}; peak RSS CLI {m.main_mb} MB, "
            f"decoders {m.child_mb} MB")
    for name in ("png_20000x2", "png_200000x1", "png_bomb_1x100M"):
        m = run_measured(["search", "image", payloads / _file(name), "--collection", "bombs", "--target", "image",
                          "--dsn", pg_dsn, "--bundle", bundle_dir, "--json"], timeout=120)
        assert "Traceback" not in m.err, m.err[-2000:]
        if PAYLOADS[name][1] == "ok":
            assert m.rc == 0, (m.rc, m.err[-2000:])
        else:
            lines = [ln for ln in m.err.splitlines() if ln.strip()]
            assert m.rc == 1 and len(lines) == 1, m.err
        assert m.peak_mb <= 512, (name, m.main_mb, m.child_mb)
        print(f"search image {name}: rc {m.rc}, peak RSS CLI {m.main_mb} MB, decoder {m.child_mb} MB")
        observe(f"search image {name}: exit {m.rc}, peak RSS CLI {m.main_mb} MB, decoder {m.child_mb} MB")
    p = cli(["search", "image", "/proc/self/status", "--collection", "bombs", "--dsn", pg_dsn, "--bundle", bundle_dir])
    assert "pseudo-file" in one_line_error(p)


def test_gallery_thumbnail_in_a_decoder_process(payloads, tmp_path):
    from jointembed_pg.evaluation.gallery import thumbnail_data_uri

    good = tmp_path / "good.png"
    Image.new("RGB", (300, 200), (200, 30, 30)).save(good)
    assert thumbnail_data_uri(good).startswith("data:image/jpeg;base64,")
    assert thumbnail_data_uri(payloads / _file("png_bomb_1x100M")) is None
    assert thumbnail_data_uri("/proc/self/status") is None


def _reference(path) -> np.ndarray:
    """The preprocessing before the bounds: full RGB decode, full resize, crop."""
    spec = preprocess.ImageSpec()
    img = preprocess.resize_shorter(preprocess.decode(path), spec.size, spec.interpolation)
    return preprocess.to_array(preprocess.center_crop(img, spec.size), spec.mean, spec.std)


@scenario("Bounded preprocessing vs the plain decode -> resize -> crop, on the first 200 Flickr8K images",
          "max abs diff of the (3, 224, 224) float32 encoder input <= 1/255", "security")
@pytest.mark.flickr8k
def test_same_pixels_on_200_flickr_images(flickr8k_dir, observe):
    """The bounded ``load`` gives the encoder the same input as before on real photos."""
    paths = sorted((flickr8k_dir / "images").glob("*.jpg"))[:200]
    assert len(paths) == 200
    worst = max(float(np.abs(preprocess.load(p) - _reference(p)).max()) for p in paths)
    print(f"200 Flickr8K images: max abs diff of the (3, 224, 224) float32 input {worst:g}")
    observe(f"max abs diff {worst:g}")
    assert worst <= 1 / 255


@pytest.mark.flickr8k
def test_centre_region_resize_matches_the_full_resize(flickr8k_dir):
    """``resize_center`` (used for extreme aspect ratios) vs the full resize + crop, on real
    photo content squeezed to strips: within 2 levels of 8 bits."""
    paths = sorted((flickr8k_dir / "images").glob("*.jpg"))[:20]
    worst = 0
    for p in paths:
        im = preprocess.decode(p)
        for w, h in [(im.width, 30), (30, im.height), (im.width * 6, 60), (50, im.height * 8), (230, 4000)]:
            x = im.resize((w, h), Image.Resampling.BILINEAR)
            full = np.asarray(preprocess.center_crop(preprocess.resize_shorter(x, 224), 224)).astype(int)
            box = preprocess.center_box(w, h, 224)
            worst = max(worst, int(np.abs(full - np.asarray(preprocess.resize_center(x, box, 224)).astype(int)).max()))
    print(f"centre-region resize vs full resize: max {worst} levels")
    assert worst <= 2


@scenario("Every decode bomb as a bytea row of an attached table, through `jointembed sync`",
          "exit 3, no traceback; each bomb row failed alone with a one-line reason, the others embedded; "
          "peak RSS of sync and its decoder processes <= 512 MB", "security")
def test_sync_bytea_rows(payloads, pg_dsn, bundle_dir, observe):
    import psycopg

    names = sorted(PAYLOADS)
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE bomb_rows (id int PRIMARY KEY, image bytea)")
        conn.cursor().executemany("INSERT INTO bomb_rows VALUES (%s, %s)",
                                  [(i, (payloads / _file(n)).read_bytes()) for i, n in enumerate(names)])
    args = ["--dsn", pg_dsn, "--bundle", bundle_dir]
    p = cli(["attach", "--table", "bomb_rows", "--key", "id", "--image-column", "image", "--image-source", "bytea",
             *args])
    assert p.returncode == 0, p.stderr
    m = run_measured(["sync", "--table", "bomb_rows", "--json", *args], timeout=300)
    assert m.rc == 3 and "Traceback" not in m.err, (m.rc, m.out[-2000:], m.err[-2000:])
    failed_text = m.out + m.err
    for i, n in enumerate(names):
        row = f"bomb_rows[{i}].image"
        if PAYLOADS[n][1] == "fail":
            assert row in failed_text, (n, failed_text[-3000:])
        if PAYLOADS[n][1] == "ok":
            assert row not in failed_text, (n, failed_text[-3000:])
    assert m.peak_mb <= 512, (m.main_mb, m.child_mb)
    observe(f"sync: exit {m.rc}; peak RSS sync {m.main_mb} MB, decoders {m.child_mb} MB")


def test_address_space_cap_holds_without_the_estimate(payloads):
    """The backstop alone: a process capped at 200 MiB that decodes the lossless WebP with no
    estimate (Pillow directly) fails to allocate, and its peak RSS stays under 200 MiB."""
    import subprocess
    import sys

    code = (
        "import io, sys\n"
        "from PIL import Image\n"
        "from jointembed_pg.model import decoder\n"
        "decoder._cap_memory(200)\n"
        "try:\n"
        "    im = Image.open(io.BytesIO(open(sys.argv[1], 'rb').read())); im.load(); im.convert('RGB')\n"
        "    print('decoded')\n"
        "except (MemoryError, OSError) as e:\n"
        "    print('refused', type(e).__name__, decoder._hit_cap())\n"
        "print(decoder._status('VmHWM'))\n"
    )
    r = subprocess.run([sys.executable, "-c", code, str(payloads / _file("webp_6000x6000_lossless"))],
                       capture_output=True, text=True, timeout=120)
    lines = r.stdout.split("\n")
    assert r.returncode == 0 and lines[0].startswith("refused") and lines[0].endswith("True"), (r.stdout, r.stderr)
    assert 0 < int(lines[1]) <= 200 << 20
