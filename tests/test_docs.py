"""The docs stay true: every repository path they name exists, and their examples run.

(a) Every backticked path in README.md and docs/*.md that looks like a repository file
    (``jointembed_pg/search/bulk.py``, ``sync/catalog.py``, ``tests/test_readme.py``,
    ``sql/functions/20_search.sql``, a bare ``bulk.py``) names a file or folder that exists.
    Package-relative names are looked up under ``jointembed_pg/``, ``sql/``, ``tests/`` and
    ``docs/``; ``jointembed_export/`` is the folder ``export/``, ``jointembed_train/`` is
    ``training/``; paths the doc itself says are not in git (caches, run folders) are listed
    in :data:`NOT_IN_GIT`.
(b) The ```bash / ```sh / ```sql / ```python blocks of docs/SYNC.md, MODEL.md, DESIGN.md and
    SCALING.md run in document order, in one sandbox (one test database, the test bundle
    also named ``default-int8`` and ``new-model``, an image root of six real Flickr8K
    images standing in for the docs' ``/srv/photos``), as tests/test_readme.py runs the
    README (its helpers are reused): ``jointembed`` and ``psql -c`` lines each as a
    subprocess / statement, ``worker`` with ``--until-idle``; a query that returns rows
    must return at least one; ``$1`` in SQL is bound to the embedding of a caption. A block
    that cannot run here carries ``<!-- docs-test: skip (reason) -->`` on the line before
    its opening fence. docs/SQL.md has its own runner (tests/test_sql_docs.py) and the
    README its own (tests/test_readme.py).
"""
from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest

from test_readme import _check_shape, _code_length, run_psql

REPO = Path(__file__).resolve().parent.parent
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
RUN_DOCS = ["SYNC.md", "MODEL.md", "DESIGN.md", "SCALING.md"]
#: Paths a doc names as generated, outside git (it says so next to them).
NOT_IN_GIT = {"cache/", "runs/bb/measure.py"}
PATH_EXT = (".py", ".sql", ".md", ".sh", ".toml", ".yml", ".yaml", ".cfg")
FENCE_RE = re.compile(r"^```(\w*)\n(.*?)^```", re.MULTILINE | re.DOTALL)
SKIP_RE = re.compile(r"<!--\s*docs-test:\s*skip\s*\(([^)]+)\)\s*-->\s*\n\s*$")
#: The docs' example locations and what stands in for them in the sandbox.
IMAGE_ROOT_IN_DOCS = "/srv/photos"
N_ROWS = 6
#: At least this many examples (lines, statements blocks) run per doc: a skip marker cannot
#: quietly swallow a doc's walkthrough.
MIN_RAN = {"SYNC.md": 12, "SCALING.md": 1}


# -- (a) paths ---------------------------------------------------------------------------------
def _repo_files() -> set[str]:
    out = set()
    for dirpath, dirnames, filenames in os.walk(REPO):
        dirnames[:] = [d for d in dirnames if not d.startswith(".") and d not in ("_dev", "__pycache__")]
        for f in filenames:
            out.add(f)
    return out


def named_paths(text: str) -> list[str]:
    """Backticked tokens that look like repository paths (a known suffix or a trailing /)."""
    out = []
    for token in re.findall(r"`([^`\s]+)`", text):
        token = token.rstrip(".,:;")
        if not (token.endswith(PATH_EXT) or (token.endswith("/") and token.count("/") >= 1)):
            continue
        if any(c in token for c in "*<>$~{}()=[]|") or token.startswith(("/", "http", ".", "-")):
            continue
        if "NNN" in token or "NN_" in token or re.search(r"\d+[–-]\d+_", token):
            continue
        if "/" not in token and not token.endswith((".py", ".sql")):
            continue  # a bare data file name (manifest.json, steps.csv) is an artefact, not a repo file
        out.append(token)
    return out


def _exists(token: str, names: set[str]) -> bool:
    if token in NOT_IN_GIT:
        return True
    if "/" not in token:  # a file name, or a dotted package (jointembed_pg.sql)
        path = token.replace(".", "/").replace("jointembed_pg/sql", "sql", 1)
        return token in names or (REPO / path).is_dir()
    bases = ["", "jointembed_pg/", "sql/", "tests/", "docs/", "jointembed_pg/sql/"]
    cands = [b + token for b in bases]
    cands += [token.replace("jointembed_export/", "export/", 1), token.replace("jointembed_train/", "training/", 1)]
    return any((REPO / c).exists() for c in cands)


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_every_path_a_doc_names_exists(doc):
    names = _repo_files()
    missing = sorted({t for t in named_paths(doc.read_text(encoding="utf-8")) if not _exists(t, names)})
    assert not missing, f"{doc.name} names paths that do not exist: {missing}"


def test_path_check_catches_a_moved_file():
    names = _repo_files()
    assert named_paths("see `jointembed_pg/threads.py` and `sync/catalog.py`, `ingest.py`") == [
        "jointembed_pg/threads.py", "sync/catalog.py", "ingest.py"]
    assert not _exists("jointembed_pg/threads.py", names) and not _exists("ingest.py", names)
    assert _exists("sync/catalog.py", names) and _exists("jointembed_export/build.py", names)


# -- (b) examples ------------------------------------------------------------------------------
def doc_blocks(doc: Path) -> list[tuple[str, str, str | None]]:
    """``(kind, body, skip reason or None)`` of every fenced block of ``doc``."""
    text = doc.read_text(encoding="utf-8")
    out = []
    for m in FENCE_RE.finditer(text):
        skip = SKIP_RE.search(text[:m.start()])
        out.append((m.group(1), m.group(2), skip.group(1) if skip else None))
    return out


