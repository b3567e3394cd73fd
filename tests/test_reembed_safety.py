"""reembed never switches to a model that failed, works (or fails cleanly) when run by a
superuser on another role's table, and the small sync items around it (dropped tables in
status and the worker, dimensions pgvector cannot index, exit codes, attach's counts).

Real PostgreSQL, the real bundle; a second "model" is the real one behind a projection
(:class:`test_sync_support.Projected`) or with some of its inputs refused (:class:`Refusing`).
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import psycopg
import pytest
from psycopg import sql

from jointembed_pg import db
from jointembed_pg.errors import DatabaseError, ItemError
from jointembed_pg.sync import catalog as sync
from jointembed_pg.sync.drain import sync_table
from jointembed_pg.sync.reembed import ReembedRefused, abort, reembed
from jointembed_pg.sync.worker import JsonLog, Worker
from test_reliability_support import scenario
from test_sync_support import LogLines, Projected, make_photos, side_rows

pytest_plugins = ["_reliability"]

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def conn(pg_dsn):
    with db.connect(pg_dsn, autocommit=True) as c:
        yield c


class Refusing(Projected):
    """A projected model that refuses every text containing one of ``bad`` (all: ``bad=None``)."""

    def __init__(self, inner, dim, model_id, bad=None):
        super().__init__(inner, dim, model_id)
        self.bad = bad

    def encode_texts(self, texts):
        for t in texts:
            if self.bad is None or any(b in t for b in self.bad):
                raise ItemError("text", "refused by the test model")
        return super().encode_texts(texts)

    def encode_images(self, images):  # the Store API checks a bundle has it; texts-only tables never call it
        raise NotImplementedError


def _texts(conn, bundle, n=6, table="photos"):
    make_photos(conn, [(i, f"caption number {i}", f"img{i}.jpg") for i in range(1, n + 1)], table=table)
    att = sync.attach(conn, table, bundle, key="id", text_column="caption")
    assert sync_table(conn, table, bundle).written == n
    return att


def _hits(conn, bundle, table="photos"):
    q = bundle.encode_texts(["caption number 3"])[0]
    return conn.execute("SELECT key FROM jointembed.search_attached(%s, %s, 3, 'text')", [table, q]).fetchall()


def _old_intact(conn, bundle, att, n=6):
    now = sync.find(conn, "photos")
    assert (now.model_id, now.dim, now.active_version) == (bundle.model_id, bundle.dim, 1)
    assert len(side_rows(conn, att.id, 1)) == n
    assert len(_hits(conn, bundle)) == 3


# -- 1. no switch to a model that failed -------------------------------------------------
@scenario("`reembed` to a model that fails every row (6 rows embedded by the old model)",
          "ReembedRefused (CLI: exit 1, one line); old model, its side table and search kept; the build "
          "stays for a rerun or --abort; the owner's sync and status work meanwhile", "model safety")
def test_a_model_that_embeds_nothing_is_not_switched_to(conn, bundle, observe):
    att = _texts(conn, bundle)
    broken = Refusing(bundle, 48, "broken-48")
    with pytest.raises(ReembedRefused, match=r"not switched to model broken-48: it embedded 0 of the 6 .*old model") as e:
        reembed(conn, "photos", broken)
    observe(str(e.value)[:200] + "...")
    assert e.value.report.switched is False and len(e.value.report.sync.failed) == 6
    _old_intact(conn, bundle, att)
    # the build stays resumable: the owner's sync and status go on; --abort drops it
    st = sync.status(conn, "photos")[0]
    assert st["building"]["failed"] == 6 and st["building"]["done"] == 0
    conn.execute("UPDATE photos SET caption = 'a red bicycle' WHERE id = 2")
    assert sync_table(conn, "photos", bundle).written == 1
    assert abort(conn, "photos") is True
    _old_intact(conn, bundle, att)


@scenario("`reembed` to a model that fails 1 of 6 rows: default --max-failed 0, then 16%, then 17%",
          "refused twice (old model kept), then switched with the failed row reported", "model safety")
def test_failures_over_max_failed_keep_the_old_model_then_a_rerun_accepts_them(conn, bundle, observe):
    att = _texts(conn, bundle)
    flaky = Refusing(bundle, 48, "flaky-48", bad=["number 4"])
    with pytest.raises(ReembedRefused, match=r"1 of the 6 .*--max-failed") as e:
        reembed(conn, "photos", flaky)                                   # default: none may fail
    observe(str(e.value)[:170] + "...")
    _old_intact(conn, bundle, att)
    with pytest.raises(ReembedRefused):
        reembed(conn, "photos", flaky, max_failed="16%")                 # 1/6 = 16.7 % > 16 %
    rep = reembed(conn, "photos", flaky, max_failed="17%")               # failed rows retried, then accepted
    assert rep.switched and [f["key"] for f in rep.sync.failed] == ["4"]
    now = sync.find(conn, "photos")
    assert (now.model_id, now.active_version) == ("flaky-48", 2) and len(side_rows(conn, att.id, 2)) == 5
    observe(f"17%: switched to {now.model_id}, {rep.sync.written} written, failed keys "
            f"{[f['key'] for f in rep.sync.failed]}")


def test_rows_failing_in_both_models_do_not_count_and_a_count_is_accepted(conn, bundle):
    att = _texts(conn, bundle)
    conn.execute("UPDATE photos SET caption = NULL WHERE id = 5")        # fails for every model
    sync_table(conn, "photos", bundle)
    assert reembed(conn, "photos", Projected(bundle, 48, "p48")).switched   # row 5 lost nothing new
    with pytest.raises(ReembedRefused):
        reembed(conn, "photos", Refusing(bundle, 32, "r32", bad=["number 1", "number 2"]), max_failed=1)
    assert reembed(conn, "photos", Refusing(bundle, 32, "r32", bad=["number 1", "number 2"]), max_failed=2).switched
    assert sync.find(conn, "photos").model_id == "r32" and att.id


@pytest.mark.parametrize("bad", ["-1", "101%", "x", "1.5", "%"])
def test_max_failed_is_checked(conn, bundle, bad):
    att = _texts(conn, bundle, 2)
    with pytest.raises(Exception, match="max-failed"):
        reembed(conn, "photos", Projected(bundle, 48, "p48"), max_failed=bad)
    assert sync.find(conn, "photos").active_version == 1 and att


@pytest.mark.parametrize("bad", ["9" * 5000, "1" + "0" * 18, "\u0661\u0662", "\uff15%", "5.1234567%", 10**19])
def test_max_failed_odd_numbers_are_usage_errors(bad):
    """Over-long counts and non-ASCII digits: an ArgumentError, never a ValueError traceback."""
    from jointembed_pg.errors import ArgumentError
    from jointembed_pg.sync.reembed import parse_max_failed

    with pytest.raises(ArgumentError, match="max-failed"):
        parse_max_failed(bad)
    if isinstance(bad, str):
        r = subprocess.run([sys.executable, "-m", "jointembed_pg", "reembed", "--table", "photos", "--max-failed", bad],
                           capture_output=True, text=True, timeout=120, env=dict(os.environ))
        assert r.returncode == 2 and "Traceback" not in r.stderr and "--max-failed" in r.stderr, r.stderr[-500:]


# -- 2. a superuser's reembed of another role's table ------------------------------------
@scenario("A superuser runs `reembed` on a table that another role (the owner of schema jointembed) "
          "owns and attached", "works: the new side table belongs to the owner; the owner's sync, status and "
          "abort of a later build work", "security")
def test_superuser_reembed_of_a_table_another_role_owns(pg_dsn, bundle, observe):
    role = "je_owner_" + pg_dsn.rsplit("/", 1)[-1][-8:]
    with psycopg.connect(pg_dsn, autocommit=True) as su:
        su.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(role)))
        su.execute(sql.SQL("GRANT CREATE, CONNECT ON DATABASE {} TO {}").format(
            sql.Identifier(su.info.dbname), sql.Identifier(role)))
        su.execute("CREATE EXTENSION IF NOT EXISTS vector")
        su.execute(sql.SQL("CREATE SCHEMA app AUTHORIZATION {}").format(sql.Identifier(role)))
    odsn = pg_dsn.replace("postgres:@", f"{role}:@")
    with db.connect(odsn, autocommit=True) as owner:                     # the owner runs the migrations
        make_photos(owner, [(i, f"caption number {i}", "x.jpg") for i in range(1, 5)], schema="app")
        att = sync.attach(owner, "photos", bundle, key="id", text_column="caption", schema="app")
        sync_table(owner, "photos", bundle, schema="app")
    new = Projected(bundle, 48, "p48")
    with db.connect(pg_dsn, autocommit=True) as su:
        assert su.execute("SELECT rolsuper FROM pg_roles WHERE rolname = current_user").fetchone()[0]
        # the SQL itself refuses to create a side table the owner would not own (nothing left behind)
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="owner of schema jointembed"):
            su.execute("SELECT jointembed._sync_begin_version(%s, 'x', 8)", [att.id])
        assert [v.state for v in sync.versions(su, att)] == ["active"]
        rep = reembed(su, "photos", new, schema="app")
        assert rep.switched and rep.sync.written == 4 and not rep.sync.failed
    with db.connect(odsn, autocommit=True) as owner:                     # the owner's sync and status work
        owned = owner.execute("SELECT c.relname, pg_get_userbyid(c.relowner) FROM pg_class c "
                              "WHERE c.relnamespace = 'jointembed'::regnamespace AND c.relkind = 'r' "
                              "AND c.relname LIKE %s", [f"a{att.id}_%"]).fetchall()
        assert owned and {o for _, o in owned} == {role}, owned
        observe(f"switched, {rep.sync.written} rows embedded; jointembed tables {sorted(n for n, _ in owned)} "
                "owned by the owner role")
        owner.execute("UPDATE app.photos SET caption = 'a red bicycle' WHERE id = 2")
        assert sync_table(owner, "photos", new, schema="app").written == 1
        st = sync.status(owner, "photos", "app")[0]
        assert (st["model_id"], st["done"], st["building"]) == ("p48", 4, None)
        # and a superuser's build that is aborted leaves nothing behind for the owner either
        with db.connect(pg_dsn, autocommit=True) as su:
            reembed(su, "photos", Projected(bundle, 32, "p32"), schema="app", switch=False)
        assert sync.status(owner, "photos", "app")[0]["building"]["done"] == 4
        assert abort(owner, "photos", "app")


# -- 3. small items ------------------------------------------------------------------------
@scenario("An attached table dropped without detach, beside another attached table",
          "status shows the other table's counts and an error line for the dropped one (exit 0); the worker "
          "logs table_error once and embeds the other table", "database faults")
def test_a_dropped_attached_table_fails_only_its_own_status_and_worker_turn(conn, pg_dsn, bundle, observe):
    _texts(conn, bundle, 3, table="gone")
    _texts(conn, bundle, 3, table="photos")
    conn.execute("DROP TABLE gone")
    conn.execute("UPDATE photos SET caption = 'a red bicycle' WHERE id = 2")
    rows = {st["table"]: st for st in sync.status(conn)}
    assert rows["photos"]["done"] == 3 and rows["photos"]["pending"] == 1 and "error" not in rows["photos"]
    assert "gone" in rows["gone"]["error"] and "detach" in rows["gone"]["error"]
    p = subprocess.run([sys.executable, "-m", "jointembed_pg", "status", "--dsn", pg_dsn], cwd=REPO,
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    assert "photos: model" in p.stdout and "gone: error:" in p.stdout
    logs = LogLines()
    totals = Worker(pg_dsn, bundle, log=JsonLog(logs, worker="w")).run(until_idle=True, handle_signals=False)
    assert totals["written"] == 1
    events = [json.loads(x) for x in logs.lines]
    errors = [e for e in events if e["event"] == "table_error"]
    assert len(errors) == 1 and errors[0]["table"] == "public.gone", events
    observe(f"status: {' | '.join(p.stdout.splitlines())[:260]}; worker: table_error {errors[0]['error'][:80]}..., "
            f"written {totals['written']}")
    assert sync.status(conn, "photos")[0]["done"] == 3 and sync.status(conn, "photos")[0]["pending"] == 0


def test_dimensions_pgvector_cannot_index_are_refused_with_a_clear_message(conn, bundle):
    make_photos(conn, [(1, "a caption", "x.jpg")])
    before = conn.execute("SELECT count(*) FROM pg_class WHERE relnamespace = 'jointembed'::regnamespace").fetchone()
    with pytest.raises(DatabaseError, match=r"1 to 2000 dimensions .*model wide has 2001"):
        sync.attach(conn, "photos", Projected(bundle, 2001, "wide"), key="id", text_column="caption")
    assert sync.list_attachments(conn) == []
    assert conn.execute("SELECT count(*) FROM pg_class WHERE relnamespace = 'jointembed'::regnamespace"
                        ).fetchone() == before
    att = sync.attach(conn, "photos", bundle, key="id", text_column="caption")
    with pytest.raises(DatabaseError, match=r"1 to 2000 dimensions .*model wide has 2001"):
        reembed(conn, "photos", Projected(bundle, 2001, "wide"))
    assert [v.state for v in sync.versions(conn, att)] == ["active"]       # no building version left
    assert sync_table(conn, "photos", bundle).written == 1


def test_create_collection_over_the_halfvec_limit_says_why(conn):
    with pytest.raises(psycopg.errors.ProgramLimitExceeded, match=r"halfvec.*4000.*4001"):
        conn.execute("SELECT jointembed.create_collection('wide', 'm', 4001, 'halfvec')")
    with pytest.raises(psycopg.errors.ProgramLimitExceeded, match=r"vector.*2000.*2001"):
        conn.execute("SELECT jointembed.create_collection('wide', 'm', 2001, 'vector')")


# -- exit codes and reports of the CLI ----------------------------------------------------
def _cli(*args, timeout=300):
    return subprocess.run([sys.executable, "-m", "jointembed_pg", *map(str, args)], cwd=REPO,
                          capture_output=True, text=True, timeout=timeout)


def _one_line(p, code):
    lines = [x for x in p.stderr.splitlines() if x.strip()]
    assert p.returncode == code and len(lines) == 1 and "Traceback" not in p.stderr, (p.returncode, p.stderr)
    return lines[0]


def test_cli_reembed_exit_codes_refused_1_partial_3(conn, pg_dsn, bundle, bundle_dir, flickr8k_dir, tmp_path):
    """The old model is a projection of the real one; the CLI re-embeds with the real bundle."""
    files = sorted((flickr8k_dir / "images").glob("*.jpg"))[:4]
    for f in files:
        shutil.copy(f, tmp_path / f.name)
    make_photos(conn, [(i + 1, f"caption number {i + 1}", f.name) for i, f in enumerate(files)])
    p = _cli("attach", "--table", "photos", "--key", "id", "--text-column", "caption", "--image-column",
             "image_path", "--image-root", tmp_path, "--dsn", pg_dsn, "--bundle", bundle_dir)
    assert p.returncode == 0 and "4 rows enqueued (8 items: 4 images, 4 texts)" in p.stdout, p.stdout + p.stderr
    sync.detach(conn, "photos")                                   # re-attach with the "old" model
    old = Projected(bundle, 48, "p48")
    att = sync.attach(conn, "photos", old, key="id", text_column="caption", image_column="image_path",
                      image_root=str(tmp_path))
    assert sync_table(conn, "photos", old).written == 8
    for f in files:
        (tmp_path / f.name).rename(tmp_path / (f.name + ".away"))  # every image gone: only texts embed

    args = ["reembed", "--table", "photos", "--dsn", pg_dsn, "--bundle", bundle_dir]
    line = _one_line(_cli(*args), 1)
    assert "not switched" in line and "4 of the 8 rows" in line and "--max-failed" in line
    now = sync.find(conn, "photos")
    assert (now.model_id, now.active_version) == ("p48", att.active_version) and len(side_rows(conn, att.id)) == 8
    q = old.encode_texts(["caption number 3"])[0]
    assert len(conn.execute("SELECT key FROM jointembed.search_attached('photos', %s, 8)", [q]).fetchall()) == 8

    for f in files[1:]:
        (tmp_path / (f.name + ".away")).rename(tmp_path / f.name)  # 3 of 4 back: 1 of 8 fails (12.5 %)
    p = _cli(*args, "--max-failed", "12.5%")
    assert p.returncode == 3, p.stderr                           # switched, some rows failed
    assert "switched from p48" in p.stdout and "1 failed" in p.stdout and "failed:" in p.stderr
    assert sync.find(conn, "photos").model_id == bundle.model_id
    assert _cli(*args).returncode == 0                            # already uses it


def test_cli_worker_until_idle_exits_3_when_rows_failed(conn, pg_dsn, bundle, bundle_dir):
    make_photos(conn, [(1, "a caption", "x.jpg"), (2, None, "y.jpg")])
    sync.attach(conn, "photos", bundle, key="id", text_column="caption")
    p = _cli("worker", "--until-idle", "--dsn", pg_dsn, "--bundle", bundle_dir, "--table", "photos")
    assert p.returncode == 3, p.stderr
    stop = json.loads([x for x in p.stderr.splitlines() if x.startswith("{")][-1])
    assert (stop["event"], stop["written"], stop["failed"]) == ("stop", 1, 1)
    p = _cli("worker", "--until-idle", "--dsn", pg_dsn, "--bundle", bundle_dir, "--table", "photos")
    assert p.returncode == 0, p.stderr                            # nothing failed in this run


def test_ctrl_c_during_index_json_prints_what_was_saved(pg_dsn, bundle_dir, tmp_path):
    import signal
    import time

    n = 60000
    captions = tmp_path / "caps.csv"
    captions.write_text("id,text\n" + "".join(f"c{i},a dog number {i} runs on the grass\n" for i in range(n)))
    proc = subprocess.Popen([sys.executable, "-m", "jointembed_pg", "index", "text", captions, "--json",
                             "--batch-size", "32", "--dsn", pg_dsn, "--bundle", bundle_dir, "--no-progress"],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            # as a shell starts it: SIGINT at its default, whatever this process holds
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        with db.connect(pg_dsn, autocommit=True) as c:
            def saved():
                t = c.execute("SELECT to_regclass('jointembed.items_1')").fetchone()[0]
                return c.execute("SELECT count(*) FROM jointembed.items_1").fetchone()[0] if t else 0
            deadline = time.monotonic() + 240
            while saved() == 0 and time.monotonic() < deadline and proc.poll() is None:
                time.sleep(0.2)
            assert saved() > 0 and proc.poll() is None, "nothing saved before the deadline, or already done"
            proc.send_signal(signal.SIGINT)
            out, err = proc.communicate(timeout=120)
            stored = saved()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 130, err
    report = json.loads(out)
    assert report["interrupted"] is True and report["total"] == n
    assert report["written"] == stored and 0 < stored < n
    assert "interrupted" in err


def test_attached_reembed_refused_keeps_the_objects_bundle(pg_dsn, conn, bundle):
    from jointembed_pg import Store

    _texts(conn, bundle, 4)
    with Store(pg_dsn) as store:
        photos = store.attachment("photos", bundle=bundle)
        with pytest.raises(ReembedRefused, match="not switched"):
            photos.reembed(Refusing(bundle, 48, "broken-48"))
        assert photos.bundle is bundle and len(photos.search("caption number 3", k=2, target="text")) == 2
        rep = photos.reembed(Refusing(bundle, 48, "broken-48", bad=["number 4"]), max_failed="25%")
        assert rep.switched and photos.bundle.model_id == "broken-48"
