"""Shared pytest fixtures: real Flickr8K (skipped when absent), a real embedded Postgres
(pgserver, one cluster per test session, one fresh database per test that asks), and a
real model bundle exported from the committed weights (built once per session).
"""
from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
FLICKR8K = Path(os.environ.get("JOINTEMBED_DATA_DIR", REPO.parent / "shared" / "data" / "flickr8k"))


_OWN_BASETEMP: list[str] = []


def pytest_configure(config):
    """Give each run its own base temp dir outside ``/tmp/pytest-of-<user>``.

    pytest resets that shared directory to mode 0700 whenever *any* session starts, and
    the embedded PostgreSQL runs as another user (``pgserver``) when tests run as root:
    a second pytest session on the machine would lock the first one's servers out.
    """
    if config.option.basetemp is None and not hasattr(config, "workerinput"):
        config.option.basetemp = tempfile.mkdtemp(prefix="jointembed-pytest-")
        _OWN_BASETEMP.append(config.option.basetemp)


def pytest_unconfigure(config):
    for d in _OWN_BASETEMP:
        shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="session")
def flickr8k_dir() -> Path:
    """The Flickr8K directory (read in place); skips the test when it is absent."""
    if not (FLICKR8K / "Flickr8k.token.txt").is_file():
        pytest.skip(f"Flickr8K data not found at {FLICKR8K} (set JOINTEMBED_DATA_DIR)")
    return FLICKR8K


@pytest.fixture(scope="session")
def pg_server(tmp_path_factory):
    """A real PostgreSQL 16 + pgvector cluster (pgserver) for the whole session."""
    import pgserver

    pgdata = tmp_path_factory.mktemp("pgdata")
    srv = pgserver.get_server(pgdata, cleanup_mode="stop")
    yield srv
    srv.cleanup()


@pytest.fixture(scope="session")
def pg_admin_dsn(pg_server) -> str:
    """DSN of the session cluster's ``postgres`` database (for CREATE DATABASE)."""
    return pg_server.get_uri()


def _new_database(admin_dsn: str) -> str:
    import psycopg

    name = "t_" + uuid.uuid4().hex[:12]
    with psycopg.connect(admin_dsn, autocommit=True) as c:
        c.execute(f'CREATE DATABASE "{name}"')  # test-only: name is generated above
    return admin_dsn.replace("/postgres?", f"/{name}?")


@pytest.fixture
def pg_dsn(pg_admin_dsn) -> str:
    """DSN of a fresh, empty database in the session cluster (one per test)."""
    return _new_database(pg_admin_dsn)


@pytest.fixture(scope="module")
def module_pg_dsn(pg_admin_dsn) -> str:
    """DSN of a fresh database shared by one test module (for expensive setups)."""
    return _new_database(pg_admin_dsn)


@pytest.fixture(scope="session")
def bundle_dir(tmp_path_factory) -> Path:
    """A real fp32 model bundle exported from the committed weights, built once.

    ``JOINTEMBED_TEST_BUNDLE`` may point at an already built bundle to save time.
    """
    pre = os.environ.get("JOINTEMBED_TEST_BUNDLE")
    if pre:
        return Path(pre)
    cache = REPO / ".jointembed" / "test-bundle"
    from jointembed_export.build import build_default_bundle, bundle_is_current

    if not bundle_is_current(cache):
        if cache.exists():
            shutil.rmtree(cache)
        build_default_bundle(cache)
    return cache


@pytest.fixture(scope="session")
def bundle(bundle_dir):
    """The loaded runtime :class:`jointembed_pg.bundle.Bundle` for ``bundle_dir``."""
    from jointembed_pg.bundle import Bundle

    return Bundle.load(bundle_dir)