def shell_lines(body: str) -> list[str]:
    """The block's lines with ``\\`` continuations joined."""
    out, cur = [], ""
    for line in body.splitlines():
        if line.rstrip().endswith("\\"):
            cur += line.rstrip()[:-1] + " "
            continue
        out.append(cur + line)
        cur = ""
    return out


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory, flickr8k_dir, bundle_dir, module_pg_dsn):
    from _pg import reachable

    tmp = tmp_path_factory.mktemp("docs")
    reachable(tmp)
    root, home, work = tmp / "photos", tmp / "home", tmp / "work"
    for d in (root, home, work):
        d.mkdir()
    names = (flickr8k_dir / "Flickr_8k.testImages.txt").read_text().split()[:N_ROWS]
    for n in names:
        shutil.copy(flickr8k_dir / "images" / n, root / n)
    tokens = dict(ln.split("\t", 1) for ln in (flickr8k_dir / "Flickr8k.token.txt").read_text().splitlines())
    rows = [(i + 1, tokens[f"{n}#0"], n, i) for i, n in enumerate(names)]
    bundles = tmp / "bundles"
    bundles.mkdir()
    for name in ("default", "default-int8", "new-model"):
        (bundles / name).symlink_to(Path(bundle_dir).resolve())
    env = {k: v for k, v in os.environ.items() if k not in ("JOINTEMBED_DATA_DIR", "JOINTEMBED_BUNDLE")}
    env.update({"HOME": str(home), "DATABASE_URL": module_pg_dsn, "JOINTEMBED_HOME": str(tmp / "jhome"),
                "JOINTEMBED_BUNDLES": str(bundles), "JOINTEMBED_PROGRESS_INTERVAL": "3600"})
    bindir = tmp / "bin"
    bindir.mkdir()
    launcher = bindir / "jointembed"
    launcher.write_text(f"#!/bin/sh\nexec {shlex.quote(sys.executable)} -m jointembed_pg \"$@\"\n")
    launcher.chmod(0o755)
    env["PATH"] = f"{bindir}{os.pathsep}{env.get('PATH', '')}"
    return {"root": root, "work": work, "env": env, "dsn": module_pg_dsn, "rows": rows, "bundle": bundle_dir}


def _run_sql(body: str, box: dict) -> None:
    from jointembed_pg import db
    from jointembed_pg.model.bundle import Bundle

    with db.connect(box["dsn"], autocommit=True) as conn:  # schema prepared, vector registered
        for stmt in [s.strip() for s in body.split(";") if re.sub(r"--[^\n]*", "", s).strip()]:
            params = None
            if "$1" in stmt:
                params = [Bundle.load(box["bundle"]).encode_texts("a dog running on the grass")]
                stmt = stmt.replace("$1", "%s")
            cur = conn.execute(stmt, params)
            if cur.description is not None:
                assert cur.fetchall(), f"no rows from:\n{stmt}"
            if re.match(r"CREATE TABLE photos\b", stmt):  # the user's rows, as the doc's table holds them
                conn.cursor().executemany("INSERT INTO photos VALUES (%s, %s, %s, %s)", box["rows"])


def _run_shell(body: str, box: dict, doc: str) -> int:
    ran = 0
    for line in shell_lines(body):
        line = line.replace(IMAGE_ROOT_IN_DOCS, str(box["root"]))
        if not line.startswith(("jointembed ", "psql ")):
            continue
        lexer = shlex.shlex(line, posix=True, punctuation_chars=False)
        lexer.whitespace_split, lexer.commenters = True, "#"
        argv = list(lexer)
        if argv[0] == "psql":
            run_psql(argv, box["dsn"])
            ran += 1
            continue
        if argv[1] == "worker":
            argv.append("--until-idle")
        p = subprocess.run(argv, cwd=box["work"], env=box["env"], capture_output=True, text=True, timeout=600)
        assert p.returncode == 0, f"{doc} line failed ({p.returncode}): {line}\n{p.stdout[-2000:]}\n{p.stderr[-2000:]}"
        assert "Traceback" not in p.stderr, p.stderr
        _check_shape(line[_code_length(line):].lstrip().lstrip("#").strip(), p.stdout, line)
        ran += 1
    return ran


@pytest.mark.parametrize("name", RUN_DOCS)
def test_doc_examples_run(name, sandbox):
    doc = REPO / "docs" / name
    ran = 0
    for kind, body, skip in doc_blocks(doc):
        if skip or kind not in ("bash", "sh", "sql", "python"):
            continue
        if kind == "sql":
            _run_sql(body, sandbox)
            ran += 1
        elif kind == "python":
            code = body.replace(IMAGE_ROOT_IN_DOCS, str(sandbox["root"]))
            p = subprocess.run([sys.executable, "-c", code], cwd=sandbox["work"], env=sandbox["env"],
                               capture_output=True, text=True, timeout=600)
            assert p.returncode == 0, f"{name} Python block failed:\n{body}\n{p.stderr[-3000:]}"
            ran += 1
        else:
            ran += _run_shell(body, sandbox, name)
    assert ran >= MIN_RAN.get(name, 0), f"{name}: only {ran} examples ran"


def test_skip_marker_needs_a_reason(tmp_path):
    doc = tmp_path / "X.md"
    doc.write_text("<!-- docs-test: skip (needs docker) -->\n```bash\ndocker compose up\n```\n\n"
                   "```bash\njointembed status\n```\n<!-- docs-test: skip -->\n```sql\nSELECT 1;\n```\n")
    assert [(k, s) for k, _, s in doc_blocks(doc)] == [("bash", "needs docker"), ("bash", None), ("sql", None)]
