"""One self-contained HTML page showing queries and their hits (thumbnails inlined).

Used by ``jointembed search --html`` and the demo job. Images become ~160 px JPEG
thumbnails embedded as base64 ``data:`` URIs (Pillow), each linked (``file://``) to the
full image; every value is escaped for HTML text and attributes (:func:`_h`; a file
name that is not UTF-8 shows its bytes as ``\\xNN``), and a Content-Security-Policy lets the page
load nothing but its own inline style and ``data:`` images (no script runs, nothing
remote is fetched). An image path is read back from the database, so it is untrusted:
it is opened like any input image, in a decoder process (:mod:`jointembed_pg.ingest.sandbox`:
a regular file only -- never a FIFO or a device --, at most ``Limits.max_file_bytes``,
``Limits.max_pixels`` and ``Limits.memory_mb``, under the item timeout), and one that
fails shows as a grey box. A header names the collection, the model and
the item counts and explains the numbers (L2 distance: lower is closer); hits that are
correct by the dataset's ground truth (a query's ``relevant`` keys) are framed green
with a check mark; every hit shows its item id for ``jointembed search item ID``.
"""
from __future__ import annotations

import base64
import html
import io
import os
from pathlib import Path
from typing import Any, Iterable, Mapping

THUMB_PX = 160
#: The page needs nothing but its inline style and its ``data:`` thumbnails.
CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'; base-uri 'none'; form-action 'none'"
_CSS = """
body{font-family:system-ui,sans-serif;margin:1.5em;color:#222}
section{margin-bottom:2em;border-bottom:1px solid #ddd;padding-bottom:1em}
.row{display:flex;flex-wrap:wrap;gap:10px;align-items:flex-start}
figure{margin:0;width:170px;font-size:12px;overflow-wrap:anywhere}
.k{color:#888;font-size:11px}
figure img{max-width:160px;max-height:160px;display:block}
.q{background:#eef4ff;padding:6px}
.d{color:#666}.missing{width:160px;height:100px;background:#eee;display:flex;align-items:center;justify-content:center}
.id{color:#555;font-family:monospace;font-size:11px}
figure.match{outline:3px solid #1a8f3a;outline-offset:2px}
.ok{color:#1a8f3a;font-weight:bold}
header.summary{background:#f6f6f6;border:1px solid #ddd;padding:8px 12px;margin-bottom:1.5em}
header.summary dl{display:grid;grid-template-columns:max-content auto;gap:2px 12px;margin:0 0 6px 0}
header.summary dt{font-weight:bold}header.summary dd{margin:0}
.legend{font-size:13px;margin:4px 0 0 0}
.score{font-size:13px;color:#444;font-weight:normal}
"""

#: Legend shown under the header.
LEGEND = ("Each section is one query (blue box) followed by its nearest stored items, closest first. "
          "The number under each hit is the <b>L2 distance</b> between the query's embedding and the "
          "item's: <b>lower is better</b> (0 = identical; embeddings are unit vectors, so distances lie "
          "between 0 and 2). ")
LEGEND_MATCH = ('<span class="ok">&#10003; green frame</span>: a correct match by the dataset\'s ground truth '
                "(e.g. a caption written for the query image). ")
LEGEND_ID = "<span class='id'>[id N]</span>: the item id; <code>jointembed search item N</code> finds more like it."


def thumbnail_data_uri(path: str | Path, size: int = THUMB_PX, *, limits=None) -> str | None:
    """A ``data:image/jpeg;base64,...`` thumbnail (longer side ``size`` px) of the image file
    at ``path``, or ``None`` if it is not a readable image within ``limits`` (default
    :meth:`Limits.from_env`): missing, not a regular file (FIFO, device, socket), over the
    file-size or pixel limit (decompression bomb), corrupt."""
    from ..errors import JointEmbedError
    from ..model.decoder import ImageJob, shared_loader
    from ..limits import Limits
    from ..model.preprocess import ImageSpec

    if isinstance(path, (bytes, bytearray)):  # a path given as bytes, never image data here
        path = os.fsdecode(bytes(path))
    if not isinstance(path, (str, os.PathLike)):
        return None
    try:
        where = os.fspath(path)
        job = ImageJob(where=str(where), path=os.path.abspath(where), thumbnail=int(size))
        jpeg = shared_loader(ImageSpec(), limits or Limits.from_env()).load(job).jpeg
    except (JointEmbedError, OSError, ValueError, TypeError):
        return None
    if not jpeg:
        return None
    return "data:image/jpeg;base64," + base64.b64encode(jpeg).decode("ascii")


def _h(value: Any) -> str:
    """``str(value)`` escaped for HTML text and quoted attributes (``& < > " '``); lone
    surrogates (a file name that is not UTF-8, read with ``surrogateescape``) become
    ``\\xNN`` for their bytes, so the page can always be written as UTF-8."""
    text = str(value).encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    return html.escape(text, quote=True)


def _get(obj: Any, name: str, default: Any = None) -> Any:
    if isinstance(obj, Mapping):
        return obj.get(name, default)
    return getattr(obj, name, default)


def _file_uri(path: Any) -> str | None:
    """``file://`` URI of a local image path (absolute), or None for bytes / odd values."""
    try:
        return Path(os.path.realpath(Path(str(path)).expanduser())).as_uri()  # a symlink loop does not raise
    except (OSError, ValueError, RuntimeError):
        return None


