"""Attached tables under attack and under concurrency, on a real PostgreSQL:

* the worker role of ``jointembed.grant_usage`` can change no catalog row and call no
  owner function; tampered catalog values never make the owner's commands run other SQL;
* the user's transactions at REPEATABLE READ and SERIALIZABLE never fail because a
  worker touched the same keys (the triggers only append events);
* a killed ``reembed`` resumes at once (claims die with their session), and a crash
  after the switch leaves no retired side table behind the next run;
* rows that arrive without row triggers are reported by ``status`` and fixed by
  ``sync --rescan``;
* ``url`` image sources refuse server-side request forgery (loopback/private/metadata
  addresses in every spelling, credentials, odd ports, redirects to them, DNS rebinding)
  unless ``--allow-url-host`` names a trusted server (``test_ssrf_*``).
"""
from __future__ import annotations

import threading
import time

import psycopg
import pytest
from psycopg import sql

from jointembed_pg import db
from jointembed_pg.sync import catalog as sync, reembed as sync_reembed
from jointembed_pg.errors import DatabaseError
from jointembed_pg.ingest.pipeline import sha256
from jointembed_pg.ingest.readers import clean_text
from jointembed_pg.sync.drain import SyncConfig, sync_table
from test_reliability_support import scenario
from test_sync_support import Counting, Projected, make_photos, queue, side_rows

pytest_plugins = ["_reliability"]
pytestmark = pytest.mark.flickr8k

ROLE = "je_sec_worker"


@pytest.fixture
def conn(pg_dsn):
    with db.connect(pg_dsn, autocommit=True) as c:
        yield c


def _attach_texts(conn, bundle, n, table="photos", **kw):
    rows = [(i, f"caption number {i}", f"img{i}.jpg") for i in range(1, n + 1)]
    make_photos(conn, rows, table=table)
    return sync.attach(conn, table, bundle, key="id", text_column="caption", **kw)


def _role_dsn(pg_dsn: str, conn) -> str:
    if not conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", [ROLE]).fetchone():
        conn.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(ROLE)))
    dbname = conn.info.dbname
    conn.execute(sql.SQL("GRANT CONNECT ON DATABASE {} TO {}").format(sql.Identifier(dbname), sql.Identifier(ROLE)))
    return pg_dsn.replace("postgres:@", f"{ROLE}:@")


@scenario('Worker role (jointembed grant): UPDATE/INSERT/DELETE of every catalog, queue and side table, CREATE in schema jointembed, every owner function, reembed/detach/sync --rescan from Python',
          'every attempt denied (insufficient privilege); sync, status and search as the role work', "security")
def test_worker_role_can_change_no_catalog_row_nor_escalate(conn, pg_dsn, bundle, observe):
    att = _attach_texts(conn, bundle, 6)
    wdsn = _role_dsn(pg_dsn, conn)
    conn.execute("SELECT jointembed.grant_usage(%s, false)", [ROLE])
    q, side = f"jointembed.a{att.id}_queue", f"jointembed.a{att.id}_v1"
    attempts = [
        "UPDATE jointembed.attachments SET key_type = 'integer); DROP TABLE photos; --'",
        "UPDATE jointembed.attachments SET queue_table = 'collections', image_root = '/'",
        "UPDATE jointembed.attachment_versions SET side_table = 'attachments'",
        "DELETE FROM jointembed.attachments",
        "INSERT INTO jointembed.attachment_versions (attachment_id, version, model_id, dim, side_table, state) "
        "VALUES (1, 9, 'x', 3, 'attachments', 'retired')",
        f"UPDATE {q} SET attempts = 0",
        f"DELETE FROM {q}",
        f"INSERT INTO {side} (key, modality, content_hash, model_id, embedding) "
        f"SELECT key, modality, 'h', model_id, embedding FROM {side} LIMIT 1",
        "CREATE TABLE jointembed.evil (x int)",
        "CREATE FUNCTION jointembed.evil() RETURNS int LANGUAGE sql AS 'SELECT 1'",
        f"SELECT jointembed._sync_begin_version({att.id}, 'evil', 3)",
        f"SELECT jointembed._sync_abort_version({att.id})",
        f"SELECT jointembed._sync_activate_version({att.id}, 1)",
        f"SELECT jointembed._sync_drop_retired({att.id})",
        f"SELECT jointembed.detach({att.id})",
        "SELECT jointembed.attach('public', 'photos', 'id', NULL, 'caption', NULL, NULL, 'm', 3)",
        f"SELECT jointembed.grant_usage('{ROLE}', true)",
        f"SELECT jointembed.sync_rescan({att.id})",
        f"SELECT jointembed.sync_retry_failed({att.id}, 1)",
        "SELECT * FROM photos",
        "UPDATE photos SET caption = 'x'",
    ]
    with psycopg.connect(wdsn, autocommit=True) as w:
        for stmt in attempts:
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                w.execute(stmt)
    with db.connect(wdsn, autocommit=True) as w:
        with pytest.raises(DatabaseError, match="permission denied"):
            sync_reembed.reembed(w, "photos", Projected(bundle, 16, "evil-16"))
        with pytest.raises(DatabaseError, match="permission denied"):
            sync.detach(w, "photos")
        with pytest.raises(DatabaseError, match="permission denied"):
            sync_table(w, "photos", bundle, rescan=True)
        # ...what it is for works: drain the queue, read status, search
        assert sync_table(w, "photos", bundle).written == 6
        assert sync.status(w, "photos")[0]["done"] == 6
        assert sync.search_attached(w, "photos", bundle.encode_texts(["caption number 3"])[0], k=1,
                                    target="text")[0][0] == 3
    assert sync.find(conn, "photos") == att                  # the catalog is as attach left it
    observe(f"{len(attempts)} SQL attempts and 3 Python escalations denied; the role drained 6 rows, "
            "read status and searched; catalog unchanged")


