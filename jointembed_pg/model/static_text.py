"""The bundle's static text encoder (``text_static.npy``): a vector per WordPiece token.

The SQL text encoder of issue 25 (sql/functions/80_text.sql, docs/SQL.md): a query embeds
as ``l2_normalize(sum_t v_t + b)`` over its WordPiece ids without ``[CLS]``/``[SEP]``,
the first ``max_pieces`` (= ``max_tokens - 2``) kept. Trained by
``python -m jointembed_train static-text`` (training/static_text.py), written into the
bundle by the exporter (jointembed_export.static_text).

File format: ``text_static.npy``, ``(V + 1, D) float32``, rows ``0..V-1`` the token
vectors by tokenizer id, row ``V`` the bias; read with ``numpy.load(allow_pickle=False)``
from at most :data:`MAX_STATIC_BYTES` bytes, listed with its sha256 and size in the
manifest's ``files`` and described by the manifest's ``text_static`` block
(``vocab_size``, ``dim``, ``max_pieces``, ``unk_id``, ``tokenizer``, ``metrics``).
"""
from __future__ import annotations

import hashlib
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import BundleError, InputError
from .manifest import OPTIONAL_FILES

#: File name of the artefact inside a bundle.
STATIC_FILE = OPTIONAL_FILES[0]  # "text_static.npy"
#: Largest artefact read (bytes): 250k pieces x 1024 dims x 4 bytes.
MAX_STATIC_BYTES = 1 << 30
#: The one tokenizer the SQL tokenizer implements (sql/functions/80_text.sql).
SUPPORTED_TOKENIZER = {
    "normalizer": {"type": "BertNormalizer", "clean_text": True, "handle_chinese_chars": True,
                   "strip_accents": None, "lowercase": True},
    "pre_tokenizer": {"type": "BertPreTokenizer"},
    "model": {"type": "WordPiece", "unk_token": "[UNK]", "continuing_subword_prefix": "##",
              "max_input_chars_per_word": 100},
}


@dataclass(frozen=True)
class StaticText:
    """A loaded static text encoder.

    Attributes:
        vectors: ``(V, D) float32`` token vectors by tokenizer id.
        bias: ``(D,) float32``.
        pieces: the V word pieces, ``pieces[id]`` (continuations with ``##``).
        unk_id: id of ``[UNK]``.
        max_pieces: pieces kept per query (``max_tokens - 2``).
        max_word_chars: a longer word is one ``[UNK]`` (WordPiece's limit).
        sha256: of the artefact file (the database copy is keyed by it).
    """

    vectors: np.ndarray
    bias: np.ndarray
    pieces: list[str]
    unk_id: int
    max_pieces: int
    max_word_chars: int
    sha256: str

    @property
    def dim(self) -> int:
        return int(self.vectors.shape[1])


def has_static_text(bundle: Any) -> bool:
    """Whether the bundle's manifest lists a static text encoder (False for an object
    without a manifest, e.g. a stand-in encoder of the right shape)."""
    m = getattr(bundle, "manifest", None)
    return isinstance(m, dict) and isinstance(m.get("text_static"), dict) and isinstance(m.get("files"), dict) \
        and STATIC_FILE in m["files"]


