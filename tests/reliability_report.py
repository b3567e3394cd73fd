"""Generate docs/RELIABILITY.md from a run of the reliability/security tests.

    python tests/reliability_report.py            # runs the tests, writes docs/RELIABILITY.md
    python tests/reliability_report.py -- -x      # extra pytest arguments after --

It runs pytest on ``tests/test_reliability*.py tests/test_security*.py
tests/test_bad_input*.py tests/test_hostile*.py`` with ``$JOINTEMBED_RELIABILITY_REPORT`` set; the plugin
``tests/_reliability.py`` records every test marked ``reliability(scenario, expected)``
and calls :func:`render` at the end of the session. (Setting the variable on any other
pytest run, e.g. the whole suite, writes the same report.)

Also holds the least-privilege worker role (:data:`WORKER_ROLE_SQL`), which the
privilege test executes verbatim, so the documented SQL is the tested SQL.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DEFAULT_OUT = "docs/RELIABILITY.md"
TEST_FILES = ["tests/test_reliability*.py", "tests/test_security*.py", "tests/test_sync_security.py",
              "tests/test_reembed_safety.py",
              "tests/test_bad_input*.py", "tests/test_hostile*.py", "tests/test_decode_sandbox.py"]

#: The rights a sync worker needs, from the one source of truth ``jointembed.grant_usage``
#: (sql/functions/70_grants.sql; docs/SYNC.md "Roles"): EXECUTE on the queue functions
#: (SECURITY DEFINER) and SELECT on jointembed's tables; no write right on any table, not
#: even the user's table it embeds. ``{role}`` and ``{database}`` are identifiers,
#: ``{role_name}`` and ``{password}`` literals.
WORKER_ROLE_SQL = """\
CREATE ROLE {role} LOGIN PASSWORD {password};
GRANT CONNECT ON DATABASE {database} TO {role};
-- run by the owner of schema jointembed (the role that ran the migrations and attach)
SELECT jointembed.grant_usage({role_name}, writer => false);
"""

EXAMPLE = {"role": "jointembed_worker", "role_name": "'jointembed_worker'", "database": "mydb", "schema": "public", "table": "photos",
           "owner": "app_owner", "password": "'change-me'"}

_INTRO = """\
# Reliability and security: faults, bad input, hostile names

**Generated** by `python tests/reliability_report.py` on {when} from the test run itself
(do not edit by hand). Every row is an automated test of the normal suite, marked
`@pytest.mark.reliability(scenario=..., expected=...)`; *observed* is what that test
measured in this run, *result* its outcome and time (set-up included: a module's shared
CLI run is counted in its first test). The plugin is `tests/_reliability.py`.
Tests ran against a real PostgreSQL 16 + pgvector (pgserver), the model bundle at
`{bundle}` and real Flickr8K files.

Summary: {summary}.
"""

_PRIVILEGE = """\
## Least privilege: the role a worker needs

