"""Shared pytest fixtures: real Flickr8K (skipped when absent), a real PostgreSQL (one
cluster per test session, one fresh database per test that asks), and a real model
bundle exported from the committed weights (built once per session).

The server: ``--test-dsn DSN`` (or ``$JOINTEMBED_TEST_DSN``) runs the whole suite against
any PostgreSQL with pgvector (the DSN's role needs CREATEDB; tests create databases
``t_<random>`` on it); without it, a private embedded cluster
(:class:`jointembed_pg.server.embedded.EmbeddedServer`) in the session's temp dir. If neither
starts, the run stops at once with one message.

``@pytest.mark.pgvector_min("0.8")`` skips a test, with the reason, when the server's
pgvector is older.
"""
from __future__ import annotations

import os

try:  # before anything imports transformers: torchvision's CUDA wheel loads without its ops
    import jointembed_train._torchvision  # noqa: F401
except ImportError:  # the runtime-only install has no torch
    pass
import shutil
import sys
import tempfile
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _pg import new_database, reachable, version_tuple  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
FLICKR8K = Path(os.environ.get("JOINTEMBED_DATA_DIR", REPO.parent / "shared" / "data" / "flickr8k"))
TEST_DSN_ENV = "JOINTEMBED_TEST_DSN"

_OWN_BASETEMP: list[str] = []


#: A test file that names one of these needs a database (``--db-only`` keeps just those files).
DB_MARKERS = ("pg_dsn", "module_pg_dsn", "pg_admin_dsn", "own_server", "jointembed_pg.server.embedded",
              "import embedded", "Store(", "db.connect")


def pytest_addoption(parser):
    parser.addoption("--test-dsn", default=os.environ.get(TEST_DSN_ENV) or None, metavar="DSN",
                     help=f"run the database tests against this server (default: ${TEST_DSN_ENV}, else a "
                          "private embedded cluster); its role needs CREATEDB")
    parser.addoption("--db-only", action="store_true",
                     help="collect only the test files that use a database (the second CI leg)")


def pytest_ignore_collect(collection_path, config):
    """With ``--db-only``, skip collecting test files that touch no database."""
    if not config.getoption("--db-only") or collection_path.suffix != ".py":
        return None
    if not collection_path.name.startswith("test_"):
        return None
    text = collection_path.read_text(encoding="utf-8", errors="replace")
    return None if any(m in text for m in DB_MARKERS) else True


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


@pytest.fixture(scope="session", autouse=True)
def _reachable_basetemp(tmp_path_factory) -> None:
    """pytest (re)creates the base temp dir 0700; let the embedded server's OS user
    traverse it (see :func:`_pg.reachable`)."""
    reachable(tmp_path_factory.getbasetemp())


@pytest.fixture(scope="session")
def flickr8k_dir() -> Path:
    """The Flickr8K directory (read in place); skips the test when it is absent."""
    if not (FLICKR8K / "Flickr8k.token.txt").is_file():
        pytest.skip(f"Flickr8K data not found at {FLICKR8K} (set JOINTEMBED_DATA_DIR)")
    return FLICKR8K


@pytest.fixture(scope="session")
def pg_admin_dsn(request, tmp_path_factory) -> str:
    """DSN of the session server's ``postgres`` database (for CREATE DATABASE)."""
    import psycopg

    from jointembed_pg.server import embedded
    from jointembed_pg.errors import redact_dsn, scrub

    dsn = request.config.getoption("--test-dsn")
    if dsn:
        try:
            with psycopg.connect(dsn, connect_timeout=10) as c:
                c.execute("SELECT 1")
        except Exception as e:  # noqa: BLE001 - any failure ends the run with one line
            pytest.exit(scrub(f"--test-dsn {redact_dsn(dsn)}: cannot connect: {' '.join(str(e).split())}", dsn),
                        returncode=3)
        yield dsn
        return
    base = reachable(tmp_path_factory.mktemp("pg"))
    srv = embedded.EmbeddedServer(base / "pgdata")
    try:
        uri = srv.acquire()
    except Exception as e:  # noqa: BLE001
        pytest.exit(f"cannot start the embedded PostgreSQL for the tests: {' '.join(str(e).split())} "
                    f"(or pass --test-dsn / ${TEST_DSN_ENV})", returncode=3)
    yield uri
    srv.stop()


@pytest.fixture(scope="session")
def pgvector_version(pg_admin_dsn) -> str:
    """pgvector version ``CREATE EXTENSION vector`` installs on the session server."""
    import psycopg

    with psycopg.connect(pg_admin_dsn) as c:
        row = c.execute("SELECT default_version FROM pg_available_extensions WHERE name = 'vector'").fetchone()
    if row is None:
        pytest.exit("the test server has no pgvector extension", returncode=3)
    return row[0]


@pytest.fixture(autouse=True)
def _pgvector_gate(request):
    """Skip (with the reason) tests marked ``pgvector_min(V)`` on an older pgvector."""
    marker = request.node.get_closest_marker("pgvector_min")
    if marker is None:
        return
    need = str(marker.args[0])
    have = request.getfixturevalue("pgvector_version")
    if version_tuple(have) < version_tuple(need):
        pytest.skip(f"needs pgvector >= {need}; the test server has {have}")


@pytest.fixture(autouse=True)
def _sigint_kept(request):
    """A test (or a library it drives) that leaves SIGINT ignored in the pytest process makes
    every later subprocess inherit SIG_IGN (an ignored signal survives exec: Python then
    never raises KeyboardInterrupt there), so a later Ctrl-C test waits for nothing: restore
    the handler and say which test changed it."""
    import signal
    import warnings

    before = signal.getsignal(signal.SIGINT)
    yield
    after = signal.getsignal(signal.SIGINT)
    if after is not before:
        signal.signal(signal.SIGINT, before)
        warnings.warn(f"{request.node.nodeid} left SIGINT set to {after!r}; restored", stacklevel=1)


@pytest.fixture
def pg_dsn(pg_admin_dsn) -> str:
    """DSN of a fresh, empty database on the session server (one per test)."""
    return new_database(pg_admin_dsn)


@pytest.fixture(scope="module")
def module_pg_dsn(pg_admin_dsn) -> str:
    """DSN of a fresh database shared by one test module (for expensive setups)."""
    return new_database(pg_admin_dsn)


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
    """The loaded runtime :class:`jointembed_pg.model.bundle.Bundle` for ``bundle_dir``."""
    from jointembed_pg.model.bundle import Bundle

    return Bundle.load(bundle_dir)
