"""write_gallery: one self-contained HTML file with inlined thumbnails and escaped text."""
from __future__ import annotations

import base64
import re
import sys
from pathlib import Path

import pytest
from PIL import Image

from jointembed_pg.evaluation.gallery import write_gallery
from jointembed_pg.search.knn import Hit


def test_gallery_is_self_contained_and_escaped(tmp_path):
    big = tmp_path / "big.png"
    Image.new("RGB", (800, 400), (200, 30, 30)).save(big)
    hits = [
        Hit(1, str(big), "image", 0.123456, str(big), None),
        Hit(2, "cap#0", "text", 0.5, None, "<script>alert('x')</script> & a dog"),
        {"modality": "image", "source": str(tmp_path / "missing.jpg"), "distance": 1.0, "key": "missing"},
    ]
    out = write_gallery(tmp_path / "sub" / "g.html", [
        {"query_label": "text -> image <b>", "query_image_path": None, "query_text": "a \"dog\"", "hits": hits},
        {"label": "image -> text", "query_image": str(big), "query_text": None, "hits": hits[1:2]},  # aliases
    ])
    page = out.read_text(encoding="utf-8")
    assert "<script>" not in page and "&lt;script&gt;" in page and "&lt;b&gt;" in page
    assert "0.1235" in page and "L2" in page and "image -&gt; text" in page
    assert "missing.jpg" in page  # unreadable image shown by name, no crash
    assert not re.search(r'src="(?!data:)', page)  # nothing external
    uris = re.findall(r'src="data:image/jpeg;base64,([^"]+)"', page)
    assert len(uris) == 2  # hit image + query image; the missing one is a grey box
    from io import BytesIO

    thumb = Image.open(BytesIO(base64.b64decode(uris[0])))
    assert thumb.format == "JPEG" and max(thumb.size) == 160


def _demo_like_page(tmp_path, flickr8k_dir):
    names = (flickr8k_dir / "Flickr_8k.testImages.txt").read_text().split()[:4]
    imgs = [str(flickr8k_dir / "images" / n) for n in names]
    caps = [ln.split("\t") for ln in (flickr8k_dir / "Flickr8k.token.txt").read_text().splitlines()
            if ln.split("#", 1)[0] in names[:2]]
    hits = [Hit(10 + i, k, "text", 0.8 + i / 10, None, t) for i, (k, t) in enumerate(caps[3:8])]
    truth = {k for k, _ in caps if k.startswith(names[0])}
    return write_gallery(tmp_path / "g.html", [
        {"label": f"image → text: {names[0]}", "query_image": imgs[0], "hits": hits, "relevant": truth},
        {"label": "more like item 3", "query_image": imgs[1], "query_id": 3,
         "hits": [Hit(4 + i, p, "image", 0.5 + i / 10, p, None) for i, p in enumerate(imgs[1:])]},
    ], title="jointembed demo", header={"collection": "flickr8k_test", "model": "je-752c318927b1",
                                       "counts": {"image": 1000, "text": 5000}}), imgs, truth, hits


def test_gallery_header_legend_ground_truth_links_and_ids(tmp_path, flickr8k_dir):
    out, imgs, truth, hits = _demo_like_page(tmp_path, flickr8k_dir)
    page = out.read_text(encoding="utf-8")
    assert "<dt>Collection</dt><dd>flickr8k_test</dd>" in page and "<dd>je-752c318927b1</dd>" in page
    assert "1000 images, 5000 texts" in page
    assert "L2 distance" in page and "lower is better" in page and "ground truth" in page
    n_true = sum(h.key in truth for h in hits)
    assert 0 < n_true < len(hits)  # the fixture mixes right and wrong captions
    assert page.count('<figure class="match">') == n_true and f"({n_true} of {len(hits)} correct)" in page
    for p in imgs[1:]:  # image hits link to the full file
        assert f'<a href="{Path(p).resolve().as_uri()}"' in page
    assert "[id 4]" in page and "[id 10]" in page and "query [id 3]" in page
    assert "search item N" in page


def test_gallery_screenshot_shows_header_and_legend(tmp_path, flickr8k_dir):
    """Headless Chromium renders the page (docs/screenshot_gallery.py); the PNG is not blank."""
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "docs"))
    from screenshot_gallery import find_chromium, screenshot

    if find_chromium() is None:
        pytest.skip("chromium not installed (apt-get install -y chromium)")
    out, *_ = _demo_like_page(tmp_path, flickr8k_dir)
    png = screenshot(out, tmp_path / "g.png", width=900, height=700)
    im = Image.open(png).convert("RGB")
    assert im.size == (900, 700)
    top = im.crop((0, 0, 900, 200))  # the header band: grey box and dark text, not a blank page
    colors = top.getcolors(1 << 20)
    assert len(colors) > 50
    assert any(r == g == b and 240 <= r <= 250 for _, (r, g, b) in colors)  # header.summary background