@scenario('SQL payload in every text column of the catalog (key_type, queue_table, side_table, table_name), then the owner runs reembed, sync, detach',
          'no payload runs (canary table kept, no pwned table, catalog tables intact); the commands act on the real table', "security")
def test_tampered_catalog_values_never_become_sql(conn, bundle, observe):
    """Even a role with UPDATE on the catalog (none has it) could not make the owner run SQL."""
    att = _attach_texts(conn, bundle, 4)
    sync_table(conn, "photos", bundle)
    conn.execute("CREATE TABLE canary (x int)")
    payload = "integer); DROP TABLE canary; CREATE TABLE pwned (x int); --"
    conn.execute("UPDATE jointembed.attachments SET key_type = %s, queue_table = 'collections', "
                 "table_name = 'canary'", [payload])
    conn.execute("UPDATE jointembed.attachment_versions SET side_table = 'attachments'")
    other = Counting(Projected(bundle, 24, "projected-24"))
    rep = sync_reembed.reembed(conn, "canary", other)      # the catalog says canary; the oid says photos
    assert rep.switched and rep.sync.written == 4
    assert conn.execute("SELECT format_type(atttypid, atttypmod) FROM pg_attribute WHERE attrelid = "
                        "%s::regclass AND attname = 'key'", [f"jointembed.a{att.id}_v2"]).fetchone()[0] == "integer"
    conn.execute("UPDATE photos SET caption = 'changed' WHERE id = 2")
    assert sync_table(conn, "canary", other).written == 1
    assert sync.status(conn, "canary")[0]["done"] == 4
    sync.detach(conn, "canary")
    for name, exists in (("public.canary", True), ("public.pwned", False), ("jointembed.attachments", True),
                         ("jointembed.collections", True), ("public.photos", True)):
        assert (conn.execute("SELECT to_regclass(%s)", [name]).fetchone()[0] is not None) == exists, name
    assert conn.execute("SELECT count(*) FROM pg_trigger WHERE tgrelid = 'photos'::regclass").fetchone()[0] == 0
    observe("reembed switched (4 rows embedded, key typed integer from the live catalog), sync wrote 1, "
            "detach removed all triggers; canary kept, no pwned table")


@pytest.mark.parametrize("isolation", ["REPEATABLE READ", "SERIALIZABLE"])
@scenario("App DELETE/UPDATE/key change at REPEATABLE READ and SERIALIZABLE on keys a worker claims and writes (after the app's snapshot, and 60 transactions against a continuously draining worker)",
          'no serialization failure; afterwards every row embedded with its current content', "security")
def test_user_transactions_never_conflict_with_a_worker(conn, pg_dsn, bundle, isolation, observe):
    att = _attach_texts(conn, bundle, 40)
    sync_table(conn, "photos", bundle)
    conn.execute("UPDATE photos SET caption = caption || ' v2' WHERE id <= 20")     # queued events
    # 1. deterministic: the user's snapshot predates a worker's claim and write of the keys
    #    the user then deletes / updates / re-keys (the old triggers failed here with
    #    "could not serialize access due to concurrent update")
    with db.connect(pg_dsn) as user:
        user.execute(f"SET TRANSACTION ISOLATION LEVEL {isolation}")
        user.execute("SELECT count(*) FROM photos").fetchone()                      # snapshot taken
        assert sync_table(conn, "photos", bundle, cfg=SyncConfig(batch_size=8)).written == 20
        user.execute("DELETE FROM photos WHERE id IN (1, 2, 3)")
        user.execute("UPDATE photos SET caption = 'edited in the app' WHERE id IN (4, 5)")
        user.execute("UPDATE photos SET id = id + 1000 WHERE id IN (6, 7)")
        user.commit()
    # 2. concurrent: a worker drains continuously while the app edits the same keys
    failures, commits, stop = [], 0, threading.Event()

    def worker():
        with db.connect(pg_dsn, autocommit=True) as c:
            while not stop.is_set():
                sync_table(c, "photos", bundle, cfg=SyncConfig(batch_size=4))

    t = threading.Thread(target=worker)
    t.start()
    try:
        with db.connect(pg_dsn) as user:
            for i in range(60):
                k = 8 + i % 30
                user.execute(f"SET TRANSACTION ISOLATION LEVEL {isolation}")
                try:
                    user.execute("SELECT caption FROM photos WHERE id = %s", [k]).fetchone()
                    time.sleep(0.01)
                    if i % 3 == 0:
                        user.execute("DELETE FROM photos WHERE id = %s", [k])
                        user.execute("INSERT INTO photos (id, caption, image_path) VALUES (%s, %s, 'x.jpg')",
                                     [k, f"reinserted {i}"])
                    else:
                        user.execute("UPDATE photos SET caption = %s WHERE id = %s", [f"round {i}", k])
                    user.commit()
                    commits += 1
                except psycopg.errors.SerializationFailure as e:
                    user.rollback()
                    failures.append(str(e))
    finally:
        stop.set()
        t.join(60)
    assert failures == [] and commits == 60
    sync_table(conn, "photos", bundle)
    # every row embedded with its current content, nothing else stored, nothing queued
    rows = dict(conn.execute("SELECT id::text, caption FROM photos").fetchall())
    stored = side_rows(conn, att.id)
    assert {k for k, _ in stored} == set(rows) and queue(conn, att.id) == []
    assert all(stored[(k, "text")][0] == sha256(clean_text(c, k).encode()) for k, c in rows.items())
    observe(f"{isolation}: 0 serialization failures, {commits} of 60 concurrent transactions committed; "
            f"{len(rows)} rows embedded with current content, queue empty")


