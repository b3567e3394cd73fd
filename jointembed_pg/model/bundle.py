"""Model bundles: load an exported bundle and embed images and captions (torch-free).

A bundle is a directory (``<home>/bundles/<name>/`` or any path) holding
``manifest.json``, ``image.onnx``, ``text.onnx`` and ``tokenizer.json`` (Contract 2 of
docs/DESIGN.md). :meth:`Bundle.load` validates the manifest and every file's sha256;
onnxruntime sessions are created lazily, once, under a lock, so a loaded bundle can be
shared by threads.

All embeddings are ``(N, D) float32`` in one Euclidean space; similarity is L2 distance
(smaller = more similar) [Malali & Keller 2022]. ``manifest["normalized"]`` says whether
rows are L2-normalised (then L2 ranks exactly as cosine).
"""
from __future__ import annotations

import os

import hashlib
import json
import threading
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .. import paths
from ..errors import BundleError, InputError, ItemError
from .manifest import (  # noqa: F401 - names of the bundle layout, re-exported
    BUNDLE_FILES,
    EXTERNAL_DATA,
    IMAGE_ONNX,
    INPUTS,
    MANIFEST,
    OUTPUTS,
    SCHEMA_VERSION,
    TEXT_ONNX,
    TOKENIZER,
    Manifest,
)
from .preprocess import ImageSpec, load as load_image
from ..suggest import not_found
from .text import TRUNCATION, TextTokenizer, length_sorted_batches, validate_texts

#: onnxruntime session config entry that makes int8 matrix products exact on x86-64 CPUs
#: without VNNI (AVX2, AVX-512F/BW): their default U8S8 kernel sums pairs of uint8 x int8
#: products in saturating int16 (``vpmaddubsw``), which clips large activations and took the
#: int8 image encoder's min cosine vs fp32 from 0.99 to 0.81 on an AVX2-only EPYC; "1"
#: switches those CPUs to U8U8 kernels (no saturation). CPUs with VNNI, ARM and fp32 graphs
#: are unaffected. Source: ``kOrtSessionOptionsAvx2PrecisionMode`` in onnxruntime's
#: ``onnxruntime_session_options_config_keys.h``.
X64_QUANT_PRECISION = ("session.x64quantprecision", "1")
#: Rows per onnxruntime call in the ``encode_*`` methods (bounds memory).
DEFAULT_BATCH = 32
#: Largest ``manifest.json`` read (bytes); the exporter writes a few KiB.
MAX_MANIFEST_BYTES = 16 * 1024 * 1024
#: onnxruntime's own log (C++, straight to file descriptor 2): fatal only. Its errors reach
#: the caller as exceptions (one line, :class:`BundleError`); the log would repeat them,
#: coloured with ANSI codes, and print node names of an untrusted graph raw to the terminal.
ORT_LOG_SEVERITY = 4


def _first_line(e: BaseException, limit: int = 300) -> str:
    """An exception's message on one line, at most ``limit`` characters."""
    text = " ".join(str(e).split()) or type(e).__name__
    return text if len(text) <= limit else text[:limit - 3] + "..."


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def bundles_dir() -> Path:
    """:func:`paths.bundles_dir`, once it is safe to read bundles from (and build them in).

    Raises:
        BundleError: it, or a parent, belongs to another user or others may write it
            (a bundle planted there would be loaded): :func:`jointembed_pg.files.dir_problem`.
    """
    import os

    from .. import files

    d = paths.bundles_dir()
    problem = files.dir_problem(d, tuple({os.geteuid(), 0}))
    if problem:
        raise BundleError(f"refusing the bundles directory {d}: {problem}; use a directory only you can write "
                          f"(set JOINTEMBED_HOME or JOINTEMBED_BUNDLES), or fix its owner and mode yourself")
    return d


