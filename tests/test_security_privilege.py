"""Least privilege and passwords, on a dedicated pgserver cluster whose ``pg_hba.conf``
requires a real ``scram-sha-256`` password for the worker role.

The worker role is created with :data:`reliability_report.WORKER_ROLE_SQL` (the SQL that
docs/RELIABILITY.md shows): it can read the attached table and write jointembed's own
objects only. ``sync``, ``worker`` and ``status`` succeed with it; writing the user's table
fails; the password never appears in any output.
"""
from __future__ import annotations

import json
from urllib.parse import quote

import psycopg
import pytest
from psycopg import sql

from reliability_report import WORKER_ROLE_SQL
from test_reliability_support import cli, new_database, one_line_error, scenario
from test_sync_support import flickr_rows, make_photos

pytest_plugins = ["_reliability"]
pytestmark = pytest.mark.flickr8k

ROLE = "je_worker"
PASSWORD = "Pw-9q7Zr4-s3cr3t"
WRONG = "Wr0ng-pa55-XyZ"


@pytest.fixture(scope="module")
def secured(own_server):
    """``own_server`` with a password login required for :data:`ROLE` over the socket."""
    hba = own_server.pgdata / "pg_hba.conf"
    original = hba.read_text()
    hba.write_text(f"local all {ROLE} scram-sha-256\n" + original)
    with psycopg.connect(own_server.admin_dsn, autocommit=True) as c:
        c.execute("SELECT pg_reload_conf()")
    yield own_server
    hba.write_text(original)
    with psycopg.connect(own_server.admin_dsn, autocommit=True) as c:
        c.execute("SELECT pg_reload_conf()")


def _role_dsn(admin_dsn: str, dsn: str, password: str) -> str:
    return dsn.replace("postgres:@", f"{ROLE}:{quote(password)}@")


@scenario("Least-privilege worker role (the SQL in this document): `sync`, `worker`, `status` with it",
          "they succeed; the role cannot UPDATE/INSERT/DELETE the user's table nor CREATE in its schema",
          "least privilege")
def test_least_privilege_worker(secured, bundle_dir, flickr8k_dir, observe):
    dsn = new_database(secured.admin_dsn)
    n = 12
    with psycopg.connect(dsn, autocommit=True) as conn:
        make_photos(conn, flickr_rows(str(flickr8k_dir), n))
    owner_args = ["--dsn", dsn, "--bundle", bundle_dir]
    p = cli(["attach", "--table", "photos", "--key", "id", "--text-column", "caption", "--image-column",
             "image_path", "--image-root", flickr8k_dir / "images", *owner_args])
    assert p.returncode == 0, p.stderr
    dbname = psycopg.conninfo.conninfo_to_dict(dsn)["dbname"]
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(sql.SQL(WORKER_ROLE_SQL).format(
            role=sql.Identifier(ROLE), role_name=sql.Literal(ROLE), password=sql.Literal(PASSWORD),
            database=sql.Identifier(dbname)))
    wdsn = _role_dsn(secured.admin_dsn, dsn, PASSWORD)
    args = ["--table", "photos", "--dsn", wdsn, "--bundle", bundle_dir]
    outputs = []
    p = cli(["sync", *args, "--batch-size", "8", "--no-progress", "--json"])
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout)["written"] == 2 * n
    outputs.append(p.stdout + p.stderr)
    with psycopg.connect(dsn, autocommit=True) as conn:     # the owner's application writes
        conn.execute("UPDATE photos SET caption = caption || ' (edited)' WHERE id <= 3")
        conn.execute("INSERT INTO photos (id, caption, image_path) SELECT 1000, caption, image_path "
                     "FROM photos WHERE id = 4")
    p = cli(["worker", *args, "--until-idle"])
    assert p.returncode == 0, p.stderr
    written = sum(json.loads(x).get("written", 0) for x in p.stderr.splitlines() if '"event": "batch"' in x)
    assert written == 5, p.stderr
    outputs.append(p.stdout + p.stderr)
    p = cli(["status", "--table", "photos", "--dsn", wdsn, "--json"])
    assert p.returncode == 0 and json.loads(p.stdout)["done"] == 2 * (n + 1), p.stderr
    outputs.append(p.stdout + p.stderr)
    denied = []
    with psycopg.connect(wdsn, autocommit=True) as w:
        for stmt in ("UPDATE photos SET caption = 'x'", "INSERT INTO photos (id) VALUES (9999)",
                     "DELETE FROM photos", "CREATE TABLE public.evil (x int)", "SELECT count(*) FROM photos"):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                w.execute(stmt)
            denied.append(stmt.split(" (")[0])
    assert all(PASSWORD not in o for o in outputs)
    observe(f"sync wrote {2 * n}, worker wrote {written} after the owner's edits, status done {2 * (n + 1)}; "
            f"denied: {', '.join(denied)}; password absent from all output")


@scenario("Password-bearing DSNs (right and wrong password; URI and key=value form) in logs, errors and "
          "`status` output", "the password never appears; a wrong one gives exit 1 with one line",
          "least privilege")
def test_password_never_printed(secured, bundle_dir, tmp_path, observe):
    dsn = new_database(secured.admin_dsn)
    with psycopg.connect(secured.admin_dsn, autocommit=True) as c:
        if not c.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", [ROLE]).fetchone():
            c.execute(sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(sql.Identifier(ROLE), sql.Literal(PASSWORD)))
    from jointembed_pg import db

    db.connect(dsn).close()                                   # migrations, as the owner
    with psycopg.connect(dsn, autocommit=True) as c:
        c.execute("SELECT jointembed.grant_usage(%s)", [ROLE])
    caps = tmp_path / "caps.jsonl"
    caps.write_text('{"id": "a", "text": "a dog runs"}\n')
    kv = f"host={secured.socket_dir} dbname={psycopg.conninfo.conninfo_to_dict(dsn)['dbname']} user={ROLE} password={WRONG}"
    seen = []
    for target in (_role_dsn(secured.admin_dsn, dsn, WRONG), kv):
        for cmd in (["status"], ["index", "texts", caps, "--bundle", bundle_dir],
                    ["sync", "--table", "photos", "--bundle", bundle_dir],
                    ["worker", "--bundle", bundle_dir, "--until-idle"], ["search", "text", "a dog", "--bundle", bundle_dir]):
            p = cli([*cmd, "--dsn", target])
            text = p.stdout + p.stderr
            assert WRONG not in text and "Traceback" not in text, text
            line = one_line_error(p)
            assert "password authentication failed" in line, line
            seen.append(line)
    p = cli(["status", "--dsn", _role_dsn(secured.admin_dsn, dsn, PASSWORD)])
    assert p.returncode == 0 and PASSWORD not in p.stdout + p.stderr, p.stderr

    assert PASSWORD not in db.redact(_role_dsn(secured.admin_dsn, dsn, PASSWORD))
    assert WRONG not in db.redact(kv)
    observe(f"{len(seen)} failed logins (status, index, sync, worker, search x 2 DSN forms), e.g. "
            f"{seen[0][:60]!r}...{seen[0][-70:]!r}; right password: status exit 0; "
            "password in no output, redact() masks both forms")