@scenario('reembed killed (backend terminated) while holding 10-minute claims; a crash between the model switch and the drop of the old side table',
          'the rerun switches at once (no lease wait); the next reembed drops the retired side table', "security")
def test_killed_reembed_resumes_at_once_and_finishes_an_interrupted_drop(conn, pg_dsn, bundle, observe):
    att = _attach_texts(conn, bundle, 12)
    sync_table(conn, "photos", bundle)
    new = Projected(bundle, 32, "projected-32")
    # a reembed that is killed after claiming part of the new version's queue (10-min lease)
    victim = db.connect(pg_dsn, autocommit=True)
    ver = victim.execute("SELECT version FROM jointembed._sync_begin_version(%s, %s, %s)",
                         [att.id, new.model_id, new.dim]).fetchone()[0]
    import uuid

    assert victim.execute("SELECT jointembed._sync_claim(%s, %s, %s, 5, '10 minutes')",
                          [att.id, ver, uuid.uuid4()]).fetchone()[0] == 5
    conn.execute("SELECT pg_terminate_backend(%s)", [victim.info.backend_pid])
    victim.close()
    t0 = time.monotonic()
    rep = sync_reembed.reembed(conn, "photos", new)
    assert rep.switched and rep.sync.written == 12 and time.monotonic() - t0 < 30
    observe(f"resumed and switched in {time.monotonic() - t0:.1f} s with 5 rows claimed by the killed session")
    # a crash between the switch and the drop of the retired side table...
    newer = Projected(bundle, 40, "projected-40")
    v3 = conn.execute("SELECT version FROM jointembed._sync_begin_version(%s, %s, %s)",
                      [att.id, newer.model_id, newer.dim]).fetchone()[0]
    sync_table(conn, "photos", newer)
    conn.execute("SELECT jointembed._sync_activate_version(%s, %s)", [att.id, v3])
    assert conn.execute("SELECT to_regclass(%s)", [f"jointembed.a{att.id}_v{ver}"]).fetchone()[0] is not None
    assert sync.status(conn, "photos")[0]["retired"] == 1
    # ...is finished by the next run (which has nothing else to do)
    rep = sync_reembed.reembed(conn, "photos", newer)
    assert not rep.switched
    assert conn.execute("SELECT to_regclass(%s)", [f"jointembed.a{att.id}_v{ver}"]).fetchone()[0] is None
    assert sync.status(conn, "photos")[0]["retired"] == 0


def test_not_switched_message_says_what_holds_the_switch():
    st = {"claimed": 3, "pending": 3}
    msg = sync_reembed._not_switched("public.photos", st)
    assert "being embedded by other running workers" in msg and "reembed --abort" in msg
    assert "still queued" in sync_reembed._not_switched("public.photos", {"claimed": 0, "pending": 7})


@scenario('Rows inserted with session_replication_role = replica (no triggers fire), 3 rows and then 40,000',
          'status reports them as missing (exact, then sampled) with the --rescan fix; sync --rescan embeds them', "security")
def test_rows_without_triggers_are_reported_and_rescanned(conn, pg_dsn, bundle, observe):
    from click.testing import CliRunner

    from jointembed_pg.cli import cli

    att = _attach_texts(conn, bundle, 5)
    sync_table(conn, "photos", bundle)
    st = sync.status(conn, "photos")[0]
    assert (st["missing"], st["missing_exact"], st["done"]) == (0, True, 5)
    with conn.transaction():             # what logical replication's apply does
        conn.execute("SET LOCAL session_replication_role = replica")
        conn.execute("INSERT INTO photos (id, caption, image_path) SELECT g, 'replicated ' || g, 'x.jpg' "
                     "FROM generate_series(100, 102) g")
    st = sync.status(conn, "photos")[0]
    assert (st["missing"], st["pending"]) == (3, 0)
    out = CliRunner().invoke(cli, ["status", "--table", "photos", "--dsn", pg_dsn])
    assert out.exit_code == 0 and "3 rows x modalities have no embedding and are not queued" in out.output
    assert "jointembed sync --table photos --schema public --rescan" in out.output
    assert sync_table(conn, "photos", bundle, rescan=True).written == 3
    st = sync.status(conn, "photos")[0]
    assert (st["missing"], st["done"], st["pending"]) == (0, 8, 0)
    # a large table is sampled, not scanned: the estimate is near the truth
    conn.execute("SET session_replication_role = replica")
    conn.execute("INSERT INTO photos (id, caption, image_path) SELECT g, 'bulk ' || g, 'x.jpg' "
                 "FROM generate_series(1000, 40999) g")
    conn.execute("RESET session_replication_role")
    conn.execute("ANALYZE photos")
    st = conn.execute("SELECT jointembed.sync_status(%s, 0, 5000)", [att.id]).fetchone()[0]
    assert st["missing_exact"] is False and 30000 < st["missing"] < 50000
    observe(f"3 missing reported exactly and fixed by --rescan; 40,000 estimated as {st['missing']:,} from a sample")


