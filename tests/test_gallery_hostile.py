"""The HTML gallery (``search --html``, ``demo``) treats what it reads back as hostile:
image paths stored in the database that now name a FIFO or a decompression bomb, and
keys, captions and collection names made to break out of HTML text, attributes or the
style element. Real PostgreSQL, the real bundle, real Flickr8K images."""
from __future__ import annotations

import html
import json
import os
import re
import shutil

from test_reliability_support import cli, flickr_images

from _hostile import png_bomb

BREAKOUT = "\"'><script>alert(1)</script></style><img src=x onerror=alert(2)>javascript:alert(3)"


def _ids_by_source(p) -> dict[str, int]:
    return {json.loads(ln)["source"]: json.loads(ln)["id"] for ln in p.stdout.splitlines()}


def test_html_of_stored_paths_now_a_fifo_or_a_bomb(pg_dsn, bundle_dir, flickr8k_dir, tmp_path):
    """A stored image path swapped for a FIFO (a read would block forever) or a 20000 x 20000
    PNG bomb (Pillow raised DecompressionBombError) shows as a grey box; the page is written."""
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    for i, src in enumerate(flickr_images(flickr8k_dir, 3, start=40)):
        shutil.copy(src, imgs / f"{i}.jpg")
    args = ["--dsn", pg_dsn, "--bundle", bundle_dir, "--collection", "g"]
    p = cli(["index", "image", imgs, "--no-progress", *args])
    assert p.returncode == 0, p.stderr
    fifo, bomb, good = (str((imgs / f"{i}.jpg").resolve()) for i in range(3))
    os.unlink(fifo)
    os.mkfifo(fifo)
    with open(bomb, "wb") as f:
        f.write(png_bomb(20000, 20000))
    page = tmp_path / "hits.html"
    p = cli(["search", "text", "a dog", "--target", "image", "-k", "3", "--json", "--html", page, *args], timeout=120)
    assert p.returncode == 0 and "Traceback" not in p.stderr, p.stderr[-2000:]
    ids = _ids_by_source(p)
    assert set(ids) == {fifo, bomb, good}
    text = page.read_text(encoding="utf-8")
    assert len(re.findall(r'src="data:image/jpeg;base64,', text)) == 1  # only the intact image
    assert text.count('<div class="missing">') == 2
    # the FIFO as the query image of `search item ... --html`
    page2 = tmp_path / "item.html"
    p = cli(["search", "item", ids[fifo], "-k", "2", "--html", page2, "--dsn", pg_dsn, "--collection", "g"],
            timeout=120)
    assert p.returncode == 0 and "Traceback" not in p.stderr, p.stderr[-2000:]
    assert page2.read_text(encoding="utf-8").count('<div class="missing">') == 2  # query (FIFO) + bomb hit


def test_html_escapes_breakout_values_and_allows_nothing_active(pg_dsn, bundle_dir, tmp_path):
    caps = tmp_path / "caps.jsonl"
    caps.write_text(json.dumps({"id": BREAKOUT, "text": "a dog runs " + BREAKOUT}) + "\n", encoding="utf-8")
    collection = "</title></style><script>alert(4)</script>\u202e"
    args = ["--dsn", pg_dsn, "--bundle", bundle_dir, "--collection", collection]
    p = cli(["index", "text", caps, "--no-progress", *args])
    assert p.returncode == 0, p.stderr
    page = tmp_path / "t.html"
    p = cli(["search", "text", BREAKOUT, "--target", "text", "-k", "1", "--html", page, *args])
    assert p.returncode == 0, p.stderr
    text = page.read_text(encoding="utf-8")
    assert "<script" not in text and "<img src=x" not in text and "</style><" not in text.split("</head>", 1)[1]
    assert html.escape(BREAKOUT) in text and html.escape(collection) in text
    # nothing but the inline style and data: images may load or run, whatever slips through
    csp = re.search(r"<meta http-equiv='Content-Security-Policy' content=\"([^\"]+)\">", text)
    assert csp and "default-src 'none'" in csp.group(1) and "script-src" not in csp.group(1)
    assert text.index("Content-Security-Policy") < text.index("<style>")
    assert not re.search(r'(?:src|href)="(?!data:image/|file://)', text)


