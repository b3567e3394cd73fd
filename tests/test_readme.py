"""Run every ``jointembed ...`` line of the README's ```bash blocks, as written.

The lines run in document order, each as a real subprocess, in a sandbox that looks like
a user's machine: ``$HOME/photos`` holds 20 real Flickr8K images, the working directory
holds ``captions.csv`` (their captions) and ``query.jpg``, ``../shared/data/flickr8k`` is
a 12-image Flickr8K-layout directory, ``$DATABASE_URL`` is a fresh test database with a
``products`` table (rows naming photos under ``~/photos``), and the bundles directory
holds ``default`` and ``default-int8`` (the test bundle). Installation lines and lines
that are not ``jointembed`` commands (``docker compose``, ``export``) are skipped, as is
``jointembed demo`` (the main job: minutes on the full split; tests/test_cli_newcomer.py
runs it on a small split). ``jointembed worker`` runs with ``--until-idle`` (it serves
until stopped otherwise). Each command must exit 0; a trailing comment that shows a JSON
shape (``# {...}`` / ``# [{...}]``) must match the output's type and keys. The ```sql
block runs too, and then each ```python block (in the same sandbox, after the commands).
"""
from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest
from _pg import reachable

README = Path(__file__).resolve().parent.parent / "README.md"
BLOCK_RE = re.compile(r"^```(bash|sql|python)\n(.*?)^```", re.MULTILINE | re.DOTALL)
SKIP = {"demo": "the main job (minutes); tests/test_cli_newcomer.py runs it on a small split"}
N_PHOTOS, N_MINI = 20, 12


def blocks() -> list[tuple[str, str]]:
    return BLOCK_RE.findall(README.read_text(encoding="utf-8"))


def commands(text: str | None = None) -> list[tuple[list[str], str]]:
    """``(argv, trailing comment)`` of every README bash line that starts with ``jointembed``
    or ``psql`` (``text``: another document's Markdown instead of the README)."""
    out = []
    for kind, body in (BLOCK_RE.findall(text) if text is not None else blocks()):
        if kind != "bash":
            continue
        for line in body.splitlines():
            if not line.startswith(("jointembed ", "psql ")):
                continue
            lexer = shlex.shlex(line, posix=True, punctuation_chars=False)
            lexer.whitespace_split, lexer.commenters = True, "#"
            argv = list(lexer)
            code_len = _code_length(line)
            out.append((argv, line[code_len:].lstrip().lstrip("#").strip()))
    return out


def _code_length(line: str) -> int:
    """Index of the ``#`` that starts the shell comment (outside quotes), or len(line)."""
    quote = None
    for i, c in enumerate(line):
        if quote:
            quote = None if c == quote else quote
        elif c in "'\"":
            quote = c
        elif c == "#" and (i == 0 or line[i - 1].isspace()):
            return i
    return len(line)


def test_readme_lists_commands_and_run_times():
    argvs = [a for a, _ in commands()]
    names = {" ".join(a[1:3]) for a in argvs}
    for expected in ("model build", "model list", "index image", "index text", "collections list",
                     "search text", "search image", "search item", "attach --table", "sync --table",
                     "status --json", "reembed --table"):
        assert any(n.startswith(expected) for n in names), expected
    text = README.read_text(encoding="utf-8")
    assert re.search(r"about 4–6\s+minutes on 2 CPU cores", text)  # main job
    assert re.search(r"Expect \*\*about \d+ minutes on 2 CPU cores\*\*", text)  # tests