def test_partitions_statement_triggers_and_attach_partition(conn, bundle):
    conn.execute("CREATE TABLE parts (id int PRIMARY KEY, caption text) PARTITION BY RANGE (id)")
    conn.execute("CREATE TABLE parts_1 PARTITION OF parts FOR VALUES FROM (0) TO (100)")
    conn.execute("INSERT INTO parts SELECT g, 'row ' || g FROM generate_series(1, 5) g")
    att = sync.attach(conn, "parts", bundle, key="id", text_column="caption")
    conn.execute("INSERT INTO parts_1 VALUES (50, 'direct into the partition')")   # its own triggers fire
    conn.execute("UPDATE parts SET caption = 'via the parent' WHERE id = 1")
    assert sync_table(conn, "parts", bundle).written == 6
    conn.execute("CREATE TABLE parts_2 (id int PRIMARY KEY, caption text)")
    conn.execute("INSERT INTO parts_2 SELECT g, 'attached later ' || g FROM generate_series(100, 103) g")
    conn.execute("ALTER TABLE parts ATTACH PARTITION parts_2 FOR VALUES FROM (100) TO (200)")
    assert sync.status(conn, "parts")[0]["missing"] == 4
    assert sync_table(conn, "parts", bundle, rescan=True).written == 4
    assert sync.status(conn, "parts")[0]["missing"] == 0
    sync.detach(conn, "parts")
    assert conn.execute("SELECT count(*) FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid "
                        "WHERE c.relname LIKE 'parts%'").fetchone()[0] == 0
    assert att.id not in [a.id for a in sync.list_attachments(conn)]


def test_migration_004_upgrades_an_old_queue_and_old_row_triggers_still_work(conn, pg_dsn, bundle):
    """A database attached before 004: PK (version, key, modality) queue, row triggers."""
    from jointembed_pg import migrations

    att = _attach_texts(conn, bundle, 4)
    sync_table(conn, "photos", bundle)
    q, side = sql.Identifier("jointembed", f"a{att.id}_queue"), sql.Identifier("jointembed", f"a{att.id}_v1")
    n = f"a{att.id}_queue"
    for stmt in (  # back to the 003 layout, as an old database has it
            "ALTER TABLE {q} DROP COLUMN claim_pid, DROP COLUMN claim_lock",
            f"DROP INDEX jointembed.{n}_key, jointembed.{n}_truncate, jointembed.{n}_ready, jointembed.{n}_claim",
            "ALTER TABLE {q} ALTER COLUMN key SET NOT NULL, ADD PRIMARY KEY (version, key, modality), ADD UNIQUE (id)",
            f"CREATE INDEX {n}_ready ON {{q}} (version, next_attempt_at, id)",
            f"CREATE INDEX {n}_claim ON {{q}} (claim) WHERE claim IS NOT NULL",
            "ALTER TABLE {side} DROP COLUMN event_id",
            "DROP TRIGGER jointembed_sync_insert ON photos; DROP TRIGGER jointembed_sync_update ON photos; "
            "DROP TRIGGER jointembed_sync_delete ON photos; DROP TRIGGER jointembed_sync_truncate ON photos",
            f"CREATE TRIGGER jointembed_sync_insert AFTER INSERT ON photos FOR EACH ROW "
            f"EXECUTE FUNCTION jointembed.sync_trigger('{att.id}')",
            f"CREATE TRIGGER jointembed_sync_delete AFTER DELETE ON photos FOR EACH ROW "
            f"EXECUTE FUNCTION jointembed.sync_trigger('{att.id}')",
            f"CREATE TRIGGER jointembed_sync_key AFTER UPDATE OF id ON photos FOR EACH ROW WHEN "
            f"(OLD.id IS DISTINCT FROM NEW.id) EXECUTE FUNCTION jointembed.sync_trigger('{att.id}', '*')",
            f"CREATE TRIGGER jointembed_sync_text AFTER UPDATE OF caption ON photos FOR EACH ROW WHEN "
            f"(OLD.caption IS DISTINCT FROM NEW.caption) EXECUTE FUNCTION jointembed.sync_trigger('{att.id}', 'text')",
            "DELETE FROM jointembed.schema_version WHERE version = 4"):
        conn.execute(sql.SQL(stmt).format(q=q, side=side))
    assert migrations.apply(conn) == [4]
    cols = {r[0] for r in conn.execute("SELECT attname FROM pg_attribute WHERE attrelid = %s::regclass "
                                       "AND attnum > 0", [f"jointembed.{n}"]).fetchall()}
    assert {"claim_pid", "claim_lock"} <= cols
    assert conn.execute("SELECT count(*) FROM pg_constraint WHERE conrelid = %s::regclass "
                        "AND contype <> 'n'",   # PostgreSQL 18 also lists NOT NULL constraints
                        [f"jointembed.{n}"]).fetchone()[0] == 1          # the modality CHECK only
    conn.execute("UPDATE photos SET caption = 'old trigger, new queue' WHERE id = 1")
    conn.execute("UPDATE photos SET caption = 'twice' WHERE id = 1")
    conn.execute("UPDATE photos SET id = 40 WHERE id = 2")
    conn.execute("DELETE FROM photos WHERE id = 3")
    assert queue(conn, att.id) == [("1", "text", 1), ("1", "text", 1), ("2", "text", 1), ("3", "text", 1),
                                   ("40", "text", 1)]
    rep = sync_table(conn, "photos", bundle)
    assert (rep.written, rep.gone) == (2, 2)
    assert set(side_rows(conn, att.id)) == {("1", "text"), ("4", "text"), ("40", "text")}
    sync.detach(conn, "photos")
    assert conn.execute("SELECT count(*) FROM pg_trigger WHERE tgrelid = 'photos'::regclass").fetchone()[0] == 0


