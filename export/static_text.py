"""Write the static text encoder (issue 25) into a bundle: ``text_static.npy`` + manifest.

The trained artefact (``python -m jointembed_train static-text``, training/static_text.py)
is an ``.npz`` holding only the rows training changed (``ids (K,) int32``,
``vectors (K, D) float16``), ``bias (D,) float32`` and ``meta`` (JSON). Every other row
is the text tower's output for ``[CLS] t [SEP]`` (its initialisation with SIF weight 1,
since those tokens never occur in the training captions), recomputed here through the
bundle's own ``text.onnx`` — so the committed file stays small (~4 MB instead of ~15).

The shipped default's artefact is committed as
``training/weights/text_static_<checkpoint sha256[:16]>.npz``;
:func:`install_for_checkpoint` copies it into a bundle of that checkpoint.
"""
from __future__ import annotations

import hashlib
import io
import json
import logging
import os
from pathlib import Path

import numpy as np

from jointembed_pg.model.bundle import Bundle, read_manifest
from jointembed_pg.model.static_text import STATIC_FILE

from . import ExportError

log = logging.getLogger(__name__)

WEIGHTS_DIR = Path(__file__).resolve().parent.parent / "training" / "weights"


def artefact_path(checkpoint_sha256: str) -> Path:
    """Where the committed artefact of a checkpoint lives."""
    return WEIGHTS_DIR / f"text_static_{checkpoint_sha256[:16]}.npz"


def token_outputs(bundle: Bundle, ids: np.ndarray, batch: int = 512) -> np.ndarray:
    """The tower's output for ``[CLS] t [SEP]`` of each id: ``(len(ids), D) float32``."""
    tok = bundle.tokenizer._tok
    cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    x = np.stack([np.full(len(ids), cls), ids, np.full(len(ids), sep)], axis=1).astype(np.int64)
    out = [bundle._run("text", {"input_ids": x[i:i + batch], "attention_mask": np.ones_like(x[i:i + batch])})
           for i in range(0, len(x), batch)]
    return np.concatenate(out) if out else np.zeros((0, bundle.dim), np.float32)


def install(bundle_dir: Path, artefact: Path) -> dict:
    """Write ``text_static.npy`` of ``artefact`` into ``bundle_dir`` and list it in the manifest.

    Returns:
        the manifest's ``text_static`` block.

    Raises:
        ExportError: the artefact was trained for another tokenizer or dim, or is malformed.
    """
    bundle_dir = Path(bundle_dir)
    b = Bundle.load(bundle_dir)
    try:
        z = np.load(artefact, allow_pickle=False)
        meta = json.loads(str(z["meta"]))
        ids, vec, bias = z["ids"].astype(np.int64), z["vectors"].astype(np.float32), z["bias"].astype(np.float32)
    except (OSError, ValueError, KeyError) as e:
        raise ExportError(f"{artefact}: not a static text artefact ({e})") from e
    tok_sha = hashlib.sha256((bundle_dir / "tokenizer.json").read_bytes()).hexdigest()
    V = b.tokenizer._tok.get_vocab_size()
    if meta.get("tokenizer_sha256") != tok_sha or meta.get("vocab_size") != V or meta.get("dim") != b.dim \
            or vec.shape != (len(ids), b.dim) or bias.shape != (b.dim,) or (ids < 0).any() or (ids >= V).any():
        raise ExportError(f"{artefact}: trained for another tokenizer/vocabulary/dim than {bundle_dir}")
    full = np.empty((V + 1, b.dim), np.float32)
    rest = np.setdiff1d(np.arange(V), ids)
    full[rest] = token_outputs(b, rest)
    full[ids] = vec
    full[V] = bias
    buf = io.BytesIO()
    np.save(buf, full, allow_pickle=False)
    data = buf.getvalue()
    tmp = bundle_dir / (STATIC_FILE + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, bundle_dir / STATIC_FILE)
    m = read_manifest(bundle_dir)
    m["files"][STATIC_FILE] = {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    block = {
        "vocab_size": V, "dim": b.dim, "max_pieces": int(b.max_tokens) - 2,
        "unk_id": int(b.tokenizer._tok.token_to_id("[UNK]")),
        "formula": "l2_normalize(sum of rows[id] over the WordPiece ids without [CLS]/[SEP], first max_pieces, "
                   "+ rows[vocab_size])",
        "tokenizer": "BERT uncased WordPiece (tokenizer.json); SQL: jointembed.text_pieces",
        "trained_rows": int(len(ids)),
        "training": meta.get("training"), "metrics": meta.get("metrics"),
        "source_checkpoint_sha256": meta.get("source_checkpoint_sha256"),
    }
    m["text_static"] = block
    path = bundle_dir / "manifest.json"
    tmpm = path.with_suffix(".json.tmp")
    tmpm.write_text(json.dumps(m, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(tmpm, path)
    log.info("installed %s into %s (%d trained rows)", artefact.name, bundle_dir, len(ids))
    return block


def install_for_checkpoint(bundle_dir: Path) -> bool:
    """Install the committed artefact of the bundle's source checkpoint, if there is one.

    Returns:
        True when the bundle has (now) a static text encoder of its checkpoint.
    """
    m = read_manifest(Path(bundle_dir))
    sha = m.get("source_checkpoint_sha256")
    if not isinstance(sha, str):
        return False
    art = artefact_path(sha)
    if not art.is_file():
        log.info("no static text encoder committed for checkpoint %s (train one: python -m jointembed_train "
                 "static-text --bundle %s --out %s)", sha[:16], bundle_dir, art)
        return False
    if STATIC_FILE in m.get("files", {}) and (m.get("text_static") or {}).get("source_checkpoint_sha256") == sha:
        return True
    install(Path(bundle_dir), art)
    return True