def _figure(image_path: Any, text: str | None, caption: str, css: str = "") -> str:
    parts = [f'<figure class="{css}">' if css else "<figure>"]
    if image_path:
        uri = thumbnail_data_uri(image_path)
        if uri:
            img = f'<img src="{uri}" alt="{_h(image_path)}">'
            link = _file_uri(image_path)
            parts.append(f'<a href="{_h(link)}" title="open the full image">{img}</a>' if link else img)
        else:
            parts.append(f'<div class="missing">{_h(Path(str(image_path)).name)}</div>')
    if text:
        parts.append(f"<div>{_h(text)}</div>")
    parts.append(f"<figcaption>{caption}</figcaption></figure>")
    return "".join(parts)


def _hit_html(rank: int, hit: Any, relevant: frozenset[str] | None) -> str:
    modality = _get(hit, "modality")
    source, text = _get(hit, "source"), _get(hit, "text")
    image = source if modality == "image" or (modality is None and not text) else None
    dist = _get(hit, "distance")
    dist_s = f"{float(dist):.4f}" if dist is not None else "?"
    key = str(_get(hit, "key", "") or "")
    item_id = _get(hit, "id")
    short = Path(key).name if image else key  # file name only; the full path is the tooltip
    match = relevant is not None and key in relevant
    label = ((f'<span class="ok" title="correct by ground truth">&#10003;</span> ' if match else "")
             + f'#{rank} <span class="d">L2 {dist_s}</span> '
             + (f'<span class="id">[id {int(item_id)}]</span> ' if item_id is not None else "")
             + f'<span class="k" title="{_h(key)}">{_h(short)}</span>')
    return _figure(image, text, label, "match" if match else "")


def _header(header: Mapping[str, Any] | None, any_truth: bool) -> str:
    rows = []
    if header:
        if header.get("collection") is not None:
            rows.append(("Collection", str(header["collection"])))
        if header.get("model") is not None:
            rows.append(("Model", str(header["model"])))
        counts = header.get("counts") or {}
        if counts:
            rows.append(("Items", ", ".join(f"{n} {kind}s" for kind, n in counts.items())))
        for k, v in (header.get("extra") or {}).items():
            rows.append((str(k), str(v)))
    dl = "".join(f"<dt>{_h(k)}</dt><dd>{_h(v)}</dd>" for k, v in rows)
    legend = LEGEND + (LEGEND_MATCH if any_truth else "") + LEGEND_ID
    return (f'<header class="summary">{f"<dl>{dl}</dl>" if dl else ""}'
            f'<p class="legend">{legend}</p></header>')


def render(queries: Iterable[Mapping[str, Any]], title: str = "jointembed search results", *,
           header: Mapping[str, Any] | None = None) -> str:
    """The HTML page as a string (see :func:`write_gallery`)."""
    queries = list(queries)
    truths = [frozenset(map(str, q["relevant"])) if q.get("relevant") is not None else None for q in queries]
    out = [f"<!doctype html><html><head><meta charset='utf-8'>"
           f"<meta http-equiv='Content-Security-Policy' content=\"{CSP}\"><title>{_h(title)}</title>",
           f"<style>{_CSS}</style></head><body><h1>{_h(title)}</h1>",
           _header(header, any(t is not None for t in truths))]
    for q, relevant in zip(queries, truths):
        # <bdi>: a bidi override in the query (U+202E) cannot reorder the score after it
        label = f'<bdi>{_h(q.get("query_label", q.get("label", "query")))}</bdi>'

        hits = list(q.get("hits", []))
        if relevant is not None:
            n = sum(str(_get(h, "key", "")) in relevant for h in hits)
            label += f' <span class="score">({n} of {len(hits)} correct)</span>'
        image = q.get("query_image_path", q.get("query_image"))
        out.append(f"<section><h2>{label}</h2><div class='row'>")
        if image or q.get("query_text"):
            qcap = f"query [id {int(q['query_id'])}]" if q.get("query_id") is not None else "query"
            out.append("<div class='q'>" + _figure(image, q.get("query_text"), qcap) + "</div>")
        out.extend(_hit_html(i + 1, h, relevant) for i, h in enumerate(hits))
        out.append("</div></section>")
    out.append("</body></html>")
    return "\n".join(out)


def write_gallery(path: str | Path, queries: Iterable[Mapping[str, Any]], *,
                  title: str = "jointembed search results", header: Mapping[str, Any] | None = None) -> Path:
    """Write one self-contained HTML file of queries and their ranked hits.

    Args:
        path: output ``.html`` file (parent directories are created).
        queries: dicts with ``query_label`` (str; alias ``label``), ``query_image_path``
            (path or None; alias ``query_image``),
            ``query_text`` (str or None), optional ``query_id`` (int, shown), optional
            ``relevant`` (keys that are correct by ground truth; those hits are marked and
            counted) and ``hits``: Hit-like objects or dicts with ``distance`` (L2, float),
            ``id``, ``key``, ``modality``, ``source`` (image path) and/or ``text``.
            Unreadable images show as a grey box with the file name.
        header: optional ``collection`` (str), ``model`` (str), ``counts``
            (``{"image": n, "text": m}``) and ``extra`` (``{label: value}``) shown above
            the legend.

    Returns:
        ``path`` as a Path.

    Raises:
        InputError: ``path`` is a symlink, a FIFO, a device or a directory
            (:func:`jointembed_pg.files.write_regular`), or cannot be written.
    """
    from .. import files

    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    files.write_regular(out, render(queries, title, header=header).encode("utf-8"), "HTML page")
    return out