def _tokenizer_rules(path: Path) -> tuple[dict[str, int], dict]:
    from .. import files

    try:
        t = json.loads(files.read_regular(path, 64 << 20, "tokenizer").decode("utf-8"))
        model = t["model"]
        rules = {"normalizer": t["normalizer"], "pre_tokenizer": t["pre_tokenizer"],
                 "model": {k: model.get(k) for k in SUPPORTED_TOKENIZER["model"] if k != "type"}
                 | {"type": model.get("type")}}
        vocab = model["vocab"]
    except (InputError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise BundleError(f"{path}: cannot read the tokenizer ({e})") from e
    if not isinstance(vocab, dict):
        raise BundleError(f"{path}: model.vocab is not an object")
    return vocab, rules


def _check_header(path: Path, data: bytes, shape: tuple[int, int]) -> None:
    """Refuse a .npy whose header is not a ``shape`` float32 array before ``np.load``
    allocates what the header claims (a 60-byte file may claim 931 TiB).

    Raises:
        BundleError: not a version 1.0/2.0 .npy header, or another shape or dtype.
    """
    fmt = np.lib.format
    buf = io.BytesIO(data)
    try:
        version = fmt.read_magic(buf)
        if version not in ((1, 0), (2, 0)):
            raise ValueError(f"unsupported .npy version {version}")
        read = fmt.read_array_header_1_0 if version == (1, 0) else fmt.read_array_header_2_0
        got_shape, _fortran, dtype = read(buf)
    except (ValueError, OSError, EOFError, SyntaxError, TypeError) as e:
        raise BundleError(f"{path}: not a .npy array ({e})") from e
    if dtype.hasobject:
        raise BundleError(f"{path}: not a .npy array of numbers (pickled objects are refused)")
    if tuple(got_shape) != shape or dtype != np.float32:
        raise BundleError(f"{path}: expected a {shape} float32 array, got {tuple(got_shape)} {dtype}")


def load(bundle: Any) -> StaticText:
    """Read and check the bundle's static text encoder.

    Raises:
        BundleError: no artefact, a tokenizer the SQL tokenizer does not implement, a file
            that is not a regular ``(V + 1, D) float32`` array of finite values matching the
            tokenizer's vocabulary and the bundle's ``dim``, or whose size/sha256 differ
            from the manifest's.
    """
    from .. import files

    if not has_static_text(bundle):
        raise BundleError(f"{bundle.path}: the bundle has no static text encoder ({STATIC_FILE}); "
                          "rebuild it with `jointembed model build` (or train one: "
                          "`python -m jointembed_train static-text`)")
    path = Path(bundle.path) / STATIC_FILE
    entry = bundle.manifest["files"][STATIC_FILE]
    block = bundle.manifest["text_static"]
    try:
        data = files.read_regular(path, MAX_STATIC_BYTES, "static text encoder")
    except InputError as e:
        raise BundleError(str(e)) from e
    sha = hashlib.sha256(data).hexdigest()
    if not isinstance(entry, dict) or entry.get("sha256") != sha or entry.get("bytes") != len(data):
        raise BundleError(f"{path}: size or sha256 differs from the manifest's: corrupt or replaced")
    vocab, rules = _tokenizer_rules(Path(bundle.path) / "tokenizer.json")
    if rules != SUPPORTED_TOKENIZER:
        raise BundleError(f"{bundle.path}/tokenizer.json: the SQL tokenizer implements BERT uncased WordPiece "
                          f"only ({SUPPORTED_TOKENIZER}); this tokenizer is {rules}")
    V = len(vocab)
    _check_header(path, data, (V + 1, bundle.dim))
    try:
        arr = np.load(io.BytesIO(data), allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        raise BundleError(f"{path}: not a .npy array ({e})") from e
    if not isinstance(arr, np.ndarray) or arr.dtype != np.float32 or arr.shape != (V + 1, bundle.dim):
        raise BundleError(f"{path}: expected a ({V + 1}, {bundle.dim}) float32 array, got "
                          f"{getattr(arr, 'shape', None)} {getattr(arr, 'dtype', type(arr).__name__)}")
    if not np.isfinite(arr).all():
        raise BundleError(f"{path}: contains NaN or infinite values")
    pieces = [""] * V
    for piece, i in vocab.items():
        if not isinstance(piece, str) or not isinstance(i, int) or not 0 <= i < V or pieces[i]:
            raise BundleError(f"{bundle.path}/tokenizer.json: vocabulary ids are not 0..{V - 1} once each")
        if "\x00" in piece:
            raise BundleError(f"{bundle.path}/tokenizer.json: a word piece holds NUL")
        pieces[i] = piece
    if "[UNK]" not in vocab:
        raise BundleError(f"{bundle.path}/tokenizer.json: no [UNK] piece")
    max_pieces = int(bundle.max_tokens) - 2
    if block.get("max_pieces", max_pieces) != max_pieces or block.get("vocab_size", V) != V:
        raise BundleError(f"{bundle.path}/manifest.json: text_static block disagrees with the tokenizer "
                          f"(vocab_size {V}, max_pieces {max_pieces})")
    return StaticText(vectors=arr[:V], bias=arr[V], pieces=pieces, unk_id=int(vocab["[UNK]"]),
                      max_pieces=max_pieces,
                      max_word_chars=int(SUPPORTED_TOKENIZER["model"]["max_input_chars_per_word"]), sha256=sha)


def piece_ids(bundle: Any, texts: list[str]) -> list[list[int]]:
    """Python reference of ``jointembed.text_pieces``: ids without specials, first ``max_tokens - 2``."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(Path(bundle.path) / "tokenizer.json"))
    tok.no_truncation()
    tok.no_padding()
    n = int(bundle.max_tokens) - 2
    return [e.ids[:n] for e in tok.encode_batch(list(texts), add_special_tokens=False)]


def embed(st: StaticText, ids: list[list[int]]) -> np.ndarray:
    """Python reference of ``jointembed.embed_text``: ``(N, D) float32`` unit rows."""
    out = np.stack([st.vectors[l].sum(0) if l else np.zeros(st.dim, np.float32) for l in ids]) + st.bias
    return (out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)).astype(np.float32)
