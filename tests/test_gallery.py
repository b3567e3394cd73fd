"""write_gallery: one self-contained HTML file with inlined thumbnails and escaped text."""
from __future__ import annotations

import base64
import re

from PIL import Image

from jointembed_pg.gallery import write_gallery
from jointembed_pg.search import Hit


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