def test_grants_survive_a_definitions_upgrade_that_recreates_functions(conn, pg_dsn, bundle):
    from jointembed_pg import migrations

    _attach_texts(conn, bundle, 3)
    wdsn = _role_dsn(pg_dsn, conn)
    conn.execute("SELECT jointembed.grant_usage(%s)", [ROLE])
    # an upgrade that drops and re-creates a queue function (a signature change) and
    # re-applies every definition: the function comes back without grants...
    conn.execute("DROP FUNCTION jointembed._sync_complete(integer, integer, uuid, bigint[], text[], vector[])")
    conn.execute("UPDATE jointembed.definitions SET sha256 = 'outdated'")
    assert migrations.apply(conn) == []
    # ...and the recorded role gets its rights back; PUBLIC still has none
    with db.connect(wdsn, autocommit=True) as w:
        assert sync_table(w, "photos", bundle).written == 3
    assert conn.execute("SELECT has_function_privilege('public', 'jointembed._sync_claim(integer, integer, uuid, "
                        "integer, interval)', 'EXECUTE')").fetchone()[0] is False


#: queue / look-up functions only a sync worker calls (grant_usage, reader or writer)
WORKER_FNS = ["_sync_claim", "_sync_fetch", "_sync_complete", "_sync_fail", "_sync_release", "_sync_version_for"]
#: reembed internals: the owner alone
OWNER_FNS = ["_sync_begin_version", "_sync_abort_version", "_sync_activate_version", "_sync_drop_retired"]
#: the names they had before the underscore prefix (and the dead sync_find_schema)
OLD_FNS = {"sync_claim": "integer, integer, uuid, integer, interval", "sync_fetch": "integer, integer, uuid",
           "sync_complete": "integer, integer, uuid, bigint[], text[], vector[]",
           "sync_fail": "integer, integer, uuid, bigint[], text[], boolean[], float8, float8, integer",
           "sync_release": "integer, uuid", "sync_version_for": "integer, text, integer",
           "sync_begin_version": "integer, text, integer", "sync_abort_version": "integer",
           "sync_activate_version": "integer, integer", "sync_drop_retired": "integer", "sync_find_schema": "text"}


def _can_execute(conn, role: str, names: list[str]) -> dict[str, bool]:
    rows = conn.execute("SELECT p.proname, has_function_privilege(%s, p.oid, 'EXECUTE') FROM pg_proc p "
                        "WHERE p.pronamespace = 'jointembed'::regnamespace AND p.proname = ANY (%s)",
                        [role, names]).fetchall()
    assert sorted(r[0] for r in rows) == sorted(names)  # one function per name, all present
    return dict(rows)


def test_upgrade_drops_old_worker_function_names_and_grants_the_prefixed_ones(conn, pg_dsn):
    from jointembed_pg import migrations

    migrations.apply(conn)
    # a database from before the rename: the old public names exist
    for name, args in OLD_FNS.items():
        params = ", ".join(f"a{i} {t}" for i, t in enumerate(args.split(", ")))
        conn.execute(f"CREATE FUNCTION jointembed.{name}({params}) RETURNS integer LANGUAGE sql AS 'SELECT 0'")
    _role_dsn(pg_dsn, conn)
    conn.execute("SELECT jointembed.grant_usage(%s)", [ROLE])
    conn.execute("UPDATE jointembed.definitions SET sha256 = 'outdated'")
    migrations.apply(conn)
    left = conn.execute("SELECT proname FROM pg_proc WHERE pronamespace = 'jointembed'::regnamespace "
                        "AND proname = ANY (%s)", [list(OLD_FNS)]).fetchall()
    assert left == []
    # every prefixed function pins its search_path
    unpinned = conn.execute("SELECT proname FROM pg_proc WHERE pronamespace = 'jointembed'::regnamespace "
                            "AND proname = ANY (%s) AND NOT EXISTS (SELECT 1 FROM unnest(proconfig) s "
                            "WHERE s LIKE 'search\\_path=%%')", [WORKER_FNS + OWNER_FNS]).fetchall()
    assert unpinned == []
    # PUBLIC: none; a reader/worker (re-granted by the re-apply): the worker set, never the
    # owner set nor the writer functions; a writer: also sync_rescan / sync_retry_failed
    assert set(_can_execute(conn, "public", WORKER_FNS + OWNER_FNS).values()) == {False}
    assert set(_can_execute(conn, ROLE, WORKER_FNS).values()) == {True}
    assert set(_can_execute(conn, ROLE, OWNER_FNS + ["sync_rescan", "sync_retry_failed"]).values()) == {False}
    conn.execute("SELECT jointembed.grant_usage(%s, writer => true)", [ROLE])
    assert set(_can_execute(conn, ROLE, WORKER_FNS + ["sync_rescan", "sync_retry_failed"]).values()) == {True}
    assert set(_can_execute(conn, ROLE, OWNER_FNS).values()) == {False}
    conn.execute("SELECT jointembed.grant_usage(%s, writer => false)", [ROLE])
    assert set(_can_execute(conn, ROLE, ["sync_rescan", "sync_retry_failed"]).values()) == {False}


# -- server-side request forgery: `--image-source url` -------------------------------------
# Row values of a url-sourced table are written by the application's users. A real local
# HTTP server on 127.0.0.1 (serving a real Flickr8K JPEG) stands for an internal service:
# by default nothing may reach it; an explicit allow entry makes it a trusted image server.

SECRET = "hunter2-s3cret"