def resolve(name_or_path: str | Path | None = None) -> Path:
    """Bundle directory for a name under :func:`paths.bundles_dir`, or a path.

    ``None`` means :data:`paths.DEFAULT_BUNDLE`. A :class:`~pathlib.Path` or a string with
    a path separator is a path; a bare name is looked up under ``bundles_dir()`` first,
    then as a directory relative to the working directory.

    Raises:
        BundleError: the directory does not exist (the message says how to build one).
    """
    name = paths.DEFAULT_BUNDLE if name_or_path is None else name_or_path
    if isinstance(name, Path) or "/" in name or "\\" in name:
        d = Path(name).expanduser()
    else:
        d = bundles_dir() / name
        if not d.is_dir() and Path(name).is_dir():
            d = Path(name)
    if not d.is_dir():
        if isinstance(name, str) and d.parent == paths.bundles_dir():
            available = available_bundles()
            if name.endswith("-int8"):  # the int8 sibling is built on request only
                base = name[: -len("-int8")]
                named = "" if base == paths.DEFAULT_BUNDLE else f" --name {base}"
                raise BundleError(f"no bundle {name!r}: build it with `jointembed model build --int8{named}` "
                                  f"(about 3 min; available: {', '.join(available) or '(none)'})")
            raise BundleError(not_found("bundle", name, available) if available else
                              f"no bundle {name!r}: none built yet under {d.parent} "
                              "(build one with `jointembed model build`)")
        raise BundleError(f"no model bundle at {d} (build one with `jointembed model build`)")
    return d


def available_bundles() -> list[str]:
    """Names of the bundles under :func:`paths.bundles_dir` (directories with a manifest), sorted."""
    try:
        return sorted(d.name for d in bundles_dir().iterdir() if (d / MANIFEST).is_file())
    except OSError:
        return []


def read_manifest(bundle_dir: Path) -> dict[str, Any]:
    """Parse ``<bundle_dir>/manifest.json``, a regular file of at most :data:`MAX_MANIFEST_BYTES`
    (:func:`jointembed_pg.files.read_regular`: a FIFO, ``/dev/zero`` or a huge file is
    refused before reading, so it cannot hang the loader or exhaust memory).

    Raises:
        BundleError: missing, not a regular file, too large, not UTF-8, not JSON (also
            nested too deeply or holding an integer over 4300 digits), not an object.
    """
    from .. import files

    path = Path(bundle_dir) / MANIFEST
    if not path.exists() and not path.is_symlink():
        raise BundleError(f"{path}: missing")
    try:
        m = json.loads(files.read_regular(path, MAX_MANIFEST_BYTES, "model bundle").decode("utf-8"))
    except InputError as e:
        raise BundleError(str(e)) from e
    except (UnicodeDecodeError, ValueError, RecursionError) as e:  # JSONDecodeError is a ValueError
        raise BundleError(f"{path}: not valid JSON ({_first_line(e)})") from e
    if not isinstance(m, dict):
        raise BundleError(f"{path}: expected a JSON object, got {type(m).__name__}")
    return m


def validate_manifest(m: dict[str, Any], bundle_dir: Path, *, checksums: bool = True) -> Manifest:
    """Parse a manifest into :class:`~jointembed_pg.model.manifest.Manifest` and check the files beside it.

    The field checks are the model's (schema version, ``model_id``, ``dim``, ``distance``,
    ``precision``, preprocessing, encoder input/output names); here each file is checked
    for existence, byte size and (when ``checksums``) sha256.

    Raises:
        BundleError: naming the manifest field or the file that is wrong.
    """
    where = Path(bundle_dir) / MANIFEST
    manifest = Manifest.from_dict(m, where)
    for name in BUNDLE_FILES:
        _check_file(Path(bundle_dir), name, manifest, where, checksums)
    for data in EXTERNAL_DATA.values():
        if data in manifest.files:
            _check_external_data(Path(bundle_dir), data, manifest, where, checksums)
        elif os.path.lexists(Path(bundle_dir) / data):
            raise BundleError(f"{Path(bundle_dir) / data}: not listed in {where}, yet onnxruntime would load "
                              f"weights from it unchecked; remove it (or re-import the model)")
    return manifest


