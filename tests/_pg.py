"""Database helpers shared by conftest and the test helper modules (holds no tests)."""
from __future__ import annotations

import os
import uuid
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psycopg
from psycopg import sql


def with_dbname(dsn: str, name: str) -> str:
    """``dsn`` pointing at database ``name`` (URL DSNs stay URLs)."""
    if dsn.lower().startswith(("postgresql://", "postgres://")):
        return urlunsplit(urlsplit(dsn)._replace(path="/" + name))
    return psycopg.conninfo.make_conninfo(dsn, dbname=name)


def new_database(admin_dsn: str) -> str:
    """Create a fresh database ``t_<random>`` on the server of ``admin_dsn``; return its DSN."""
    name = "t_" + uuid.uuid4().hex[:12]
    with psycopg.connect(admin_dsn, autocommit=True) as c:
        c.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    return with_dbname(admin_dsn, name)


def reachable(path: Path) -> Path:
    """Let the embedded server's OS user (``pgserver``, when tests run as root) traverse
    ``path``, a directory the test made itself (pytest makes them 0700). jointembed never
    loosens a directory it did not create, so tests that put a cluster under ``tmp_path``
    call this."""
    if os.geteuid() == 0:
        os.chmod(path, 0o711)
    return path


def version_tuple(v: str) -> tuple[int, ...]:
    return tuple(int(p) for p in v.split(".") if p.isdigit())