class _Server:
    """``http.server`` on 127.0.0.1 in a thread; ``hits``: ``(path, Host header)`` seen;
    ``/redirect/<n>`` answers 302 to ``targets[n]``, anything else is served from ``root``."""

    def __init__(self, root):
        import http.server
        from functools import partial

        self.hits: list[tuple[str, str]] = []
        self.targets: list[str] = []
        server = self

        class Handler(http.server.SimpleHTTPRequestHandler):
            def do_GET(self):  # noqa: N802
                server.hits.append((self.path, self.headers.get("Host", "")))
                if self.path.startswith("/redirect/"):
                    self.send_response(302)
                    self.send_header("Location", server.targets[int(self.path.rsplit("/", 1)[1])])
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                super().do_GET()

            def log_message(self, *args):
                pass

        self.srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), partial(Handler, directory=str(root)))
        self.port = self.srv.server_address[1]
        self.base = f"http://127.0.0.1:{self.port}"
        self.thread = threading.Thread(target=self.srv.serve_forever, daemon=True)
        self.thread.start()

    def redirect(self, target: str) -> str:
        self.targets.append(target)
        return f"{self.base}/redirect/{len(self.targets) - 1}"

    def close(self):
        self.srv.shutdown()
        self.srv.server_close()


@pytest.fixture
def jpeg(flickr8k_dir, tmp_path):
    image = sorted((flickr8k_dir / "images").glob("*.jpg"))[3]
    (tmp_path / "a.jpg").write_bytes(image.read_bytes())
    return tmp_path / "a.jpg"


@pytest.fixture
def server(jpeg):
    srv = _Server(jpeg.parent)
    yield srv
    srv.close()


@pytest.fixture
def connects(monkeypatch):
    """Every TCP connect of this process, recorded (``(host, port)``) and then made."""
    import socket

    seen: list[tuple] = []
    real = socket.socket.connect

    def connect(self, address):
        seen.append(tuple(address[:2]))
        return real(self, address)

    monkeypatch.setattr(socket.socket, "connect", connect)
    return seen


def _refused(value, **kw):
    from jointembed_pg.errors import InputError
    from jointembed_pg.ingest.sources import ImageSource, is_retryable

    with pytest.raises(InputError) as ei:
        ImageSource("url", timeout_s=5, **kw).read(value, "pics[7].url")
    msg = str(ei.value)
    assert is_retryable(ei.value) is False, (value, msg)
    assert msg.startswith("pics[7].url: ") and "refused" in msg, (value, msg)
    assert SECRET not in msg, (value, msg)
    return msg


def test_ssrf_loopback_url_refused_by_default_without_any_connection(server, connects):
    for value in (f"{server.base}/a.jpg", f"http://localhost:{server.port}/a.jpg", "http://127.0.0.1/a.jpg",
                  "http://localhost/a.jpg", f"http://127.0.0.1:{server.port}/a.jpg?token={SECRET}"):
        _refused(value)
    # a host-only entry allows that host on 80/443, not on another port
    msg = _refused(f"{server.base}/a.jpg", allow_hosts=("127.0.0.1",))
    assert f"port {server.port}" in msg
    assert server.hits == [] and connects == []


def test_ssrf_opt_in_host_is_fetched_and_decodes(server, jpeg, connects):
    import io

    from PIL import Image

    from jointembed_pg.ingest.sources import ImageSource
    from jointembed_pg.limits import Limits

    allow = f"127.0.0.1:{server.port}"
    data = ImageSource("url", timeout_s=5, allow_hosts=(allow,)).read(f"{server.base}/a.jpg")
    assert data == jpeg.read_bytes()
    with Image.open(io.BytesIO(data)) as im:
        im.load()
        assert im.size == Image.open(jpeg).size and im.format == "JPEG"
    # the same entry through the worker's limits ($JOINTEMBED_URL_ALLOW_HOSTS, read per call)
    lim = Limits.from_env({"JOINTEMBED_URL_ALLOW_HOSTS": f"images.internal, {allow}"})
    assert lim.url_allow_hosts == (allow, "images.internal")
    assert ImageSource("url", timeout_s=5).read(f"{server.base}/a.jpg", allow_hosts=lim.url_allow_hosts) == data
    assert server.hits == [("/a.jpg", allow)] * 2 and connects == [("127.0.0.1", server.port)] * 2


def test_ssrf_redirect_from_allowed_server_to_forbidden_address_refused_at_the_hop(server, connects):
    allow = (f"127.0.0.1:{server.port}",)
    targets = [f"http://localhost:{server.port}/a.jpg", "http://169.254.169.254/latest/meta-data/iam/",
               f"http://[::1]:{server.port}/a.jpg", f"http://2130706433:{server.port}/a.jpg",
               f"http://u:{SECRET}@127.0.0.1:{server.port}/a.jpg", "file:///etc/passwd", "http://10.0.0.5/admin",
               server.redirect(f"http://localhost:{server.port}/a.jpg")]   # a second hop
    for target in targets:
        msg = _refused(server.redirect(target), allow_hosts=allow)
        assert "redirect" in msg, msg
    # only the allowed server's redirects were asked for; the image behind them never
    assert server.hits and all(p.startswith("/redirect/") and h == allow[0] for p, h in server.hits)
    assert set(connects) == {("127.0.0.1", server.port)}
    # a redirect to an allowed target is followed
    from jointembed_pg.ingest.sources import ImageSource

    assert ImageSource("url", allow_hosts=allow).read(server.redirect(f"{server.base}/a.jpg"))[:2] == b"\xff\xd8"


