"""Size caps on the values a sync worker reads back from an attached table.

The one place that says how big a value of the user's table may be when it reaches a
worker, and how many rows a worker claims at once.

**Per row** (:class:`FetchCaps`, from the per-item :class:`~jointembed_pg.limits.Limits`):
``jointembed._sync_fetch`` (sql/functions/40_sync_queue.sql) measures each value on the
server and returns it only when it is within its cap; otherwise it returns NULL and the
size, so the value never crosses the wire nor enters the worker's memory. The worker then
fails the row with the size in the reason (:meth:`FetchCaps.refusal`; one attempt, not
retried: the value only changes through an UPDATE, which re-enqueues the row).

=====================  ================================  ===============================
value                  measured as                       cap
=====================  ================================  ===============================
key (``key::text``)    UTF-8 bytes (``octet_length``)    ``max_key_bytes``
text column            characters (``char_length`` of    ``max_text_chars`` (refused,
                       its ``::text`` form)              not truncated)
image path / URL       characters (``char_length``)      ``max_ref_chars``
image ``bytea``        bytes (``octet_length``)          smaller of ``max_file_bytes``
                                                         and the source's ``max_bytes``
=====================  ================================  ===============================

Measuring a non-text column's ``::text`` form (json, an array, a tsvector key) builds it
on the server; PostgreSQL bounds that by its 1 GB field limit. Only the row's own
modality's value is fetched (a text row does not bring its image along).

**Per batch** (:meth:`FetchCaps.claim_limit`): a claim takes at most
``batch_bytes // row_bytes`` rows (at least 1, at most ``batch_size``), where
``row_bytes`` is the largest a fetched row can be: key cap + the largest value cap of the
attachment's modalities, characters counted at 4 bytes (UTF-8 on the wire, and CPython's
widest ``str``), + :data:`ROW_OVERHEAD`. So the values of one batch take at most
``batch_bytes`` on the wire; the worker briefly holds about twice that (libpq's result
and the Python objects). Defaults: 256 MiB; a ``bytea`` table with the 20 MiB cap claims
12 rows, path / URL / text tables the full ``batch_size`` (32).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

from ..limits import Limits
from ..settings import LIMIT_ENV

#: Default ``SyncConfig.batch_bytes``: most bytes of values one claim may bring back.
BATCH_BYTES = 256 * 1024 * 1024
#: Bytes a character may take: UTF-8 on the wire, UCS-4 in a CPython ``str``.
BYTES_PER_CHAR = 4
#: Bytes allowed per fetched row for its other columns (id, hash, flags, framing).
ROW_OVERHEAD = 1024
#: Characters of an oversized key ``_sync_fetch`` still returns (for messages).
KEY_PREFIX_CHARS = 64
_INT4_MAX = 2**31 - 1


class Fetched(NamedTuple):
    """One row of ``jointembed._sync_fetch`` (column order of its RETURNS TABLE)."""

    id: int
    key: str                 # the key as text; its first 64 characters when key_bytes is over the cap
    modality: str            # "image" | "text"
    present: bool            # False: the user's row is gone
    text_value: str | None   # text rows
    image_ref: str | None    # image rows, image_source path | url
    image_data: bytes | None  # image rows, image_source bytea
    stored_hash: str | None
    attempts: int
    key_bytes: int           # octet_length(key::text)
    value_size: int | None   # chars (text, path, URL) or bytes (bytea); None: NULL or gone


@dataclass(frozen=True)
class FetchCaps:
    """Caps passed to ``_sync_fetch``: key in UTF-8 bytes, text and path / URL in
    characters, ``bytea`` in bytes."""

    key_bytes: int
    text_chars: int
    ref_chars: int
    image_bytes: int

    @classmethod
    def of(cls, att, limits: Limits) -> "FetchCaps":
        """The caps of attachment ``att`` (a :class:`~jointembed_pg.sync.catalog.Attachment`)
        under ``limits``: the bounds its rows are checked against in Python anyway."""
        image = min(int(limits.max_file_bytes), int(att.image_reader().max_bytes))
        return cls(int(limits.max_key_bytes), int(limits.max_text_chars), int(limits.max_ref_chars), image)

    def sql_args(self) -> list[int]:
        """``p_max_key_bytes, p_max_text_chars, p_max_ref_chars, p_max_image_bytes``
        (integers clamped to int4; PostgreSQL values are under 1 GB anyway)."""
        return [min(self.key_bytes, _INT4_MAX), min(self.text_chars, _INT4_MAX),
                min(self.ref_chars, _INT4_MAX), self.image_bytes]

    def row_bytes(self, att) -> int:
        """Most bytes one fetched row of ``att`` can bring back (see module docstring)."""
        value = self.text_chars * BYTES_PER_CHAR if att.text_column else 0
        if att.image_column:
            value = max(value, self.image_bytes if att.image_source == "bytea"
                        else self.ref_chars * BYTES_PER_CHAR)
        return self.key_bytes + value + ROW_OVERHEAD

    def claim_limit(self, att, batch_size: int, batch_bytes: int) -> int:
        """Rows to claim per batch: ``batch_size``, fewer when ``batch_size * row_bytes``
        is over ``batch_bytes``; at least 1."""
        return max(1, min(int(batch_size), int(batch_bytes) // self.row_bytes(att)))

    def refusal(self, att, row: Fetched, where: str) -> str | None:
        """Why ``row`` was not read (a key or value over its cap), or None.

        ``where`` names the row in the message (``schema.table[key]``).
        """
        if row.key_bytes > self.key_bytes:
            return (f"{where}: key is {row.key_bytes:,} bytes as text, over the {self.key_bytes:,}-byte limit "
                    f"({LIMIT_ENV['max_key_bytes']}); not read")
        size = row.value_size
        if size is None:
            return None
        if row.modality == "text":
            if row.text_value is None and size > self.text_chars:
                return (f"{where}.{att.text_column}: text is {size:,} characters, over the "
                        f"{self.text_chars:,}-character limit ({LIMIT_ENV['max_text_chars']}); not read")
        elif att.image_source == "bytea":
            if row.image_data is None and size > self.image_bytes:
                return (f"{where}.{att.image_column}: image bytea is {size:,} bytes, over the "
                        f"{self.image_bytes:,}-byte limit; not read")
        elif row.image_ref is None and size > self.ref_chars:
            return (f"{where}.{att.image_column}: image {att.image_source or 'path'} is {size:,} characters, "
                    f"over the {self.ref_chars:,}-character limit ({LIMIT_ENV['max_ref_chars']}); not read")
        return None
