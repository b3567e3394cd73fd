"""Where bundles are written: atomic staging directories and the int8 sibling's name.

Shared by :mod:`jointembed_export.build` (fp32) and :mod:`jointembed_export.int8`, so
neither imports the other at module level (no import circle).
"""
from __future__ import annotations

import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from . import ExportError

#: Suffix of the int8 sibling bundle: ``<name>-int8``.
INT8_SUFFIX = "-int8"


@contextmanager
def staged_dir(out_dir: Path, *, force: bool = False) -> Iterator[Path]:
    """Yield an empty staging directory; on success it replaces ``out_dir`` atomically.

    Raises:
        ExportError: ``out_dir`` exists and ``force`` is false (checked before any work).
    """
    out_dir = Path(out_dir)
    if out_dir.exists() and not force:
        raise ExportError(f"{out_dir} already exists (use --force to replace it)")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.partial-", dir=out_dir.parent))
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    tmp.chmod(0o755)
    old = None
    if out_dir.exists():
        old = out_dir.with_name(f".{out_dir.name}.old-{os.getpid()}")
        os.replace(out_dir, old)
    os.replace(tmp, out_dir)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def int8_dir(fp32_dir: Path) -> Path:
    """``<dir>-int8`` beside an fp32 bundle directory."""
    fp32_dir = Path(fp32_dir)
    return fp32_dir.with_name(fp32_dir.name + INT8_SUFFIX)