def _check_external_data(bundle_dir: Path, name: str, manifest: Manifest, where: Path, checksums: bool) -> None:
    """An external data file (``image.onnx.data``): stricter than the other files, as
    onnxruntime opens it by name beside the graph: a regular file (no symlink, FIFO or
    device), owned by this user or root, one link (:func:`jointembed_pg.files.open_own`),
    of the manifest's size, and (``checksums``) sha256, read from the descriptor checked.

    Raises:
        BundleError: naming the file.
    """
    from .. import files

    entry, path = manifest.files[name], bundle_dir / name
    try:
        fd = files.open_own(path, os.O_RDONLY, tuple({os.geteuid(), 0}), "model bundle")
    except FileNotFoundError:
        raise BundleError(f"{path}: missing (listed in {where})") from None
    except InputError as e:
        raise BundleError(str(e)) from e
    with os.fdopen(fd, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if size != entry.bytes:
            raise BundleError(f"{path}: {size} bytes, manifest says {entry.bytes}: corrupt or replaced")
        if checksums:
            h = hashlib.sha256()
            while block := f.read(1 << 20):
                h.update(block)
            if h.hexdigest() != entry.sha256:
                raise BundleError(f"{path}: sha256 differs from the manifest's: corrupt or replaced")


def _check_file(bundle_dir: Path, name: str, manifest: Manifest, where: Path, checksums: bool) -> None:
    sha, size = manifest.files[name].sha256, manifest.files[name].bytes
    path = bundle_dir / name
    if not path.is_file():
        raise BundleError(f"{path}: missing (listed in {where})")
    if path.stat().st_size != size:
        raise BundleError(f"{path}: {path.stat().st_size} bytes, manifest says {size}: corrupt or replaced")
    if checksums and sha256_file(path) != sha:
        raise BundleError(f"{path}: sha256 differs from the manifest's: corrupt or replaced")


class Bundle:
    """A loaded model bundle: embeds images and captions with onnxruntime.

    Use :meth:`load`; the constructor expects an already validated manifest.
    """

    def __init__(self, path: Path, meta: Manifest, *, manifest: dict[str, Any] | None = None,
                 providers: Sequence[str] | None = None, intra_op_threads: int | None = None,
                 session_config: dict[str, str] | None = None):
        self.path = Path(path)
        #: The typed, validated manifest.
        self.meta = meta
        #: The manifest as read from ``manifest.json`` (JSON object; for display and tools).
        self.manifest = manifest if manifest is not None else meta.to_dict()
        self.image_spec: ImageSpec = meta.image
        self.providers = list(providers) if providers else ["CPUExecutionProvider"]
        self.intra_op_threads = intra_op_threads
        #: Extra onnxruntime session config entries (e.g. :data:`jointembed_pg.model.threads.NO_SPINNING`).
        self.session_config = dict(session_config or {})
        self._lock = threading.Lock()
        self._sessions: dict[str, Any] = {}
        #: check a graph's sha256 again when its session is made (``load(verify=...)``)
        self._verify = True
        self._tokenizer: TextTokenizer | None = None

    @classmethod
    def load(cls, name_or_path: str | Path | None = None, *, providers: Sequence[str] | None = None,
             intra_op_threads: int | None = None, session_config: dict[str, str] | None = None,
             verify: bool = True) -> "Bundle":
        """Open and validate a bundle (sessions are created on first use).

        Args:
            name_or_path: a bundle directory, or a name under ``bundles_dir()``;
                ``None`` = ``paths.DEFAULT_BUNDLE``.
            providers: onnxruntime execution providers (default: CPU).
            intra_op_threads: threads per onnxruntime call (default: onnxruntime's choice).
            session_config: extra onnxruntime session config entries (``{key: value}``),
                e.g. from :meth:`jointembed_pg.model.threads.ThreadBudget.session_config`.
            verify: check every file's sha256 (a few hundred ms); sizes are always checked.

        Raises:
            BundleError: missing directory, bad manifest, missing or corrupt file.
        """
        d = resolve(name_or_path)
        m = read_manifest(d)
        meta = validate_manifest(m, d, checksums=verify)
        b = cls(d, meta, manifest=m, providers=providers, intra_op_threads=intra_op_threads,
                session_config=session_config)
        b._verify = bool(verify)
        return b

    @property
    def model_id(self) -> str:
        """Unique id of the weights + export options, e.g. ``je-1a2b3c4d5e6f``."""
        return self.meta.model_id

    @property
    def dim(self) -> int:
        """Embedding dimension D."""
        return self.meta.dim

    @property
    def normalized(self) -> bool:
        """Whether embeddings are L2-normalised (unit rows)."""
        return self.meta.normalized

    @property
    def max_tokens(self) -> int:
        """Longest tokenised caption, special tokens included; longer ones are truncated."""
        return self.meta.max_tokens

    def __repr__(self) -> str:
        return f"Bundle({str(self.path)!r}, model_id={self.model_id!r}, dim={self.dim}, precision={self.meta.precision!r})"

    # -- sessions -------------------------------------------------------------------
    def _session(self, encoder: str):
        """The onnxruntime session of ``"image"`` or ``"text"``, created once (locked)."""
        sess = self._sessions.get(encoder)
        if sess is not None:
            return sess
        with self._lock:
            if encoder not in self._sessions:
                self._sessions[encoder] = self._new_session(self.path / f"{encoder}.onnx", encoder)
            return self._sessions[encoder]

    def _new_session(self, path: Path, encoder: str):
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.log_severity_level = ORT_LOG_SEVERITY
        opts.add_session_config_entry(*X64_QUANT_PRECISION)
        for key, value in self.session_config.items():
            opts.add_session_config_entry(key, value)
        if self.intra_op_threads:
            opts.intra_op_num_threads = int(self.intra_op_threads)
        data = EXTERNAL_DATA.get(path.name)
        if data in self.meta.files:  # re-checked now: onnxruntime opens it by name, resolved beside `path`
            _check_external_data(self.path, data, self.meta, self.path / MANIFEST, checksums=False)
            self._file_bytes(path)  # the graph re-checked too (size; sha256 unless verify=False)
            # a path, not bytes: external data is resolved relative to the graph's directory (the
            # files could still be swapped between this check and onnxruntime's open: only here)
            model = str(path)
        else:
            model = self._file_bytes(path)
        try:
            sess = ort.InferenceSession(model, sess_options=opts, providers=self.providers)
        except Exception as e:  # onnxruntime raises its own Fail/InvalidGraph types
            raise BundleError(f"{path}: onnxruntime cannot load it ({e})") from e
        names = [i.name for i in sess.get_inputs()], [o.name for o in sess.get_outputs()]
        if names != (INPUTS[encoder], OUTPUTS[encoder]):
            raise BundleError(f"{path}: graph inputs/outputs are {names}, expected {INPUTS[encoder]} -> {OUTPUTS[encoder]}")
        self._check_graph(sess, path, encoder)
        return sess

    def _file_bytes(self, path: Path) -> bytes:
        """The bytes of the bundle file ``path`` (a graph, the tokenizer), read once and used as
        they are (onnxruntime and tokenizers get the bytes, not the path): sessions and the
        tokenizer are made on first use, maybe hours after :meth:`load` checked the files, so
        the bytes are checked again (size always, sha256 unless loaded with ``verify=False``)
        and a file replaced or edited meanwhile is never used.

        Raises:
            BundleError: the file is unreadable or differs from the manifest's entry.
        """
        entry = self.meta.files[path.name]
        try:
            with open(path, "rb") as f:
                data = f.read(entry.bytes + 1)
        except OSError as e:
            raise BundleError(f"{path}: cannot read it ({e.strerror or e})") from e
        if len(data) != entry.bytes or (self._verify and hashlib.sha256(data).hexdigest() != entry.sha256):
            raise BundleError(f"{path}: changed since the bundle was loaded (differs from the manifest's "
                              "size or sha256): corrupt or replaced")
        return data

    def _check_graph(self, sess, path: Path, encoder: str) -> None:
        """Refuse a graph that cannot take what the manifest says it feeds it, when the
        session is made rather than at the first item of a batch job.

        Image: the graph's fixed input sides must be ``(3, S, S)`` with S =
        ``preprocess.image.size``. Text: one caption of ``preprocess.text.max_tokens``
        tokens is encoded (a manifest asking for more positions than the encoder has
        would otherwise fail only on the first long caption).

        Raises:
            BundleError: naming the file and the manifest field.
        """
        if encoder == "image":
            want = (3, self.image_spec.size, self.image_spec.size)
            have = tuple(sess.get_inputs()[0].shape[1:])
            if len(have) != 3 or any(isinstance(h, int) and h != w for h, w in zip(have, want)):
                raise BundleError(f"{path}: the graph takes pixels of shape (N, {', '.join(map(str, have))}), "
                                  f"manifest field 'preprocess.image.size' says (N, 3, {want[1]}, {want[2]})")
            return
        ids = np.zeros((1, self.max_tokens), np.int64)
        try:
            out = sess.run(None, {"input_ids": ids, "attention_mask": np.ones_like(ids)})[0]
        except Exception as e:  # onnxruntime's own error types
            raise BundleError(f"{path}: cannot encode a caption of {self.max_tokens} tokens (manifest field "
                              f"'preprocess.text.max_tokens'): {_first_line(e)}") from e
        if out.ndim != 2 or out.shape[1] != self.dim:
            raise BundleError(f"{path}: output shape {out.shape}, manifest dim is {self.dim}")

    def _run(self, encoder: str, feeds: dict[str, np.ndarray]) -> np.ndarray:
        try:
            out = self._session(encoder).run(None, feeds)[0]
        except BundleError:
            raise
        except Exception as e:  # onnxruntime's own error types: the graph and the manifest disagree
            shapes = ", ".join(f"{k} {tuple(v.shape)}" for k, v in feeds.items())
            raise BundleError(f"{self.path / (encoder + '.onnx')}: onnxruntime cannot run it on {shapes}: "
                              f"{_first_line(e)}") from e
        if out.ndim != 2 or out.shape[1] != self.dim:
            raise BundleError(f"{self.path / (encoder + '.onnx')}: output shape {out.shape}, manifest dim is {self.dim}")
        return np.ascontiguousarray(out, dtype=np.float32)

    @property
    def tokenizer(self) -> TextTokenizer:
        """The caption tokenizer (``tokenizer.json`` at the manifest's ``max_tokens``), loaded once."""
        return self._text_tokenizer()

    def _text_tokenizer(self) -> TextTokenizer:
        with self._lock:
            if self._tokenizer is None:
                self._tokenizer = TextTokenizer(self.path / TOKENIZER, self.max_tokens, self.meta.pad_to,
                                                data=self._file_bytes(self.path / TOKENIZER))
            return self._tokenizer

    # -- encoders -------------------------------------------------------------------
    def encode_pixels(self, pixels: np.ndarray, *, batch_size: int = DEFAULT_BATCH) -> np.ndarray:
        """Embed preprocessed images.

        Args:
            pixels: ``(N, 3, S, S) float32`` from :func:`jointembed_pg.model.preprocess.load`
                with :attr:`image_spec` (S = ``image_spec.size``).

        Returns:
            ``(N, D) float32`` embeddings (L2-normalised rows if :attr:`normalized`).

        Raises:
            InputError: wrong shape or non-finite values.
        """
        x = np.asarray(pixels, dtype=np.float32)
        s = self.image_spec.size
        if x.ndim != 4 or x.shape[1:] != (3, s, s):
            raise InputError(f"pixels: expected shape (N, 3, {s}, {s}), got {x.shape}")
        if not np.isfinite(x).all():
            raise InputError("pixels: contains NaN or infinite values")
        chunks = [self._run("image", {"pixels": np.ascontiguousarray(x[i:i + batch_size])})
                  for i in range(0, len(x), batch_size)]
        return np.concatenate(chunks) if chunks else np.zeros((0, self.dim), np.float32)

    def load_pixels(self, sources: Sequence[str | Path | bytes], *, start: int = 0) -> np.ndarray:
        """Decode and preprocess images: ``(N, 3, S, S) float32``.

        Each image is read and decoded in a decoder process of the process-wide
        :func:`jointembed_pg.ingest.sandbox.shared_loader` (bounded memory and time, the
        limits of :meth:`Limits.from_env`), never in this process.

        Args:
            sources: image paths or encoded bytes.
            start: index of ``sources[0]`` in the caller's list (used in error labels).

        Raises:
            InputError: ``sources`` is not a list.
            ItemError: an item cannot be read, labelled ``images[i]``; its ``reason``
                names the path.
        """
        from .decoder import ImageJob, bytes_job, shared_loader
        from ..limits import Limits

        if isinstance(sources, (str, bytes, Path)):
            raise InputError(f"sources: expected a list of paths or bytes, got one {type(sources).__name__}")
        out = np.empty((len(sources), 3, self.image_spec.size, self.image_spec.size), np.float32)
        loader = None
        for i, src in enumerate(sources, start):
            if isinstance(src, (bytes, bytearray, memoryview)):
                job = bytes_job(bytes(src))
                if not job.data:
                    raise ItemError(f"images[{i}]", "<bytes>: empty image data (0 bytes)", i)
            elif isinstance(src, (str, os.PathLike)):
                path = os.fspath(src)
                if isinstance(path, bytes):
                    path = os.fsdecode(path)
                # absolute here: a decoder process keeps the working directory it started in
                job = ImageJob(where=str(src), path=os.path.abspath(path) if "\x00" not in path else path)
            else:
                raise ItemError(f"images[{i}]", f"expected a path or bytes, got {type(src).__name__}", i)
            try:
                loader = loader or shared_loader(self.image_spec, Limits.from_env())
                loaded = loader.load(job)
            except InputError as e:
                raise ItemError(f"images[{i}]", str(e), i) from e
            out[i - start] = loaded.pixels
        return out

    def encode_images(self, sources: str | Path | bytes | Sequence[str | Path | bytes], *,
                      batch_size: int = DEFAULT_BATCH) -> np.ndarray:
        """Embed image files or encoded bytes.

        Args:
            sources: a list of paths / encoded bytes, or one path (``str`` / ``Path``) or
                one ``bytes`` object.

        Returns:
            ``(N, D) float32`` for a list; ``(D,) float32`` for a single image.

        Raises:
            InputError: a single image cannot be read (the message names its path).
            ItemError: an item of a list cannot be read (labelled ``images[i]``, path named).
        """
        if isinstance(sources, (str, bytes, Path)):
            try:
                return self.encode_images([sources], batch_size=1)[0]
            except ItemError as e:
                raise InputError(e.reason) from e
        out = [self.encode_pixels(self.load_pixels(sources[i:i + batch_size], start=i), batch_size=batch_size)
               for i in range(0, len(sources), batch_size)]
        return np.concatenate(out) if out else np.zeros((0, self.dim), np.float32)

    def encode_texts(self, texts: str | Sequence[str], *, batch_size: int = DEFAULT_BATCH) -> np.ndarray:
        """Embed captions.

        Captions are tokenised, truncated at :attr:`max_tokens` (with a
        :class:`~jointembed_pg.model.text.TruncationWarning`) and padded per batch; padding does
        not change an embedding.

        Args:
            texts: a list of captions, or one caption (``str``).

        Returns:
            ``(N, D) float32`` for a list; ``(D,) float32`` for a single ``str``.

        Raises:
            InputError: not a str or list of str.
            ItemError: an item is not a str, is empty / whitespace-only, or consists only of
                word pieces the tokenizer does not know (``[UNK]``: emoji, unsupported
                scripts); labelled ``texts[i]`` (``text`` for a single str).
        """
        if isinstance(texts, str):
            try:
                return self.encode_texts([texts], batch_size=1)[0]
            except ItemError as e:
                raise ItemError("text", e.reason) from e
        texts = validate_texts(texts)
        tok = self._text_tokenizer()
        out = []
        for i in range(0, len(texts), batch_size):
            ids, mask = tok.encode(texts[i:i + batch_size], start=i, refuse_unreadable=True)
            out.append(self._run("text", {"input_ids": ids, "attention_mask": mask}))
        return np.concatenate(out) if out else np.zeros((0, self.dim), np.float32)

    def encode_texts_by_length(self, texts: Sequence[str], *, batch_size: int = DEFAULT_BATCH) -> np.ndarray:
        """Embed a list of captions in batches of similar token length; rows in input order.

        The captions are tokenised once, sorted by token count
        (:func:`~jointembed_pg.model.text.length_sorted_batches`), each batch padded to its own
        longest caption, and the embeddings put back in the order of ``texts``. The same
        embeddings as :meth:`encode_texts` (padding is masked out; max abs difference
        <= 1e-5, ``tests/test_text.py``), with less padding to compute when lengths vary
        (none is removed for a bundle with ``pad_to``: its graph takes that length only).
        Pass a window of a few batches (ingest uses 8) to get the gain.

        Returns:
            ``(N, D) float32``, row i the embedding of ``texts[i]``.

        Raises:
            InputError / ItemError: as :meth:`encode_texts` (``texts[i]`` labels index ``texts``).
        """
        texts = validate_texts(texts)
        if not texts:
            return np.zeros((0, self.dim), np.float32)
        ids, mask = self._text_tokenizer().encode(texts, refuse_unreadable=True)
        out = np.empty((len(texts), self.dim), np.float32)
        for idx in length_sorted_batches(mask, batch_size):
            # right-padded: the first `width` columns hold every token; a `pad_to` graph takes exactly pad_to
            width = self.meta.pad_to or int(mask[idx].sum(axis=1).max())
            out[idx] = self._run("text", {"input_ids": np.ascontiguousarray(ids[idx, :width]),
                                          "attention_mask": np.ascontiguousarray(mask[idx, :width])})
        return out