SSRF_PAYLOADS = [
    # loopback in every IPv4 spelling the C resolver accepts
    "http://127.0.0.1/", "http://127.255.255.254/", "http://2130706433/", "http://0x7f000001/",
    "http://0x7f.0.0.1/", "http://0177.0.0.1/", "http://017700000001/", "http://127.1/", "http://127.0.1/",
    "http://0/", "http://0.0.0.0/", "http://[::]/", "http://localhost:5432/", "http://127.0.0.1./",
    "http://\uff11\uff12\uff17.\uff10.\uff10.\uff11/", "http://0x7f.1/",
    # IPv6 loopback and IPv4 embedded in IPv6
    "http://[::1]/", "http://[0:0:0:0:0:0:0:1]/", "http://[::ffff:127.0.0.1]/", "http://[::ffff:7f00:1]/",
    "http://[::ffff:169.254.169.254]/", "http://[::127.0.0.1]/", "http://[64:ff9b::a9fe:a9fe]/",
    "http://[64:ff9b::7f00:1]/", "http://[2002:7f00:1::1]/", "http://[2002:a00:5::]/",
    # metadata, private, shared, link-local, ULA, multicast, broadcast, reserved, documentation
    "http://169.254.169.254/latest/meta-data/iam/security-credentials/", "http://169.254.0.1/",
    "http://10.0.0.5/admin", "http://10.255.255.255/", "http://172.16.0.1/", "http://172.31.255.254/",
    "http://192.168.1.1/", "http://100.64.0.1/", "http://100.127.255.254/", "http://198.18.0.1/",
    "http://192.0.2.1/", "http://192.0.0.8/", "http://240.0.0.1/", "http://255.255.255.255/",
    "http://224.0.0.1/", "http://239.255.255.250/", "http://[fc00::1]/", "http://[fd12:3456::1]/",
    "http://[fe80::1]/", "http://[fe80::1%25lo]/", "http://[fec0::1]/", "http://[ff02::1]/",
    "http://[2001:db8::1]/", "http://[2001::1]/", "http://[100::1]/",
    # ports other than 80/443 (public host: refused before any DNS)
    "http://example.com:8080/a.jpg", "https://example.com:6379/", "http://example.com:0/",
    # credentials in the URL (never shown)
    f"http://user:{SECRET}@example.com/a.jpg", f"https://{SECRET}@example.com/", f"http://:{SECRET}@example.com/",
    f"http://example.com:{SECRET}@127.0.0.1/", f"http://a@b:{SECRET}@example.com/",
    # schemes
    "file:///etc/passwd", "ftp://example.com/a.jpg", "gopher://127.0.0.1:6379/_INFO", "dict://127.0.0.1:11211/",
    "data:image/png;base64,AAAA", "jar:http://example.com/a!/b", "//example.com/a.jpg", "/etc/passwd",
    # parser confusion and malformed hosts
    "http://example.com\\@127.0.0.1/", "http://127.0.0.1\t/", "http://exa\nmple.com/", "http://example.com /",
    "http://[::1/", "http://-bad-.com/", "http://example..com/", "http://:80/", "http:///a.jpg",
    "http://example.com:99999/",
    # over-long
    "http://" + "a" * 3000 + ".com/", "http://example.com/" + "a" * 5000,
]


@pytest.mark.parametrize("value", SSRF_PAYLOADS, ids=[p[:40] for p in SSRF_PAYLOADS])
def test_ssrf_payloads_refused_before_any_connection(value, connects, monkeypatch):
    import socket

    looked_up = []
    monkeypatch.setattr(socket, "getaddrinfo", lambda *a, **k: looked_up.append(a) or [])
    msg = _refused(value)
    secret_query = _refused(value.rstrip("/") + f"/x?token={SECRET}") if value.startswith("http://1") else ""
    assert "token" not in secret_query
    assert connects == [] and looked_up == [], msg


def _fake_dns(monkeypatch, answers: dict[str, list[list[str]]]):
    """``socket.getaddrinfo`` answering ``answers[host][call]`` (the last one repeats) for
    the names given; calls are counted per name."""
    import socket

    real, calls = socket.getaddrinfo, {}

    def getaddrinfo(host, port, family=0, type=0, proto=0, flags=0):
        if host not in answers:
            return real(host, port, family, type, proto, flags)
        n = calls[host] = calls.get(host, 0) + 1
        ips = answers[host][min(n, len(answers[host])) - 1]
        return [(socket.AF_INET6 if ":" in ip else socket.AF_INET, socket.SOCK_STREAM, 6, "",
                 (ip, port, 0, 0) if ":" in ip else (ip, port)) for ip in ips]

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    return calls


def test_ssrf_dns_answers_checked_and_connection_pinned(server, jpeg, monkeypatch):
    import _socket
    import socket

    public = "93.184.216.34"
    calls = _fake_dns(monkeypatch, {"rebind.example": [[public], ["127.0.0.1"]],
                                    "internal.example": [["127.0.0.1"]],
                                    "mixed.example": [[public, "10.0.0.7"]],
                                    "mapped.example": [["::ffff:127.0.0.1"]]})
    # "the internet": the public address is served by the local server
    connects: list[tuple] = []

    def route(self, address):
        connects.append(tuple(address[:2]))
        return _socket.socket.connect(self, ("127.0.0.1", server.port) if address[0] == public else address)

    monkeypatch.setattr(socket.socket, "connect", route)
    for name in ("internal.example", "mixed.example", "mapped.example"):
        assert "non-public address" in _refused(f"http://{name}/a.jpg")
    assert connects == [] and server.hits == []

    from jointembed_pg.ingest.sources import ImageSource

    # checked once (public), then connected to exactly that address: the second,
    # rebound answer (127.0.0.1) is never asked for nor used; Host stays the name
    assert ImageSource("url", timeout_s=5).read("http://rebind.example/a.jpg") == jpeg.read_bytes()
    assert calls["rebind.example"] == 1
    assert connects == [(public, 80)] and server.hits == [("/a.jpg", "rebind.example")]


