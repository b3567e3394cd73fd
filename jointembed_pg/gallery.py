"""One self-contained HTML page showing queries and their hits (thumbnails inlined).

Used by ``jointembed search --html`` and the demo job. Images become ~160 px JPEG
thumbnails embedded as base64 ``data:`` URIs (Pillow); all text is ``html.escape``d.
"""
from __future__ import annotations

import base64
import html
import io
from pathlib import Path
from typing import Any, Iterable, Mapping

THUMB_PX = 160
_CSS = """
body{font-family:system-ui,sans-serif;margin:1.5em;color:#222}
section{margin-bottom:2em;border-bottom:1px solid #ddd;padding-bottom:1em}
.row{display:flex;flex-wrap:wrap;gap:10px}
figure{margin:0;width:170px;font-size:12px;overflow-wrap:anywhere}
.k{color:#888;font-size:11px}
figure img{max-width:160px;max-height:160px;display:block}
.q{background:#eef4ff;padding:6px}
.d{color:#666}.missing{width:160px;height:100px;background:#eee;display:flex;align-items:center;justify-content:center}
"""


def thumbnail_data_uri(path: str | Path, size: int = THUMB_PX) -> str | None:
    """A ``data:image/jpeg;base64,...`` thumbnail (longer side ``size`` px), or ``None`` if unreadable."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im = im.convert("RGB")
            im.thumbnail((size, size))
            buf = io.BytesIO()
            im.save(buf, format="JPEG", quality=80)
    except (OSError, UnidentifiedImageError, ValueError):
        return None
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _get(obj: Any, name: str, default: Any = None) -> Any:
    if isinstance(obj, Mapping):
        return obj.get(name, default)
    return getattr(obj, name, default)


def _figure(image_path: Any, text: str | None, caption: str) -> str:
    parts = ["<figure>"]
    if image_path:
        uri = thumbnail_data_uri(image_path)
        if uri:
            parts.append(f'<img src="{uri}" alt="{html.escape(str(image_path))}">')
        else:
            parts.append(f'<div class="missing">{html.escape(Path(str(image_path)).name)}</div>')
    if text:
        parts.append(f"<div>{html.escape(text)}</div>")
    parts.append(f"<figcaption>{caption}</figcaption></figure>")
    return "".join(parts)


def _hit_html(rank: int, hit: Any) -> str:
    modality = _get(hit, "modality")
    source, text = _get(hit, "source"), _get(hit, "text")
    image = source if modality == "image" or (modality is None and not text) else None
    dist = _get(hit, "distance")
    dist_s = f"{float(dist):.4f}" if dist is not None else "?"
    key = str(_get(hit, "key", "") or "")
    short = Path(key).name if image else key  # file name only; the full path is the tooltip
    label = (f'#{rank} <span class="d">L2 {dist_s}</span> '
             f'<span class="k" title="{html.escape(key)}">{html.escape(short)}</span>')
    return _figure(image, text, label)


def render(queries: Iterable[Mapping[str, Any]], title: str = "jointembed search results") -> str:
    """The HTML page as a string (see :func:`write_gallery`)."""
    out = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>",
           f"<style>{_CSS}</style></head><body><h1>{html.escape(title)}</h1>"]
    for q in queries:
        label = q.get("query_label", q.get("label", "query"))
        image = q.get("query_image_path", q.get("query_image"))
        out.append(f"<section><h2>{html.escape(str(label))}</h2><div class='row'>")
        if image or q.get("query_text"):
            out.append("<div class='q'>" + _figure(image, q.get("query_text"), "query") + "</div>")
        out.extend(_hit_html(i + 1, h) for i, h in enumerate(q.get("hits", [])))
        out.append("</div></section>")
    out.append("</body></html>")
    return "\n".join(out)


def write_gallery(path: str | Path, queries: Iterable[Mapping[str, Any]], *,
                  title: str = "jointembed search results") -> Path:
    """Write one self-contained HTML file of queries and their ranked hits.

    Args:
        path: output ``.html`` file (parent directories are created).
        queries: dicts with ``query_label`` (str; alias ``label``), ``query_image_path``
            (path or None; alias ``query_image``),
            ``query_text`` (str or None) and ``hits``: Hit-like objects or dicts with
            ``distance`` (L2, float), ``modality``, ``source`` (image path) and/or ``text``.
            Unreadable images show as a grey box with the file name.

    Returns:
        ``path`` as a Path.
    """
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(render(queries, title), encoding="utf-8")
    return out
