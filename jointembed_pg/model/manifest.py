"""The bundle manifest (``manifest.json``, schemas 1 and 2) as one typed, validated model.

Schema 2 (bundles imported from open_clip / transformers, :mod:`jointembed_export.imported`)
adds what a schema-1 runtime would silently mis-compute, so that runtime refuses it:
``preprocess.text.pad_to`` (captions padded to a fixed length: towers that pool without a
padding mask), ``preprocess.image.resize`` ``"shortest"`` / ``"squash"`` (torchvision's
rules) and a ``source`` block (framework, architecture, weights sha256, licence). Our own
exporter still writes schema 1.

Field meanings are Contract 2 of docs/DESIGN.md. The runtime reads a manifest with
:meth:`Manifest.from_dict` (:mod:`jointembed_pg.model.bundle`), the exporter builds one with the
constructor and writes :meth:`Manifest.to_dict` (``jointembed_export.manifest``): both
sides go through the same checks (:meth:`Manifest.__post_init__`), so an exporter cannot
write a manifest the runtime would refuse. Every error is a
:class:`~jointembed_pg.errors.BundleError` naming the JSON field (dotted path).
"""
from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from ..errors import BundleError
from .preprocess import ImageSpec
from .text import TRUNCATION

#: The newest manifest layout this runtime reads (it reads every one of SCHEMA_VERSIONS).
SCHEMA_VERSION = 2
SCHEMA_VERSIONS = (1, 2)
#: Keys of the schema-2 ``source`` block (all strings; ``weights_sha256`` lowercase hex).
SOURCE_KEYS = ("framework", "architecture", "weights", "weights_sha256", "licence")
#: the longest ``source.*`` string (a hub id, a path, a licence name)
MAX_SOURCE_CHARS = 4096
#: Unicode categories refused in ``source.*``: controls (CR, LF, ESC ...), format (bidi
#: overrides, zero-width), line/paragraph separators, surrogates
_UNPRINTABLE = frozenset({"Cc", "Cf", "Zl", "Zp", "Cs"})
MANIFEST = "manifest.json"
IMAGE_ONNX, TEXT_ONNX, TOKENIZER = "image.onnx", "text.onnx", "tokenizer.json"
BUNDLE_FILES = (IMAGE_ONNX, TEXT_ONNX, TOKENIZER)
#: ONNX external data of a tower over protobuf's 2 GiB (``jointembed_export.external_data``):
#: one file per graph, next to it, resolved by onnxruntime relative to the graph's path.
EXTERNAL_DATA = {IMAGE_ONNX: IMAGE_ONNX + ".data", TEXT_ONNX: TEXT_ONNX + ".data"}
#: Files a bundle may have besides those: the SQL text encoder's artefact (issue 25,
#: ``jointembed_pg.model.static_text``) and the external data files. Listed with sha256
#: and size when present.
OPTIONAL_FILES = ("text_static.npy", *EXTERNAL_DATA.values())
#: Graph input/output names per encoder (dynamic batch axis 0; text also axis 1).
INPUTS = {"image": ["pixels"], "text": ["input_ids", "attention_mask"]}
OUTPUTS = {"image": ["embedding"], "text": ["embedding"]}
PRECISIONS = ("fp32", "int8")
DISTANCES = ("l2",)
#: Shortest caption limit that leaves room for [CLS] x [SEP].
MIN_MAX_TOKENS = 3
#: Longest caption limit accepted (BERT-family encoders take 512; the text encoder is
#: also probed with a caption of ``max_tokens`` when its session is created).
MAX_MAX_TOKENS = 8192

_SHA256 = re.compile(r"[0-9a-f]{64}")
#: Dataclass field -> its dotted path in the JSON (where the two differ).
_JSON_PATH = {"image": "preprocess.image", "max_tokens": "preprocess.text.max_tokens",
              "truncation": "preprocess.text.truncation", "pad_to": "preprocess.text.pad_to"}