def test_html_output_path_is_written_only_as_a_regular_file(pg_dsn, bundle_dir, tmp_path):
    """``--html PATH``: a FIFO (the open blocked forever), a symlink planted at PATH (the
    write went to its target) and a device are refused with one line; a file is written."""
    from test_reliability_support import one_line_error

    caps = tmp_path / "caps.jsonl"
    caps.write_text('{"id": "a", "text": "a dog runs on the beach"}\n', encoding="utf-8")
    args = ["--dsn", pg_dsn, "--bundle", bundle_dir, "--collection", "o"]
    assert cli(["index", "text", caps, "--no-progress", *args]).returncode == 0
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    fifo, link = tmp_path / "out.fifo", tmp_path / "link.html"
    os.mkfifo(fifo)
    link.symlink_to(victim)
    for path, needle in ((fifo, "FIFO"), (link, "symlink"), ("/dev/null", "character device")):
        p = cli(["search", "text", "a dog", "--target", "text", "-k", "1", "--html", path, *args], timeout=60)
        assert needle in one_line_error(p)
    assert victim.read_text() == "keep me" and link.is_symlink()
    page = tmp_path / "ok.html"
    page.write_text("old, longer content " * 1000)
    p = cli(["search", "text", "a dog", "--target", "text", "-k", "1", "--html", page, *args])
    assert p.returncode == 0, p.stderr
    text = page.read_text(encoding="utf-8")
    assert text.startswith("<!doctype html>") and text.endswith("</html>") and "old, longer" not in text


def test_html_for_a_query_image_whose_name_is_not_utf8(pg_dsn, bundle_dir, flickr8k_dir, tmp_path):
    """``search image <name with byte 0xff> --html``: the page (UTF-8) shows the byte as
    ``\\xff`` and links the file by its percent-encoded name (a lone surrogate made the
    write raise UnicodeEncodeError: a traceback)."""
    caps = tmp_path / "caps.jsonl"
    caps.write_text('{"id": "a", "text": "a dog runs on the beach"}\n', encoding="utf-8")
    args = ["--dsn", pg_dsn, "--bundle", bundle_dir, "--collection", "u"]
    assert cli(["index", "text", caps, "--no-progress", *args]).returncode == 0
    name = os.fsdecode(b"photo\xff.jpg")
    shutil.copy(flickr_images(flickr8k_dir, 1, start=100)[0], tmp_path / name)
    page = tmp_path / "u.html"
    p = cli(["search", "image", tmp_path / name, "--target", "text", "-k", "1", "--html", page, *args])
    assert p.returncode == 0 and "Traceback" not in p.stderr, p.stderr[-2000:]
    text = page.read_text(encoding="utf-8")
    assert 'alt="' in text and "photo\\xff.jpg" in text and "photo%FF.jpg" in text
    assert len(re.findall(r'src="data:image/jpeg;base64,', text)) == 1


def test_bidi_override_in_a_query_label_is_isolated(tmp_path):
    """A query label holding U+202E (right-to-left override) sits in its own <bdi>, so the
    ground-truth score shown after it in the same heading is not displayed reversed."""
    from jointembed_pg.evaluation.gallery import write_gallery
    from jointembed_pg.search.knn import Hit

    hits = [Hit(1, "k#0", "text", 0.5, None, "a dog")]
    page = write_gallery(tmp_path / "b.html", [{"label": "text: a \u202etac", "hits": hits, "relevant": ["k#0"]}])
    text = page.read_text(encoding="utf-8")
    assert '<h2><bdi>text: a \u202etac</bdi> <span class="score">(1 of 1 correct)</span></h2>' in text
