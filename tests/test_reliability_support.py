"""Helpers of the reliability/security tests (holds no tests itself).

* :func:`cli` / :func:`cli_popen`: the ``jointembed`` CLI as a subprocess;
* :func:`flickr_images`: real Flickr8K image paths (read in place, never copied);
* :func:`stored_items`: what a collection holds, straight from its table;
* :func:`edited_bundle`: a second bundle (another model id and/or dimension) made of
  links to the real bundle's files and an edited manifest;
* :class:`OwnServer`: a dedicated embedded cluster in a temporary directory that a test
  may stop, restart, re-configure (``pg_hba.conf``) without touching the session server.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import psycopg
import pytest
from psycopg import sql

REPO = Path(__file__).resolve().parent.parent
_CLI = "from jointembed_pg.cli import main; main()"


def scenario(name: str, expected: str, area: str = ""):
    """``@pytest.mark.reliability(scenario=name, expected=expected, area=area)`` (see tests/_reliability.py).

    The marker is registered by the plugin's ``pytest_configure``, which runs after the
    module using it is imported; hence the silenced unknown-mark warning here.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", pytest.PytestUnknownMarkWarning)
        return pytest.mark.reliability(scenario=name, expected=expected, area=area)


def cli_env(home: Path | None = None, **extra: str) -> dict:
    env = dict(os.environ)
    env.pop("DATABASE_URL", None)
    env.pop("PGOPTIONS", None)
    if home is not None:
        env["JOINTEMBED_HOME"] = str(home)
    env.update(extra)
    return env


def cli(args, *, env: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run ``jointembed ARGS`` to completion (text mode, captured)."""
    return subprocess.run([sys.executable, "-c", _CLI, *map(str, args)], cwd=REPO, capture_output=True,
                          text=True, env=env or cli_env(), timeout=timeout)


def cli_popen(args, *, env: dict | None = None, stdout=subprocess.PIPE, stderr=subprocess.PIPE) -> subprocess.Popen:
    """Start ``jointembed ARGS`` in the background."""
    return subprocess.Popen([sys.executable, "-c", _CLI, *map(str, args)], cwd=REPO, stdout=stdout,
                            stderr=stderr, text=True, env=env or cli_env())


def one_line_error(p: subprocess.CompletedProcess) -> str:
    """The single stderr line of a failed command (asserts exit 1, one line, no traceback)."""
    lines = [ln for ln in p.stderr.strip().splitlines() if ln.strip()]
    assert p.returncode == 1, (p.returncode, p.stdout[-2000:], p.stderr[-2000:])
    assert len(lines) == 1 and "Traceback" not in p.stderr, p.stderr[-3000:]
    return lines[0]


def flickr_images(flickr8k_dir: Path, n: int, start: int = 0) -> list[Path]:
    """``n`` real Flickr8K JPEGs (sorted by name, from ``start``), resolved paths."""
    files = sorted((flickr8k_dir / "images").glob("*.jpg"))
    assert len(files) >= start + n, f"need {start + n} Flickr8K images, found {len(files)}"
    return [f.resolve() for f in files[start:start + n]]


def link_dir(dst: Path, files) -> Path:
    """A directory of symlinks to ``files`` (the CLI walks it; keys resolve to the real files)."""
    dst.mkdir(parents=True, exist_ok=True)
    for f in files:
        (dst / Path(f).name).symlink_to(f)
    return dst


def items_table(conn: psycopg.Connection, collection: str) -> sql.Identifier:
    row = conn.execute("SELECT items_table FROM jointembed.collections WHERE name = %s", [collection]).fetchone()
    assert row is not None, f"no collection {collection!r}"
    return sql.Identifier("jointembed", row[0])


def stored_items(dsn: str, collection: str = "default", modality: str = "image") -> list[tuple]:
    """``[(key, content_hash, model_id, embedding (D,) float32)]`` of every row, key order.

    Duplicates (if any) are kept, so ``len`` counts rows, not keys.
    """
    with psycopg.connect(dsn) as conn:
        rows = conn.execute(sql.SQL("SELECT key, content_hash, model_id, embedding::real[] FROM {} "
                                    "WHERE modality = %s ORDER BY key").format(items_table(conn, collection)),
                            [modality]).fetchall()
    return [(k, h, m, np.asarray(e, np.float32)) for k, h, m, e in rows]


def table_digest(dsn: str, ident: sql.Composable) -> tuple:
    """(row count, md5 of all rows): proves a table was not written."""
    with psycopg.connect(dsn) as conn:
        return conn.execute(sql.SQL("SELECT count(*), md5(coalesce(string_agg(t::text, '|' ORDER BY t::text), '')) "
                                    "FROM {} t").format(ident)).fetchone()


def edited_bundle(src: Path, dst: Path, **changes) -> Path:
    """A bundle directory linking ``src``'s files, with manifest fields replaced by ``changes``."""
    dst.mkdir(parents=True)
    for f in src.iterdir():
        if f.name != "manifest.json":
            (dst / f.name).symlink_to(f.resolve())
    manifest = json.loads((src / "manifest.json").read_text())
    manifest.update(changes)
    (dst / "manifest.json").write_text(json.dumps(manifest, indent=1))
    return dst


def wait_for(pred, timeout: float, step: float = 0.2) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            if pred():
                return True
        except psycopg.OperationalError:
            pass
        time.sleep(step)
    return bool(pred())


def new_database(admin_dsn: str) -> str:
    """A fresh database on the server of ``admin_dsn``."""
    from _pg import new_database as _new

    return _new(admin_dsn)


class OwnServer:
    """An embedded cluster of its own (one per test module that needs to stop it).

    ``stop()`` shuts the server down (fast: clients are disconnected), ``start()``
    brings it back on the same private socket directory, so DSNs stay valid.
    """

    def __init__(self, pgdata: Path):
        from _pg import reachable
        from jointembed_pg.server.embedded import EmbeddedServer

        self.srv = EmbeddedServer(reachable(Path(pgdata)) / "cluster")
        self.pgdata = self.srv.pgdata
        self.admin_dsn = self.srv.start(hold=True)
        self.socket_dir = str(self.srv.run_dir)

    def stop(self) -> None:
        self.srv.stop()

    def start(self) -> None:
        self.srv.start(hold=True)

    def is_up(self) -> bool:
        try:
            with psycopg.connect(self.admin_dsn, connect_timeout=2):
                return True
        except psycopg.OperationalError:
            return False

    def close(self) -> None:
        self.srv.stop()