@scenario("Attached url-sourced table holding one good URL (its server allowed with --allow-url-host) and hostile "
          "ones: localhost / 127.0.0.1 spellings, [::1], cloud metadata, credentials, a redirect to localhost",
          "the good row embedded and found; every hostile row failed (given up) with its reason, no request of "
          "theirs reaches the server, no credential printed; sync goes on (exit 3)", "security")
def test_ssrf_sync_embeds_the_allowed_url_and_fails_hostile_rows(conn, pg_dsn, bundle, bundle_dir, jpeg, server,
                                                                  observe):
    import json

    from click.testing import CliRunner

    from jointembed_pg.cli import cli

    port, allow = server.port, f"127.0.0.1:{server.port}"
    rows = {1: f"{server.base}/a.jpg",
            2: f"http://localhost:{port}/a.jpg",
            3: f"http://2130706433:{port}/a.jpg",
            4: f"http://[::1]:{port}/a.jpg",
            5: f"http://u:{SECRET}@127.0.0.1:{port}/a.jpg",
            6: "http://169.254.169.254/latest/meta-data/iam/security-credentials/",
            7: server.redirect(f"http://localhost:{port}/a.jpg"),
            8: f"http://127.0.0.1/a.jpg?sig={SECRET}",
            9: "http://localhost/a.jpg"}
    conn.execute("CREATE TABLE pics (id int PRIMARY KEY, url text)")
    for key, url in rows.items():
        conn.execute("INSERT INTO pics VALUES (%s, %s)", [key, url])
    runner, base = CliRunner(), ["--dsn", pg_dsn, "--bundle", str(bundle_dir)]
    r = runner.invoke(cli, ["attach", "--table", "pics", "--key", "id", "--image-column", "url",
                            "--image-source", "url", *base])
    assert r.exit_code == 0, r.output
    r = runner.invoke(cli, ["sync", "--table", "pics", "--allow-url-host", allow, "--json", *base])
    assert r.exit_code == 3, r.output                       # some rows failed, the run went on
    rep = json.loads(r.output.strip().splitlines()[-1])
    failed = {int(f["key"]): f["error"] for f in rep["failed"]}
    assert rep["written"] == 1 and sorted(failed) == [2, 3, 4, 5, 6, 7, 8, 9], rep
    for key, err in failed.items():
        assert "refused" in err and f"pics[{key}]" in err, err
    assert f"port {port}" in failed[2] and "redirect 1" in failed[7] and "link-local" in failed[6]
    assert "resolves to a non-public address (loopback)" in failed[9]
    assert all(SECRET not in out for out in (r.output, *failed.values()))
    st = json.loads(runner.invoke(cli, ["status", "--table", "pics", "--json", "--dsn", pg_dsn]).output)
    assert (st["done"], st["failed"], st["gave_up"], st["pending"]) == (1, 8, 8, 0), st
    # only the good row's image and row 7's first hop reached the server, all as 127.0.0.1:PORT
    assert sorted(server.hits) == [("/a.jpg", allow), ("/redirect/0", allow)], server.hits
    img = bundle.encode_images([jpeg])[0]
    assert sync.search_attached(conn, "pics", img, k=1, target="image")[0][0] == 1
    observe(f"written {rep['written']}, failed {len(failed)} (all given up); server hits {sorted(server.hits)}; "
            f"e.g. {failed[9]!r}; {failed[6]!r}")


def test_ssrf_https_pinned_connection_keeps_sni_and_certificate_check_on_the_name(server, jpeg, tmp_path,
                                                                                   monkeypatch):
    """The pinned HTTPS connection goes to the checked address, while SNI, the certificate's
    host name check and ``Host`` use the URL's name (a certificate for another name fails)."""
    import shutil
    import ssl
    import subprocess

    from jointembed_pg import urls
    from jointembed_pg.errors import InputError
    from jointembed_pg.ingest.sources import ImageSource, is_retryable

    if shutil.which("openssl") is None:
        pytest.skip("needs the openssl command to make a test certificate")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj",
                    "/CN=images.test", "-addext", "subjectAltName=DNS:images.test", "-keyout", str(key),
                    "-out", str(cert)], check=True, capture_output=True)
    names: list[str | None] = []
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    ctx.sni_callback = lambda sock, name, _ctx: names.append(name)
    server.srv.socket = ctx.wrap_socket(server.srv.socket, server_side=True)
    client = ssl.create_default_context(cafile=str(cert))
    monkeypatch.setattr(urls, "_tls_context", lambda: client)
    _fake_dns(monkeypatch, {"images.test": [["127.0.0.1"]], "other.test": [["127.0.0.1"]]})
    port = server.port
    allow = (f"images.test:{port}", f"other.test:{port}")
    data = ImageSource("url", timeout_s=5, allow_hosts=allow).read(f"https://images.test:{port}/a.jpg")
    assert data == jpeg.read_bytes()
    assert names == ["images.test"] and server.hits == [("/a.jpg", f"images.test:{port}")]
    with pytest.raises(InputError, match="certificate") as ei:
        ImageSource("url", timeout_s=5, allow_hosts=allow).read(f"https://other.test:{port}/a.jpg")
    assert is_retryable(ei.value) and len(server.hits) == 1
