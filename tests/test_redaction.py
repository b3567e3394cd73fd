"""No password is ever printed (issue 13.3).

A role whose password holds ``# ? / @ %``, a space, quotes and a backslash logs in over
TCP with ``scram-sha-256`` (the embedded server started with ``tcp=True``). Every CLI
command runs with its DSN (URL and ``key=value`` forms, ``$DATABASE_URL``), with a wrong
password, an unreachable port and malformed DSNs; no output — stdout, stderr, ``--json``,
logs, errors — holds the password or any piece of it. Distinctive 3-4 character pieces
are searched for, so a partly masked password is caught too.
"""
from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path
from urllib.parse import quote

import click
import psycopg
import pytest
from psycopg import sql

from _pg import reachable
from jointembed_pg import db
from jointembed_pg.server import embedded
from jointembed_pg.errors import DatabaseError

REPO = Path(__file__).resolve().parent.parent
PIECES = ["Zq7u", "Kx9", "Wv3", "Jr5", "Hs4"]
PASSWORD = "Zq7u#Kx9?/@%Wv3 'Jr5\"Hs4\\"
WRONG_PIECES = ["Bt6y", "Mn2", "Pk8"]
WRONG = "Bt6y@/Mn2 #'Pk8%"
ROLE = "je_alice"


@pytest.fixture(scope="module")
def tcp(tmp_path_factory):
    """(host, port, dbname) of a TCP server where ROLE logs in with PASSWORD."""
    srv = embedded.EmbeddedServer(reachable(tmp_path_factory.mktemp("redaction")) / "pgdata")
    admin = srv.start(hold=True, tcp=True)
    port = srv.postmaster().port
    dbname = "app_" + uuid.uuid4().hex[:8]
    with psycopg.connect(admin, autocommit=True) as c:
        c.execute(sql.SQL("CREATE ROLE {} LOGIN CREATEDB PASSWORD {}").format(sql.Identifier(ROLE),
                                                                               sql.Literal(PASSWORD)))
        c.execute(sql.SQL("CREATE DATABASE {} OWNER {}").format(sql.Identifier(dbname), sql.Identifier(ROLE)))
    with psycopg.connect(psycopg.conninfo.make_conninfo(admin, dbname=dbname), autocommit=True) as c:
        c.execute("CREATE EXTENSION vector")  # extensions need a superuser on PostgreSQL < 13 / untrusted ones
    yield "127.0.0.1", port, dbname
    srv.stop()


def url(tcp, password=PASSWORD, port=None):
    host, p, dbname = tcp
    return f"postgresql://{ROLE}:{quote(password, safe='')}@{host}:{port or p}/{dbname}"


def kv(tcp, password=PASSWORD):
    host, port, dbname = tcp
    return psycopg.conninfo.make_conninfo(host=host, port=port, user=ROLE, password=password, dbname=dbname)


def run(args, *, env_extra=None, timeout=300) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "PGPASSWORD")}
    env.update(env_extra or {})
    return subprocess.run([sys.executable, "-m", "jointembed_pg", *map(str, args)], capture_output=True, text=True,
                          env=env, timeout=timeout, cwd=REPO)


def assert_no_secret(p: subprocess.CompletedProcess, what) -> None:
    out = p.stdout + p.stderr
    for piece in PIECES + WRONG_PIECES:
        assert piece not in out, (what, piece, out[-3000:])


def test_valid_login_every_command(tcp, bundle_dir, flickr8k_dir, tmp_path):
    from test_sync_support import flickr_rows, make_photos

    dsn = url(tcp)
    with psycopg.connect(dsn, autocommit=True) as c:  # the URL form really logs in
        make_photos(c, flickr_rows(str(flickr8k_dir), 4))
    img = flickr8k_dir / "images" / flickr_rows(str(flickr8k_dir), 1)[0][2]
    captions = tmp_path / "c.csv"
    captions.write_text("id,text\n1,a dog runs\n2,a child plays\n")
    b = ["--bundle", bundle_dir]
    cmds = [
        ["init"], ["init", "--json"],
        ["index", "texts", captions, "--collection", "c", *b, "--json"],
        ["index", "images", img, "--collection", "c", *b, "--json"],
        ["search", "text", "a dog", "--collection", "c", *b, "--json"],
        ["search", "image", img, "--collection", "c", *b, "--json"],
        ["search", "item", "1", "--collection", "c", "--json"],
        ["attach", "--table", "photos", "--key", "id", "--text-column", "caption", "--image-column", "image_path",
         "--image-root", flickr8k_dir / "images", *b],
        ["status", "--table", "photos", "--json"], ["status"],
        ["sync", "--table", "photos", "--no-progress", "--json", *b],
        ["worker", "--table", "photos", "--until-idle", *b],
        ["reembed", "--table", "photos", "--no-progress", "--json", *b],
        ["detach", "--table", "photos"],
    ]
    ok = 0
    for cmd in cmds:
        p = run([*cmd, "--dsn", dsn])
        assert_no_secret(p, cmd)
        ok += p.returncode == 0
    assert ok >= len(cmds) - 2, "the commands should mostly succeed with a valid login"
    # the same through $DATABASE_URL, in key=value form
    p = run(["status", "--json"], env_extra={"DATABASE_URL": kv(tcp)})
    assert_no_secret(p, "DATABASE_URL kv")


