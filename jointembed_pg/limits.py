"""Per-item limits on untrusted input: one set, applied by every path that reads items.

``jointembed index``, ``search image``, ``sync``, ``worker`` and the Ray backfill all read
images and captions through :mod:`jointembed_pg.files`, :mod:`jointembed_pg.model.preprocess`,
:mod:`jointembed_pg.ingest.sandbox` and :mod:`jointembed_pg.ingest.readers`, which take their bounds from
one :class:`Limits`. The defaults below hold unless an environment variable overrides them
(read by :meth:`Limits.from_env`; an invalid value is an :class:`InputError` at start-up):

==========================  ===============================  ==========================
limit                       default                          environment variable
==========================  ===============================  ==========================
file size (encoded image)   64 MiB                           JOINTEMBED_MAX_FILE_BYTES
decoded pixels (w x h)      40,000,000                       JOINTEMBED_MAX_PIXELS
time per image item         30 s (read + hash + decode)      JOINTEMBED_ITEM_TIMEOUT_S
decoder process memory      512 MiB peak RSS                 JOINTEMBED_DECODE_MEMORY_MB
caption length              131,072 characters               JOINTEMBED_MAX_TEXT_CHARS
item key length             2,048 bytes (UTF-8)              JOINTEMBED_MAX_KEY_BYTES
image path / URL value      8,192 characters                 JOINTEMBED_MAX_REF_CHARS
non-public URL hosts        none (public addresses only)     JOINTEMBED_URL_ALLOW_HOSTS
==========================  ===============================  ==========================

``JOINTEMBED_URL_ALLOW_HOSTS`` is a comma- or space-separated list of ``HOST`` /
``HOST:PORT`` entries (trusted internal image servers an attached table's URLs may reach;
:mod:`jointembed_pg.urls`); ``jointembed sync/worker/reembed --allow-url-host`` adds to it.

Why these values: every image is decoded in a decoder process
(:mod:`jointembed_pg.ingest.sandbox`; also the query image of ``search image`` and the
thumbnails of ``--html``) whose peak RSS stays within ``memory_mb``: the memory an image
needs is estimated from its header before decoding (mode bytes per pixel x pixels, row
pointers, the format decoder's own buffers, the RGB copy:
:func:`jointembed_pg.model.preprocess.decode_bytes`) and refused over the limit, and the
process's address space is capped so that its resident memory cannot pass it
(``RLIMIT_AS``). Pillow holds an RGB(A) image at 4 bytes per pixel and decoding plus the
alpha/EXIF steps keep at most two full-size copies alive, so 40 megapixels of RGB(A)
cost ~320 MB; formats whose decoders need more (lossless WebP: ~16 bytes a pixel) are
refused above a smaller size (``tests/test_decode_sandbox.py`` measures each payload). The key
bound keeps ``(modality, key)`` under PostgreSQL's B-tree entry limit (2704 bytes). The
path / URL bound (an attached table's image column, ``image_source`` path or url) is twice
Linux's ``PATH_MAX`` (4096 bytes) and above the 8 KiB request line most HTTP servers accept.
Values read back from attached tables are checked against these limits in SQL, before
they leave the server (:mod:`jointembed_pg.sync.caps`).
"""
from __future__ import annotations

from dataclasses import dataclass, fields

from . import settings
from .errors import InputError

MAX_FILE_BYTES = 64 * 1024 * 1024
MAX_PIXELS = 40_000_000
ITEM_TIMEOUT_S = 30.0
DECODE_MEMORY_MB = 512
MAX_TEXT_CHARS = 131_072
MAX_KEY_BYTES = 2048
MAX_REF_CHARS = 8192

_ENV = settings.LIMIT_ENV


@dataclass(frozen=True)
class Limits:
    """Bounds on one input item.

    Attributes:
        max_file_bytes: largest encoded image read, bytes (checked before reading).
        max_pixels: largest image decoded, width x height from its header (checked
            before decoding; JPEGs are then decoded at reduced scale when large).
        timeout_s: wall-clock seconds to read, hash and decode one image item (in a
            decoder process, which is killed when it runs over).
        memory_mb: peak resident memory of a decoder process, MiB (images that need more
            are refused before decoding; ``RLIMIT_AS`` holds the process to it).
        max_text_chars: longest caption embedded, characters.
        max_key_bytes: longest item key (a path or an id), UTF-8 bytes.
        max_ref_chars: longest image path / URL value of an attached table, characters.
        url_allow_hosts: ``HOST`` / ``HOST:PORT`` entries that image URLs may reach
            although they are not public addresses, or on another port than 80/443
            (:func:`jointembed_pg.urls.parse_allow`); default none.
    """

    max_file_bytes: int = MAX_FILE_BYTES
    max_pixels: int = MAX_PIXELS
    timeout_s: float = ITEM_TIMEOUT_S
    memory_mb: int = DECODE_MEMORY_MB
    max_text_chars: int = MAX_TEXT_CHARS
    max_key_bytes: int = MAX_KEY_BYTES
    max_ref_chars: int = MAX_REF_CHARS
    url_allow_hosts: tuple[str, ...] = ()

    def __post_init__(self):
        from .urls import parse_allow

        hosts = (self.url_allow_hosts,) if isinstance(self.url_allow_hosts, str) else self.url_allow_hosts
        object.__setattr__(self, "url_allow_hosts", tuple(sorted({str(h).strip() for h in hosts} - {""})))
        parse_allow(self.url_allow_hosts)  # InputError on a bad entry
        for f in fields(self):
            if f.name == "url_allow_hosts":
                continue
            v = getattr(self, f.name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not v > 0:
                raise InputError(f"limit {f.name} must be a positive number, got {v!r}")

    @classmethod
    def from_env(cls, environ=None) -> "Limits":
        """Defaults overridden by the ``JOINTEMBED_*`` variables of the table above, read
        through :mod:`jointembed_pg.settings` (from ``environ``, default ``os.environ``).

        Raises:
            InputError: a variable is not a positive number, or not a list of hosts.
        """
        raw_limits = settings.Settings.from_env(environ).limits
        kw: dict = {}
        for f in fields(cls):
            raw = raw_limits.get(f.name)
            if raw is None:
                continue
            if f.name == "url_allow_hosts":
                kw[f.name] = tuple(raw.replace(",", " ").split())
                continue
            try:
                kw[f.name] = float(raw) if f.name == "timeout_s" else int(raw)
            except ValueError:
                raise InputError(f"{_ENV[f.name]}={raw!r} is not a number") from None
        return cls(**kw)
