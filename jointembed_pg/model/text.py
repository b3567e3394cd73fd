"""Caption validation and tokenisation for the ONNX text encoder (torch-free).

The one tokenizer wrapper of the project (the runtime, the exporter's parity check and
training all use :class:`TextTokenizer`). It wraps the Hugging Face ``tokenizers``
tokenizer that a bundle ships as ``tokenizer.json`` (all-MiniLM-L6-v2's BERT WordPiece,
``bert-base-uncased`` vocabulary of 30,522 pieces: lower-casing, accents stripped,
``[CLS] ... [SEP]``). Truncation and padding are the library's own
(``Tokenizer.enable_truncation`` at the manifest's ``preprocess.text.max_tokens``, special
tokens included, rule ``longest_first``, i.e. the end of the caption is dropped and
``[SEP]`` kept; ``Tokenizer.enable_padding`` right-pads to the longest caption of the
batch). Mean pooling inside ``text.onnx`` ignores padded positions, so padding never
changes an embedding.

What the vocabulary covers: English words and sub-words, digits, ASCII and most Latin-1
punctuation, Latin/Greek/Cyrillic letters, and single CJK characters. It has no emoji,
most symbols and many scripts (e.g. Thai, Hebrew marks): those become ``[UNK]``, and every
``[UNK]`` embeds the same, so a query like "🐶" is indistinguishable from "🚀".
:meth:`TextTokenizer.coverage` counts them; a text whose word pieces are *all* unknown
(or that has none) is refused (:class:`~jointembed_pg.errors.ItemError`), and the CLI
warns when more than :data:`UNKNOWN_WARN_FRACTION` of a query's pieces are unknown.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from ..errors import BundleError, InputError, ItemError

#: Default ``max_tokens``: the sequence length all-MiniLM-L6-v2 was trained with.
DEFAULT_MAX_TOKENS = 128

#: The only truncation rule the runtime implements (recorded in the manifest).
TRUNCATION = "longest_first"

#: A query with a larger share of ``[UNK]`` word pieces is "mostly unknown" (warned about).
UNKNOWN_WARN_FRACTION = 0.5


class TruncationWarning(UserWarning):
    """A caption was longer than ``max_tokens`` and its end was dropped."""


@dataclass(frozen=True)
class Coverage:
    """How much of a text the vocabulary covers.

    Attributes:
        pieces: word pieces after truncation, special tokens and padding excluded.
        unknown: how many of them are ``[UNK]``.
    """

    pieces: int
    unknown: int

    @property
    def unknown_fraction(self) -> float:
        """``unknown / pieces`` in [0, 1]; 1.0 for a text with no pieces at all."""
        return self.unknown / self.pieces if self.pieces else 1.0

    @property
    def unreadable(self) -> bool:
        """Nothing the model can read: no pieces, or all of them ``[UNK]``."""
        return self.unknown == self.pieces

    @property
    def mostly_unknown(self) -> bool:
        """More than :data:`UNKNOWN_WARN_FRACTION` of the pieces are ``[UNK]``."""
        return self.unknown_fraction > UNKNOWN_WARN_FRACTION

    def describe(self) -> str:
        """One line for messages, e.g. ``"3 of 4 word pieces are unknown to the tokenizer ([UNK])"``."""
        if not self.pieces:
            return "no word pieces left after normalisation (only control or zero-width characters?)"
        return f"{self.unknown} of {self.pieces} word pieces are unknown to the tokenizer ([UNK])"


def validate_texts(texts: Sequence[str], *, start: int = 0) -> list[str]:
    """Check a batch of captions; returns them as a list.

    Args:
        start: index of ``texts[0]`` in the caller's list (used in labels).

    Raises:
        InputError: ``texts`` is a bare ``str``/``bytes`` or not a sequence.
        ItemError: an item is not a ``str``, or is empty or whitespace-only; labelled
            ``texts[i]``.
    """
    if isinstance(texts, (str, bytes)) or not isinstance(texts, Sequence):
        raise InputError(f"texts: expected a list of str, got {type(texts).__name__}")
    out = list(texts)
    for i, t in enumerate(out, start):
        if not isinstance(t, str):
            raise ItemError(f"texts[{i}]", f"expected str, got {type(t).__name__}", i)
        if not t.strip():
            raise ItemError(f"texts[{i}]", f"empty or whitespace-only text {t!r}", i)
        try:
            t.encode("utf-8")
        except UnicodeEncodeError as e:  # lone surrogates: the tokenizer raises a bare TypeError
            raise ItemError(f"texts[{i}]", f"not valid Unicode (lone surrogate at {e.start}): "
                            f"{t[:40]!r}", i) from None
    return out


class TextTokenizer:
    """Captions -> padded ``(input_ids, attention_mask)`` for ``text.onnx``.

    Args:
        path: a ``tokenizer.json`` file (``tokenizers`` format).
        max_tokens: longest sequence fed to the encoder, special tokens included.
        pad_to: ``None``: right-pad to the batch's longest caption; else pad every caption
            to exactly this many tokens (manifest ``preprocess.text.pad_to``: imported towers
            such as SigLIP and MobileCLIP pool without a padding mask, so the padding is part
            of what they compute).

    The padding id is the one ``tokenizer.json`` configures (``padding.pad_id``), else
    ``[PAD]``'s, else 0; the unknown piece is the BPE/WordPiece/Unigram model's ``unk_token``
    (``[UNK]`` for the default bundle; byte-level BPE such as CLIP's has none).

    Raises:
        BundleError: the file is missing or not a valid tokenizer.
    """

    def __init__(self, path: str | Path, max_tokens: int = DEFAULT_MAX_TOKENS, pad_to: int | None = None, *,
                 data: bytes | None = None):
        import json

        from tokenizers import Tokenizer

        if max_tokens < 3:
            raise BundleError(f"{path}: max_tokens must be >= 3, got {max_tokens}")
        try:
            # data: the file's bytes as already read and checked by the caller (Bundle), else read here
            tok = Tokenizer.from_str(data.decode("utf-8")) if data is not None else Tokenizer.from_file(str(path))
        except Exception as e:  # tokenizers raises a bare Exception on bad JSON
            raise BundleError(f"{path}: cannot load tokenizer ({e})") from e
        padding = tok.padding or {}
        pad_token = padding.get("pad_token", "[PAD]")
        pad_id = tok.token_to_id(pad_token)
        self.pad_id = int(padding.get("pad_id", pad_id if pad_id is not None else 0))
        model = json.loads(tok.to_str()).get("model") or {}
        unk_token = model.get("unk_token") if isinstance(model.get("unk_token"), str) else "[UNK]"
        unk = tok.token_to_id(unk_token) if model.get("type") != "Unigram" else model.get("unk_id")
        self.unk_id: int | None = None if unk is None else int(unk)
        self.max_tokens = int(max_tokens)
        tok.no_padding()
        tok.no_truncation()
        self._full = Tokenizer.from_str(tok.to_str())  # untruncated: counts the tokens a caption loses
        tok.enable_truncation(self.max_tokens, strategy=TRUNCATION)
        self.pad_to = pad_to
        # to the batch's longest caption, or to pad_to exactly
        tok.enable_padding(direction="right", pad_id=self.pad_id, pad_token=pad_token, length=pad_to)
        self._tok = tok

    def _encodings(self, texts: Sequence[str], start: int):
        texts = validate_texts(texts, start=start)
        return texts, (self._tok.encode_batch(texts) if texts else [])

    def encode(self, texts: Sequence[str], *, start: int = 0,
               refuse_unreadable: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """Tokenise a batch of captions.

        Args:
            texts: N non-empty captions (see :func:`validate_texts`).
            start: index of ``texts[0]`` in the caller's list (used in labels).
            refuse_unreadable: raise for a text with no known word piece (see :class:`Coverage`).

        Returns:
            ``input_ids (N, L) int64`` and ``attention_mask (N, L) int64`` (1 = token,
            0 = padding), where ``L`` is the longest tokenised caption, at most ``max_tokens``.

        Raises:
            InputError / ItemError: as :func:`validate_texts`; with ``refuse_unreadable``,
                an :class:`ItemError` naming ``texts[i]`` and how many pieces were unknown.

        Warns:
            TruncationWarning: for each caption over ``max_tokens`` tokens, naming its index
                and how many tokens were dropped (route to logging with
                ``logging.captureWarnings(True)``).
        """
        texts, encs = self._encodings(texts, start)
        for i, e in enumerate(encs):
            if refuse_unreadable:
                cov = self._coverage(e)
                if cov.unreadable:
                    raise ItemError(f"texts[{start + i}]", f"cannot embed {texts[i][:40]!r}: {cov.describe()}",
                                    start + i)
            if e.overflowing:
                self._warn_truncated(start + i, texts[i], sum(e.attention_mask))
        if not encs:
            return np.zeros((0, 0), np.int64), np.zeros((0, 0), np.int64)
        ids = np.array([e.ids for e in encs], dtype=np.int64)
        mask = np.array([e.attention_mask for e in encs], dtype=np.int64)
        return ids, mask

    def coverage(self, text: str) -> Coverage:
        """Word pieces of one text (after truncation) and how many are ``[UNK]``.

        Raises:
            ItemError: ``text`` is not a str, or is empty / whitespace-only.
        """
        _, encs = self._encodings([text], 0)
        return self._coverage(encs[0])

    def _coverage(self, enc) -> Coverage:
        pieces = [i for i, special, m in zip(enc.ids, enc.special_tokens_mask, enc.attention_mask)
                  if m and not special]
        unknown = sum(1 for i in pieces if i == self.unk_id) if self.unk_id is not None else 0
        return Coverage(len(pieces), unknown)

    def _warn_truncated(self, index: int, text: str, kept: int) -> None:
        total = len(self._full.encode(text).ids)
        msg = (
            f"texts[{index}]: {total} tokens, over max_tokens={self.max_tokens}; "
            f"the last {total - kept} tokens were dropped ({text[:40]!r}...)"
        )
        warnings.warn(msg, TruncationWarning, stacklevel=4)


def length_sorted_batches(mask: np.ndarray, batch_size: int) -> list[np.ndarray]:
    """Split rows into batches of similar token length (fewer padded positions to compute).

    Args:
        mask: ``(N, L) int64`` attention mask (1 = token, 0 = padding), as from
            :meth:`TextTokenizer.encode`.
        batch_size: rows per batch, >= 1.

    Returns:
        index arrays (``int64``) into the N rows: the rows sorted by token count (stable,
        so equal lengths keep their order), cut into consecutive batches of ``batch_size``.
        Every row appears in exactly one batch; the caller puts the results back in place
        with these indices.

    Raises:
        ValueError: ``batch_size < 1``.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    order = np.argsort(mask.sum(axis=1), kind="stable")
    return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