def _bad_dsns(tcp) -> dict[str, str]:
    host, port, dbname = tcp
    return {
        "wrong password (URL)": url(tcp, WRONG),
        "wrong password (key=value)": kv(tcp, WRONG),
        "unreachable port": url(tcp, PASSWORD, port=1),
        "raw URL password (unencoded @ / # ? % space quotes)": f"postgresql://{ROLE}:{PASSWORD}@{host}:{port}/{dbname}",
        "raw URL wrong password": f"postgresql://{ROLE}:{WRONG}@{host}:{port}/{dbname}",
        "unquoted key=value password": f"host={host} port={port} user={ROLE} password={PASSWORD} dbname={dbname}",
        "password= in URL query": f"postgresql://{ROLE}@{host}:{port}/{dbname}?password={quote(WRONG, safe='')}",
    }


def test_failing_logins_and_malformed_dsns(tcp):
    for i, (what, dsn) in enumerate(_bad_dsns(tcp).items()):
        more = (["status", "--json"], ["search", "text", "a dog", "--json"]) if i in (0, 3) else ()
        for cmd in (["init"], *more):
            p = run([*cmd, "--dsn", dsn])
            assert p.returncode != 0, (what, cmd, p.stdout)
            assert_no_secret(p, (what, cmd))
        p = run(["init"], env_extra={"DATABASE_URL": dsn})
        assert p.returncode != 0
        assert_no_secret(p, (what, "DATABASE_URL"))


def test_every_dsn_command_covered(tcp, tmp_path):
    """Every command that takes --dsn (including ones added later) fails to log in without
    showing the password; long jobs (eval, demo, distributed) stop at the login."""
    from jointembed_pg.cli import cli

    def walk(group, prefix):
        for name, cmd in group.commands.items():
            if isinstance(cmd, click.Group):
                yield from walk(cmd, [*prefix, name])
            elif any("--dsn" in getattr(p, "opts", ()) for p in cmd.params):
                yield [*prefix, name], cmd

    cap = tmp_path / "c.csv"
    cap.write_text("id,text\n1,a dog\n")
    extra = {"index images": [tmp_path], "index texts": [cap], "index-distributed images": [tmp_path],
             "index-distributed texts": [cap], "search text": ["a dog"], "search image": [cap],
             "search item": ["1"], "attach": ["--table", "t", "--key", "id", "--text-column", "x"]}
    names = []
    for path, cmd in walk(cli, []):
        name = " ".join(path)
        names.append(name)
        if name in ("init", "status", "search text"):
            continue  # run with every bad DSN in test_failing_logins_and_malformed_dsns
        needs_table = any("--table" in getattr(p, "opts", ()) and p.required for p in cmd.params)
        args = extra.get(name, ["--table", "t"] if needs_table and name != "attach" else [])
        p = run([*path, *args, "--dsn", url(tcp, WRONG)], timeout=600)
        assert_no_secret(p, name)
    assert {"init", "search text", "sync", "worker", "eval", "demo"} <= set(names)


def test_password_on_the_command_line_in_a_usage_error(tcp):
    p = run(["init", url(tcp, WRONG), "--dsn", url(tcp, WRONG)])
    assert p.returncode == 2
    assert_no_secret(p, "usage error")


def test_python_errors_hold_no_secret(tcp):
    for what, dsn in _bad_dsns(tcp).items():
        with pytest.raises(DatabaseError) as info:
            db.connect(dsn)
        e: BaseException | None = info.value
        while e is not None:  # the message and every chained cause
            for piece in PIECES + WRONG_PIECES:
                assert piece not in str(e), (what, piece, str(e))
            e = e.__cause__ or e.__context__
        assert "***" in db.redact(dsn) or "not shown" in db.redact(dsn), what