@dataclass(frozen=True)
class FileEntry:
    """One bundle file: hex ``sha256`` of its bytes and its size in ``bytes``."""

    sha256: str
    bytes: int


@dataclass(frozen=True)
class Manifest:
    """A validated ``manifest.json`` (Contract 2 of docs/DESIGN.md).

    Attributes:
        model_id: unique per weights + export options, e.g. ``je-1a2b3c4d5e6f``.
        dim: embedding dimension D (> 0).
        normalized: whether embeddings are L2-normalised rows.
        files: ``{name: FileEntry}`` for every name in :data:`BUNDLE_FILES`.
        image: image preprocessing (``preprocess.image``).
        max_tokens: caption token limit incl. special tokens (``preprocess.text.max_tokens``).
        precision: one of :data:`PRECISIONS`.
        truncation: ``preprocess.text.truncation`` (must be the runtime's).
        distance: ``"l2"``.
        schema_version: one of :data:`SCHEMA_VERSIONS` (1 unless a schema-2 field is used).
        pad_to: ``None`` (right-pad to the batch's longest caption) or the fixed length every
            caption is padded to (``preprocess.text.pad_to``; schema 2; equals ``max_tokens``).
        source: ``None`` or the schema-2 ``source`` block: ``{framework, architecture,
            weights, weights_sha256, licence}`` (strings) of an imported model.
        inputs, outputs: graph input/output names per encoder (:data:`INPUTS`, :data:`OUTPUTS`).
        quantizer: ``None``, ``{K, M, tau_end, beta}`` (soft quantizer folded into the graphs) or
            ``{"kind": "binary-sign", "bits": D, ...}`` (codes = ``binary_quantize(embedding)``).
        training: the training config dict; metrics: ``{dev, test}`` flat metric dicts.
        source_checkpoint_sha256: sha256 of the checkpoint exported (``None`` if unknown).
        export: exporter options, opset, tool versions, creation time.
        extra: every other top-level key (``parity``, ``int8``, ``int8_deviation``, ...), kept as is.

    Raises:
        BundleError: on construction, naming the field that is wrong.
    """

    model_id: str
    dim: int
    normalized: bool
    files: Mapping[str, FileEntry]
    image: ImageSpec
    max_tokens: int
    precision: str = "fp32"
    truncation: str = TRUNCATION
    distance: str = "l2"
    schema_version: int = 1
    inputs: Mapping[str, list[str]] = field(default_factory=lambda: {k: list(v) for k, v in INPUTS.items()})
    outputs: Mapping[str, list[str]] = field(default_factory=lambda: {k: list(v) for k, v in OUTPUTS.items()})
    quantizer: dict[str, Any] | None = None
    training: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    source_checkpoint_sha256: str | None = None
    export: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)
    pad_to: int | None = None
    source: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        _typed("schema_version", self.schema_version, int)
        if self.schema_version not in SCHEMA_VERSIONS:
            raise BundleError(f"schema_version {self.schema_version} not supported "
                              f"(this runtime reads {', '.join(map(str, SCHEMA_VERSIONS))})")
        self._check_schema2()
        if not _typed("model_id", self.model_id, str):
            raise BundleError("field 'model_id' is empty")
        if _typed("dim", self.dim, int) <= 0:
            raise BundleError(f"field 'dim' must be positive, got {self.dim}")
        if _typed("distance", self.distance, str) not in DISTANCES:
            raise BundleError(f"field 'distance' must be 'l2', got {self.distance!r}")
        _typed("normalized", self.normalized, bool)
        if _typed("precision", self.precision, str) not in PRECISIONS:
            raise BundleError(f"field 'precision' must be one of {PRECISIONS}, got {self.precision!r}")
        for kind, have, want in (("inputs", self.inputs, INPUTS), ("outputs", self.outputs, OUTPUTS)):
            for enc in want:
                got = have.get(enc) if isinstance(have, Mapping) else None
                if got is None:
                    raise BundleError(f"missing field '{kind}.{enc}'")
                if list(_typed(f"{kind}.{enc}", got, (list, tuple))) != want[enc]:
                    raise BundleError(f"field '{kind}.{enc}' is {list(got)}, this runtime needs {want[enc]}")
        if _typed(_JSON_PATH["max_tokens"], self.max_tokens, int) < MIN_MAX_TOKENS:
            raise BundleError(f"field 'preprocess.text.max_tokens' must be >= {MIN_MAX_TOKENS}")
        if self.max_tokens > MAX_MAX_TOKENS:
            raise BundleError(f"field 'preprocess.text.max_tokens' must be <= {MAX_MAX_TOKENS}, got {self.max_tokens}")
        if _typed(_JSON_PATH["truncation"], self.truncation, str) != TRUNCATION:
            raise BundleError(f"field 'preprocess.text.truncation' must be {TRUNCATION!r}")
        _typed(_JSON_PATH["image"], self.image, ImageSpec)
        for name in BUNDLE_FILES:
            entry = self.files.get(name) if isinstance(self.files, Mapping) else None
            if not isinstance(entry, FileEntry):
                raise BundleError(f"missing field 'files.{name}.sha256'")
            if not _SHA256.fullmatch(_typed(f"files.{name}.sha256", entry.sha256, str)):
                raise BundleError(f"field 'files.{name}.sha256' is not a lowercase hex sha256")
            if _typed(f"files.{name}.bytes", entry.bytes, int) < 0:
                raise BundleError(f"field 'files.{name}.bytes' must be >= 0")
        if self.quantizer is not None:
            _typed("quantizer", self.quantizer, dict)
        for name in ("training", "metrics", "export", "extra"):
            _typed(name, getattr(self, name), dict)
        if self.source_checkpoint_sha256 is not None:
            _typed("source_checkpoint_sha256", self.source_checkpoint_sha256, str)
        clash = set(self.extra) & _TOP_LEVEL
        if clash:
            raise BundleError(f"extra keys {sorted(clash)} shadow manifest fields")

    def _check_schema2(self) -> None:
        """The schema-2 fields: only in schema 2, and well-formed."""
        v2 = {"preprocess.text.pad_to": self.pad_to is not None, "source": self.source is not None,
              "preprocess.image.resize": self.image.resize != "shorter_side",
              "preprocess.image.crop": self.image.crop != "center"}
        if self.schema_version < 2 and any(v2.values()):
            raise BundleError(f"field {[k for k, v in v2.items() if v][0]!r} needs schema_version 2")
        if self.pad_to is not None and _typed(_JSON_PATH["pad_to"], self.pad_to, int) != self.max_tokens:
            raise BundleError(f"field 'preprocess.text.pad_to' must equal max_tokens ({self.max_tokens}), "
                              f"got {self.pad_to}")
        if self.source is not None:
            for key in SOURCE_KEYS:
                if key not in _typed("source", self.source, dict):
                    raise BundleError(f"missing field 'source.{key}'")
                _typed(f"source.{key}", self.source[key], str)
                # printed by `model info/list/verify`: a CR/LF, escape or bidi override would fake
                # or hide output lines
                bad = [c for c in self.source[key] if unicodedata.category(c) in _UNPRINTABLE]
                if bad or len(self.source[key]) > MAX_SOURCE_CHARS:
                    raise BundleError(f"field 'source.{key}' " + (f"holds control character U+{ord(bad[0]):04X}" if bad
                                      else f"is over {MAX_SOURCE_CHARS} characters"))
            if not _SHA256.fullmatch(self.source["weights_sha256"]):
                raise BundleError("field 'source.weights_sha256' is not a lowercase hex sha256")

    @classmethod
    def from_dict(cls, m: Any, where: str | Path = MANIFEST) -> "Manifest":
        """Parse and validate a manifest JSON object.

        Args:
            m: the parsed ``manifest.json``.
            where: named in error messages (the manifest's path).

        Raises:
            BundleError: ``"<where>: ..."`` naming the missing or wrong field.
        """
        try:
            if not isinstance(m, dict):
                raise BundleError(f"expected a JSON object, got {type(m).__name__}")
            try:
                image = ImageSpec.from_dict(_get(m, "preprocess.image", dict))
            except (KeyError, TypeError, ValueError) as e:
                raise BundleError(f"field 'preprocess.image' is invalid ({e})") from e
            listed = m.get("files") if isinstance(m.get("files"), dict) else {}
            files = {n: FileEntry(_get(m, ("files", n, "sha256"), str), _get(m, ("files", n, "bytes"), int))
                     for n in BUNDLE_FILES + tuple(o for o in OPTIONAL_FILES if o in listed)}
            return cls(
                schema_version=_get(m, "schema_version", int), model_id=_get(m, "model_id", str),
                dim=_get(m, "dim", int), distance=_get(m, "distance", str),
                normalized=_get(m, "normalized", bool), precision=_get(m, "precision", str),
                inputs=_get(m, "inputs", dict), outputs=_get(m, "outputs", dict), files=files, image=image,
                max_tokens=_get(m, "preprocess.text.max_tokens", int),
                truncation=_get(m, "preprocess.text.truncation", str),
                quantizer=m.get("quantizer"), training=m.get("training") or {}, metrics=m.get("metrics") or {},
                source_checkpoint_sha256=m.get("source_checkpoint_sha256"), export=m.get("export") or {},
                extra={k: v for k, v in m.items() if k not in _TOP_LEVEL},
                pad_to=_get(m, "preprocess.text", dict).get("pad_to"), source=m.get("source"),
            )
        except BundleError as e:
            raise BundleError(f"{where}: {e}") from e

    def to_dict(self) -> dict[str, Any]:
        """The JSON object of Contract 2 (``extra`` keys at top level)."""
        text: dict[str, Any] = {"max_tokens": self.max_tokens, "truncation": self.truncation}
        if self.pad_to is not None:
            text["pad_to"] = self.pad_to
        out = {
            "schema_version": self.schema_version, "model_id": self.model_id, "dim": self.dim,
            "distance": self.distance, "normalized": self.normalized, "precision": self.precision,
            "files": {n: {"sha256": f.sha256, "bytes": f.bytes} for n, f in self.files.items()},
            "preprocess": {"image": self.image.to_dict(),
                           "text": text},
            "inputs": {k: list(v) for k, v in self.inputs.items()},
            "outputs": {k: list(v) for k, v in self.outputs.items()},
            "quantizer": self.quantizer, "training": self.training, "metrics": self.metrics,
            "source_checkpoint_sha256": self.source_checkpoint_sha256, "export": self.export,
            **self.extra,
        }
        if self.source is not None:
            out["source"] = self.source
        return out


#: Top-level JSON keys modelled by :class:`Manifest` (the rest go to ``extra``).
_TOP_LEVEL = frozenset({"schema_version", "model_id", "dim", "distance", "normalized", "precision", "files",
                        "preprocess", "inputs", "outputs", "quantizer", "training", "metrics",
                        "source_checkpoint_sha256", "export", "source"})


def _typed(dotted: str, value: Any, types: type | tuple) -> Any:
    """``value`` if it is an instance of ``types`` (``bool`` only where named), else BundleError."""
    types = types if isinstance(types, tuple) else (types,)
    if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
        raise BundleError(f"field {dotted!r} has type {type(value).__name__}")
    return value


def _get(m: dict, dotted: str | tuple[str, ...], types: type | tuple) -> Any:
    """``m[k1][k2]...`` for ``dotted = "k1.k2"`` (or a key tuple), checked against ``types``."""
    keys = dotted.split(".") if isinstance(dotted, str) else dotted
    cur: Any = m
    for key in keys:
        if not isinstance(cur, dict) or key not in cur:
            raise BundleError(f"missing field {'.'.join(keys)!r}")
        cur = cur[key]
    return _typed(".".join(keys), cur, types)
