"""Caption validation and tokenisation for the ONNX text encoder (torch-free).

Wraps the Hugging Face ``tokenizers`` tokenizer that a bundle ships as ``tokenizer.json``
(all-MiniLM-L6-v2's BERT WordPiece: lower-casing, ``[CLS] ... [SEP]``). Captions are
validated, truncated at the manifest's ``preprocess.text.max_tokens`` (special tokens
included; the rule is ``longest_first``, i.e. the end of the caption is dropped and
``[SEP]`` kept) and right-padded to the longest caption of the batch. Mean pooling inside
``text.onnx`` ignores padded positions, so padding never changes an embedding.
"""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Sequence

import numpy as np

from .errors import BundleError, InputError

#: Default ``max_tokens``: the sequence length all-MiniLM-L6-v2 was trained with.
DEFAULT_MAX_TOKENS = 128

#: The only truncation rule the runtime implements (recorded in the manifest).
TRUNCATION = "longest_first"


class TruncationWarning(UserWarning):
    """A caption was longer than ``max_tokens`` and its end was dropped."""


def validate_texts(texts: Sequence[str]) -> list[str]:
    """Check a batch of captions; returns them as a list.

    Raises:
        InputError: ``texts`` is a bare ``str``/``bytes`` or not a sequence, an item is not a
            ``str``, or an item is empty or whitespace-only. The message names the item index.
    """
    if isinstance(texts, (str, bytes)) or not isinstance(texts, Sequence):
        raise InputError(f"texts: expected a list of str, got {type(texts).__name__}")
    out = list(texts)
    for i, t in enumerate(out):
        if not isinstance(t, str):
            raise InputError(f"texts[{i}]: expected str, got {type(t).__name__}")
        if not t.strip():
            raise InputError(f"texts[{i}]: empty or whitespace-only text {t!r}")
    return out


class TextTokenizer:
    """Captions -> padded ``(input_ids, attention_mask)`` for ``text.onnx``.

    Args:
        path: a ``tokenizer.json`` file (``tokenizers`` format).
        max_tokens: longest sequence fed to the encoder, special tokens included.

    Raises:
        BundleError: the file is missing or not a valid tokenizer.
    """

    def __init__(self, path: str | Path, max_tokens: int = DEFAULT_MAX_TOKENS):
        from tokenizers import Tokenizer

        if max_tokens < 3:
            raise BundleError(f"{path}: max_tokens must be >= 3, got {max_tokens}")
        try:
            tok = Tokenizer.from_file(str(path))
        except Exception as e:  # tokenizers raises a bare Exception on bad JSON
            raise BundleError(f"{path}: cannot load tokenizer ({e})") from e
        padding = tok.padding or {}
        self.pad_id = int(padding.get("pad_id", tok.token_to_id("[PAD]") or 0))
        self.max_tokens = int(max_tokens)
        tok.no_padding()
        tok.no_truncation()
        self._full = tok  # untruncated, only used to count the tokens a caption loses
        self._tok = Tokenizer.from_str(tok.to_str())
        self._tok.enable_truncation(self.max_tokens, strategy=TRUNCATION)

    def encode(self, texts: Sequence[str], *, start: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """Tokenise a batch of captions.

        Args:
            texts: N non-empty captions (see :func:`validate_texts`).
            start: index of ``texts[0]`` in the caller's list (used in messages).

        Returns:
            ``input_ids (N, L) int64`` and ``attention_mask (N, L) int64`` (1 = token,
            0 = padding), where ``L`` is the longest tokenised caption, at most ``max_tokens``.

        Raises:
            InputError: as :func:`validate_texts`.

        Warns:
            TruncationWarning: for each caption over ``max_tokens`` tokens, naming its index
                and how many tokens were dropped (route to logging with
                ``logging.captureWarnings(True)``).
        """
        try:
            texts = validate_texts(texts)
        except InputError as e:
            if start:
                raise InputError(f"{e} (batch starting at item {start})") from e
            raise
        encs = self._tok.encode_batch(texts) if texts else []
        for i, e in enumerate(encs):
            if e.overflowing:
                self._warn_truncated(start + i, texts[i], len(e.ids))
        length = max((len(e.ids) for e in encs), default=0)
        ids = np.full((len(encs), length), self.pad_id, dtype=np.int64)
        mask = np.zeros((len(encs), length), dtype=np.int64)
        for i, e in enumerate(encs):
            ids[i, : len(e.ids)] = e.ids
            mask[i, : len(e.ids)] = 1
        return ids, mask

    def _warn_truncated(self, index: int, text: str, kept: int) -> None:
        total = len(self._full.encode(text).ids)
        msg = (
            f"texts[{index}]: {total} tokens, over max_tokens={self.max_tokens}; "
            f"the last {total - kept} tokens were dropped ({text[:40]!r}...)"
        )
        warnings.warn(msg, TruncationWarning, stacklevel=4)