@pytest.fixture
def sandbox(tmp_path, flickr8k_dir, bundle_dir, pg_dsn):
    reachable(tmp_path)  # `jointembed server start` runs the embedded server as its own OS user
    home, work = tmp_path / "home", tmp_path / "work"
    (home / "photos").mkdir(parents=True)
    work.mkdir()
    names = (flickr8k_dir / "Flickr_8k.testImages.txt").read_text().split()[:N_PHOTOS]
    for n in names:
        shutil.copy(flickr8k_dir / "images" / n, home / "photos" / n)
    shutil.copy(flickr8k_dir / "images" / names[0], work / "query.jpg")
    tokens = [ln.split("\t", 1) for ln in (flickr8k_dir / "Flickr8k.token.txt").read_text().splitlines()]
    caps = [(k, t) for k, t in tokens if k.split("#", 1)[0] in set(names)][:40]
    with open(work / "captions.csv", "w", encoding="utf-8") as f:
        f.write("id,text\n" + "".join(f'{k},"{t}"\n' for k, t in caps))
    mini = tmp_path / "shared" / "data" / "flickr8k"
    (mini / "images").mkdir(parents=True)
    for n in names[:N_MINI]:
        (mini / "images" / n).symlink_to(flickr8k_dir / "images" / n)
    (mini / "Flickr8k.token.txt").write_text(
        "".join(f"{k}\t{t}\n" for k, t in tokens if k.split("#", 1)[0] in set(names[:N_MINI])))
    (mini / "Flickr_8k.testImages.txt").write_text("\n".join(names[:N_MINI]) + "\n")
    bundles = tmp_path / "jhome" / "bundles"
    bundles.mkdir(parents=True)
    for name in ("default", "default-int8"):
        (bundles / name).symlink_to(Path(bundle_dir).resolve())
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE products (id int PRIMARY KEY, title text, image_path text)")
        for i, n in enumerate(names[:5]):
            conn.execute("INSERT INTO products VALUES (%s, %s, %s)", (i, caps[i][1] if i < len(caps) else n, n))
    env = {k: v for k, v in os.environ.items() if k not in ("JOINTEMBED_DATA_DIR", "JOINTEMBED_BUNDLE")}
    env.update({"HOME": str(home), "DATABASE_URL": pg_dsn, "JOINTEMBED_HOME": str(tmp_path / "jhome"),
                "JOINTEMBED_BUNDLES": str(bundles), "JOINTEMBED_PROGRESS_INTERVAL": "3600"})
    bindir = tmp_path / "bin"  # `jointembed` on PATH runs this checkout's CLI
    bindir.mkdir()
    launcher = bindir / "jointembed"
    launcher.write_text(f"#!/bin/sh\nexec {shlex.quote(sys.executable)} -m jointembed_pg \"$@\"\n")
    launcher.chmod(0o755)
    env["PATH"] = f"{bindir}{os.pathsep}{env.get('PATH', '')}"
    return work, env, pg_dsn


def run_psql(argv: list[str], dsn: str) -> None:
    """Run the ``-c SQL`` of a documented ``psql`` line on ``dsn`` (roles are cluster-wide:
    one made by an earlier test run is fine)."""
    sql = argv[argv.index("-c") + 1]
    with psycopg.connect(dsn, autocommit=True) as conn:
        try:
            conn.execute(sql)
        except psycopg.errors.DuplicateObject:
            pass


def _check_shape(comment: str, out: str, line: str) -> None:
    """A comment like ``{"pending": .., ...}`` or ``[{...}]`` names the output's JSON shape."""
    m = re.match(r"^(\[?\{.*?\}\]?)", comment)
    if not m:
        return
    shape = m.group(1)
    data = json.loads(out.strip().splitlines()[0]) if out.strip() else None
    if shape.startswith("["):
        assert isinstance(data, list) and data, (line, out)
        data = data[0]
    assert isinstance(data, dict), (line, out)
    keys = re.findall(r'"(\w+)":', shape)
    missing = [k for k in keys if k not in data]
    assert not missing, f"{line}: output lacks {missing}; it has {sorted(data)}"


def test_readme_commands_run_as_written(sandbox):
    # the README's `jointembed model build` line needs the [export] extra (CI's pgvector-0.6
    # leg runs the database tests in a virtualenv without torch)
    pytest.importorskip("torch", reason="README's `jointembed model build` needs the [export] extra (torch)")
    work, env, dsn = sandbox
    ran = []
    for argv, comment in commands():
        line = shlex.join(argv)
        if argv[0] == "psql":  # e.g. `psql "$DATABASE_URL" -c 'CREATE ROLE ...'`: its SQL, on the database
            run_psql(argv, dsn)
            continue
        if argv[1] in SKIP:
            continue
        if argv[1] == "worker":
            argv = [*argv, "--until-idle"]
        argv = [env["HOME"] + a[1:] if a.startswith("~/") else a for a in argv]  # the shell's ~ expansion
        p = subprocess.run(argv, cwd=work, env=env, capture_output=True, text=True, timeout=600)
        assert p.returncode == 0, f"README line failed ({p.returncode}): {line}\n{p.stdout[-2000:]}\n{p.stderr[-2000:]}"
        assert "Traceback" not in p.stderr, p.stderr
        _check_shape(comment, p.stdout, line)
        if argv[1] == "search":  # a search that runs but finds nothing would not show the README's point
            assert p.stdout.strip(), f"README line found nothing: {line}\n{p.stderr[-2000:]}"
        ran.append(argv[1:3])
    assert len(ran) >= 15
    assert (work / "hits.html").is_file()
    sql = [body for kind, body in blocks() if kind == "sql"]
    with psycopg.connect(dsn) as conn:
        for body in sql:
            rows = conn.execute(body).fetchall()
            assert rows, body
    python = [body for kind, body in blocks() if kind == "python"]
    assert python, "README has no Python API block"
    for body in python:
        p = subprocess.run([sys.executable, "-c", body], cwd=work, env=env, capture_output=True, text=True,
                           timeout=600)
        assert p.returncode == 0, f"README Python block failed:\n{body}\n{p.stdout[-2000:]}\n{p.stderr[-3000:]}"
