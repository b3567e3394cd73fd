"""Packaging: the exporter entry point, package data, one version, the install hint.

The full check, a wheel built and installed into a fresh venv outside the checkout, is
``.ci/wheel_check.sh`` (too slow for the unit suite: it installs torch).
"""
from __future__ import annotations

import importlib.metadata as md
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

import jointembed_pg
from jointembed_pg.model import exporter
from jointembed_pg.errors import BundleError

REPO = Path(__file__).resolve().parent.parent


def test_exporter_is_registered_as_an_entry_point():
    eps = [ep for ep in md.entry_points(group=exporter.GROUP) if ep.name == exporter.DEFAULT]
    assert [ep.value for ep in eps] == ["jointembed_export.build"]
    build = exporter.load()
    for name in ("build_default_bundle", "int8_dir", "verify_parity"):
        assert callable(getattr(build, name)), name
    assert build.int8_dir(Path("/b/default")) == Path("/b/default-int8")


def test_unknown_exporter_names_the_extra():
    with pytest.raises(exporter.ExporterMissing, match=r"pip install 'jointembed-pg\[export\]'") as e:
        exporter.load("no-such-exporter")
    assert isinstance(e.value, BundleError)


def test_model_build_without_torch_says_which_extra(tmp_path):
    """torch made unimportable (as without the extra): one-line error naming the extra."""
    code = ("import sys; sys.modules['torch'] = None; sys.argv = ['jointembed', 'model', 'build', "
            f"'--out', {str(tmp_path / 'b')!r}]; from jointembed_pg.cli import main; main()")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"} | {"JOINTEMBED_HOME": str(tmp_path)}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 1, (r.stdout, r.stderr)
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "pip install 'jointembed-pg[export]'" in lines[0], r.stderr
    assert not (tmp_path / "b").exists()


def test_committed_weights_and_configs_are_package_data():
    import jointembed_export.build as build
    import jointembed_train

    root = Path(jointembed_train.__file__).parent
    assert build.default_checkpoint() == root / "weights" / "default.pt"
    cfg = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    shipped = {pkg: pats for pkg, pats in cfg["package-data"].items()}
    assert cfg["package-dir"] == {"jointembed_pg.sql": "sql", "jointembed_train": "training",
                                  "jointembed_export": "export"}
    for pkg, folder in (("jointembed_train.weights", "weights"), ("jointembed_train.configs", "configs")):
        assert pkg in cfg["packages"], pkg
        files = [f for pat in shipped[pkg] for f in (root / folder).glob(pat)]
        assert files, pkg
    assert {"default.pt", "vsepp_first.pt"} <= {f.name for f in (root / "weights").glob(shipped["jointembed_train.weights"][0])}


def test_one_version_license_and_py_typed():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert "version" not in project and "version" in project["dynamic"]
    assert md.version("jointembed-pg") == jointembed_pg.__version__
    assert project["license"] == "Apache-2.0"
    assert "Apache License" in (REPO / "LICENSE").read_text() and "Version 2.0" in (REPO / "LICENSE").read_text()
    assert (REPO / "jointembed_pg" / "py.typed").is_file()


def test_every_subpackage_is_listed():
    """A folder with an ``__init__.py`` that ``packages`` misses would be absent from the wheel."""
    cfg = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    on_disk = set()
    for pkg, folder in (("jointembed_pg", "jointembed_pg"), ("jointembed_train", "training"),
                        ("jointembed_export", "export")):
        for init in (REPO / folder).rglob("__init__.py"):
            on_disk.add(".".join([pkg, *init.parent.relative_to(REPO / folder).parts]))
    assert on_disk <= set(cfg["packages"]), on_disk - set(cfg["packages"])
    assert {"jointembed_pg.cli", "jointembed_pg.model", "jointembed_pg.ingest", "jointembed_pg.search",
            "jointembed_pg.sync", "jointembed_pg.server", "jointembed_pg.evaluation", "jointembed_pg.distributed"} <= on_disk


def test_no_generic_top_level_import_names():
    cfg = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    tops = {p.split(".")[0] for p in cfg["packages"]}
    assert tops == {"jointembed_pg", "jointembed_train", "jointembed_export"}


def _dist_names(reqs: list[str]) -> set[str]:
    import re

    return {re.split(r"[\[<>=!~; ]", r, maxsplit=1)[0].lower().replace("_", "-") for r in reqs}


@pytest.mark.parametrize("package, extras", [("jointembed_pg", ("ray", "embedded", "sqlalchemy")), ("jointembed_train", ("training",)),
                                             ("jointembed_export", ("training", "export", "import"))])
def test_extras_declare_every_import(package, extras):
    """Each third-party module imported by a package comes from a declared distribution."""
    from test_layout import imported_names, module_files

    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    declared = _dist_names(project["dependencies"])
    for extra in extras:
        declared |= _dist_names(project["optional-dependencies"][extra])
    ours = {"jointembed_pg", "jointembed_train", "jointembed_export"}
    tops = {n.split(".")[0] for m, f in module_files().items() if m.split(".")[0] == package
            for n in imported_names(m, f) if n}
    third = sorted(t for t in tops - ours if t not in sys.stdlib_module_names)
    providers = md.packages_distributions()
    # pgserver 0.1.4 (PostgreSQL 16 + pgvector 0.6) is the alternative embedded server of the
    # pgvector-0.6 line (CI leg 2, docs/DESIGN.md); it cannot share a venv with the default.
    third = [t for t in third if t != "pgserver"]
    missing = [t for t in third if not {d.lower().replace("_", "-") for d in providers.get(t, [])} & declared]
    assert third and missing == []