`jointembed sync` and `jointembed worker` only need `EXECUTE` on the queue functions
(`SECURITY DEFINER`, pinned `search_path`, arguments checked) and `SELECT` on
jointembed's tables; `jointembed.grant_usage` gives exactly that (docs/SYNC.md, "Roles").
The role has no write right on any table (not the catalog, not the user's table).
Creating the schema (migrations) and `attach`/`detach`/`reembed` stay with the owner
(`{owner}` below). The trigger function is `SECURITY DEFINER`, so roles that write the
user's table need nothing in schema `jointembed`.

```sql
{sql}```

The test *least-privilege worker* runs exactly this SQL, then `sync`, `worker` and
`status` as that role with a password-bearing DSN, and checks that the role can neither
write the user's table nor create tables in its schema; *worker role cannot escalate*
checks that it can change no catalog row and call no owner function.

## Passwords

DSN passwords are removed from every message: `db.redact` for DSNs, and
`one_line(err, dsn)` for server and driver errors. The tests use a real
`scram-sha-256` login over the Unix socket (pgserver listens on no TCP port) and check
stdout, stderr and JSON logs of `index`, `sync`, `worker` and `status`, for the right and
a wrong password, in URI and `key=value` form.
"""

_HOSTILE = """\
## Hostile input: the per-item limits

Every item read by `index`, `search image` (and `Collection.search(Path | bytes)`,
`Bundle.encode_images`), the `--html` gallery, `sync`, `worker` and the Ray backfill is
bounded by one set of limits (`jointembed_pg/limits.py`; environment variables override):

| limit | default | variable |
|---|---|---|
| encoded image file / bytea | {max_file_bytes:,} bytes (checked before reading) | `JOINTEMBED_MAX_FILE_BYTES` |
| decoded pixels | {max_pixels:,} (from the header, before decoding) | `JOINTEMBED_MAX_PIXELS` |
| time per image item | {timeout_s:g} s (read + hash + decode, in a decoder process) | `JOINTEMBED_ITEM_TIMEOUT_S` |
| decoder process memory | {memory_mb} MiB peak RSS (estimated from the header before decoding; `RLIMIT_AS` holds the process to it) | `JOINTEMBED_DECODE_MEMORY_MB` |
| caption | {max_text_chars:,} characters | `JOINTEMBED_MAX_TEXT_CHARS` |
| item key (path or id) | {max_key_bytes:,} UTF-8 bytes | `JOINTEMBED_MAX_KEY_BYTES` |
| image path / URL of an attached table | {max_ref_chars:,} characters | `JOINTEMBED_MAX_REF_CHARS` |

Only regular files are read (`jointembed_pg/files.py`: `stat`, then `open(O_NONBLOCK)`
and `fstat` of the opened descriptor); below an `--image-root` the real path must stay
inside the root (`..` and absolute paths refused). Images are read, hashed and decoded in
decoder processes (`jointembed_pg/model/decoder.py`) that answer with JSON + raw float32 (never
pickle); a decoder that hangs past the deadline or dies fails that item only and is
replaced, and a stop request (SIGTERM) interrupts a load within 0.1 s. Text that
PostgreSQL cannot store (NUL, lone surrogates, invalid UTF-8) fails its item alone.
The corpus is generated by `tests/_hostile.py`; *peak RSS* is the `VmHWM` of the command's
process and of each of its decoder processes, sampled every 50 ms while it runs.
"""

_NOTES = """\
## Notes on the method

- **Kill points** are seeded (`random.Random(20261129)`) and drawn per run as a random
  fraction of the remaining work plus a random delay, so they spread over the whole run
  on a slow or a fast machine; one lands in start-up and one after the last write
  (during the HNSW build).
- **Claims.** A claim belongs to the session that made it (a session-level advisory
  lock): when a killed `sync`/`worker`'s connection ends, its claimed queue rows are free
  at once; the lease (10 minutes) only bounds a session that lives on but hangs.
- **Database restarts** use a dedicated pgserver cluster in a temporary directory
  (`pg_ctl stop -m fast`, then `start` on the same socket), never the session's server.
- **Peak memory** is the decoding process's `VmHWM` (`/proc/self/status`), measured in a
  fresh subprocess after its imports; `ru_maxrss` is not used because Linux carries the
  forking pytest process's peak into the child's value.
- **Embeddings "equal to a clean run"**: the stored vector is compared with the bundle's
  own in-process encode of the same file or caption (L2 difference < 1e-3; batch
  composition changes the last float bits only).
"""


def render(results, when: str) -> str:
    """The Markdown report for ``results`` (``tests/_reliability.Result`` objects)."""
    bundle = os.environ.get("JOINTEMBED_TEST_BUNDLE") or "the bundle built from training/weights/default.pt"
    counts: dict[str, int] = {}
    for r in results:
        counts[r.outcome] = counts.get(r.outcome, 0) + 1
    summary = ", ".join(f"{n} {k}" for k, n in sorted(counts.items())) + f" of {len(results)} scenarios"
    out = [_INTRO.format(when=when, bundle=bundle, summary=summary)]
    areas: dict[str, list] = {}
    for r in results:
        areas.setdefault(r.area or "other", []).append(r)
    for area, rows in areas.items():
        out.append(f"\n## {area[:1].upper() + area[1:]}\n")
        out.append("| scenario | expected | observed | result | test |")
        out.append("|---|---|---|---|---|")
        for r in rows:
            observed = "; ".join(r.observed) or "-"
            if r.error:
                observed += f" **{r.error}**"
            test = r.nodeid.split("::")[0].split("/")[-1] + "::" + r.nodeid.split("::")[-1]
            out.append(f"| {_cell(r.scenario)} | {_cell(r.expected)} | {_cell(observed)} | "
                       f"{r.outcome} ({r.seconds:.1f} s) | `{test}` |")
    out.append("")
    out.append(_PRIVILEGE.format(owner=EXAMPLE["owner"], sql=WORKER_ROLE_SQL.format(**EXAMPLE)))
    from dataclasses import asdict

    from jointembed_pg.limits import Limits

    out.append(_HOSTILE.format(**asdict(Limits())))
    out.append(_NOTES)
    return "\n".join(out)


def _cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def main(argv: list[str]) -> int:
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    out = os.environ.get("JOINTEMBED_RELIABILITY_REPORT", DEFAULT_OUT)
    env = dict(os.environ, JOINTEMBED_RELIABILITY_REPORT=out)
    files = sorted(str(p.relative_to(REPO)) for pat in TEST_FILES for p in REPO.glob(pat)
                   if not p.name.endswith("_support.py"))
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *files, *extra]
    print("+", " ".join(cmd), file=sys.stderr)
    rc = subprocess.call(cmd, cwd=REPO, env=env)
    print(f"wrote {out} (pytest exit {rc})", file=sys.stderr)
    return rc


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
