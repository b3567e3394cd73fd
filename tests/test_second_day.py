"""A user's second day (issue 27): only our own lines on the terminal, no doubled prefixes,
did-you-mean for attached tables, another database on the embedded server, the demo's
parity data and database, and gallery hit boxes as tall as their content. Real
subprocesses, real Postgres, real bundle, real Flickr8K images."""
from __future__ import annotations

import re
from pathlib import Path

import psycopg
import pytest

from test_cli import run


def _images(flickr8k_dir: Path, n: int) -> list[Path]:
    names = (flickr8k_dir / "Flickr_8k.testImages.txt").read_text().split()[:n]
    return [flickr8k_dir / "images" / name for name in names]


def _args(pg_dsn, bundle_dir):
    return ["--dsn", pg_dsn, "--bundle", bundle_dir]


# -- 4. terminal output -----------------------------------------------------------------------
def test_index_build_writes_no_bar_when_stderr_is_a_pipe(flickr8k_dir, bundle_dir, pg_dsn, tmp_path):
    """The HNSW build's tqdm bar (``\\r``) only on a terminal; in a pipe, log lines only."""
    caps = tmp_path / "caps.token.txt"
    with open(flickr8k_dir / "Flickr8k.token.txt", encoding="utf-8") as f:
        caps.write_text("".join(next(f) for _ in range(300)), encoding="utf-8")
    p = run(["index", "text", caps, *_args(pg_dsn, bundle_dir)], check_rc=0)
    # text mode turns a "\r" into "\n": a bar shows as its "rows/s" and the blank line that erased it
    assert "rows/s" not in p.stderr and not any(ln.isspace() for ln in p.stderr.splitlines()), ascii(p.stderr)
    assert "index items_" in p.stderr and "built in" in p.stderr  # the build summary is still there


def test_errors_have_one_prefix(flickr8k_dir, bundle_dir, pg_dsn, tmp_path):
    run(["index", "image", *_images(flickr8k_dir, 1), *_args(pg_dsn, bundle_dir)], check_rc=0)
    p = run(["search", "image", "nope.jpg", *_args(pg_dsn, bundle_dir)])
    assert p.returncode == 1 and p.stderr.strip() == "Error: nope.jpg: no such file", p.stderr
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE products (id int PRIMARY KEY, title text, image_path text)")
    p = run(["attach", "--table", "products", "--key", "nokey", "--text-column", "title", *_args(pg_dsn, bundle_dir)])
    assert p.returncode == 1 and "Error: table public.products has no column nokey" in p.stderr, p.stderr
    assert "jointembed: " not in p.stderr


def test_export_keeps_library_output_off_the_terminal(capfd):
    """efficientnet's ``print`` and transformers' tqdm bar / load report stay off stdout and stderr."""
    pytest.importorskip("torch", reason="the exporter needs the [export] extra")
    from transformers.utils import logging as hf

    from jointembed_export.build import quiet_libraries

    with quiet_libraries():
        print("Loaded pretrained weights for efficientnet-lite0")
        for _ in hf.tqdm(range(3), desc="Loading weights"):
            pass
        hf.get_logger("transformers.modeling_utils").warning("BertModel LOAD REPORT")
    out, err = capfd.readouterr()
    assert out == "" and err == "", (out, err)
    assert hf.is_progress_bar_enabled()  # restored afterwards


def test_int8_build_names_the_bundle_it_builds(tmp_path, bundle_dir):
    from jointembed_pg.cli.model import _building

    class Exporter:
        def __init__(self, current):
            self.current = current

        def bundle_is_current(self, path, checkpoint):
            return self.current

    targets = [tmp_path / "default", tmp_path / "default-int8"]
    assert _building(Exporter(True), targets, None, False) == "building bundle default-int8"
    assert _building(Exporter(False), targets, None, False) == "building bundles default and default-int8"
    assert _building(Exporter(True), targets[:1], None, False) == "building bundle default"


def test_missing_int8_bundle_names_the_command_that_builds_it(tmp_path, bundle_dir, pg_dsn):
    """README: `reembed --bundle default-int8` before `model build --int8` says what to run."""
    bundles = tmp_path / "bundles"
    bundles.mkdir()
    (bundles / "default").symlink_to(Path(bundle_dir).resolve())
    p = run(["search", "text", "a dog", "--dsn", pg_dsn, "--bundle", "default-int8"],
            env_extra={"JOINTEMBED_BUNDLES": str(bundles)})
    assert p.returncode == 1, p.stderr
    assert "no bundle 'default-int8': build it with `jointembed model build --int8`" in p.stderr, p.stderr


# -- 5. names, databases, the demo -----------------------------------------------------------
def test_misspelt_attached_table_gets_a_suggestion(bundle_dir, pg_dsn):
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE products (id int PRIMARY KEY, title text)")
    run(["attach", "--table", "products", "--key", "id", "--text-column", "title", *_args(pg_dsn, bundle_dir)],
        check_rc=0)
    for cmd in (["status", "--table", "prodcts", "--dsn", pg_dsn],
                ["sync", "--table", "prodcts", *_args(pg_dsn, bundle_dir)]):
        p = run(cmd)
        assert p.returncode == 1, p.stderr
        assert "table prodcts is not attached; attached: products (did you mean 'products'?)" in p.stderr, p.stderr


def test_server_dsn_names_another_database(pg_admin_dsn):
    """``server dsn --database NAME [--create]`` (its database part, on a real server)."""
    import uuid

    from jointembed_pg.cli.server import _database
    from jointembed_pg.errors import InputError

    class Server:  # the embedded server's one method _database uses: the admin DSN
        def uri(self, dbname="postgres"):
            return pg_admin_dsn

    name = f"second day {uuid.uuid4().hex[:8]}"
    with pytest.raises(InputError, match="add --create"):
        _database(Server(), name, create=False)
    assert _database(Server(), name, create=True) == name.replace(" ", "%20")
    assert _database(Server(), name, create=False) == name.replace(" ", "%20")  # exists now
    with psycopg.connect(pg_admin_dsn, autocommit=True) as conn:
        conn.execute(psycopg.sql.SQL("DROP DATABASE {}").format(psycopg.sql.Identifier(name)))


def test_demo_builds_with_its_data_dir_and_says_where_the_database_is(tmp_path, monkeypatch):
    from jointembed_pg import paths
    from jointembed_pg.cli import demo
    from jointembed_pg.model import exporter

    seen = {}

    class Exporter:
        def build_default_bundle(self, out_dir, *, data_dir=None, **kw):
            seen["data_dir"] = data_dir
            raise RuntimeError("stop here")

    monkeypatch.setattr(exporter, "load", lambda name="default": Exporter())
    monkeypatch.setenv("JOINTEMBED_BUNDLES", str(tmp_path / "bundles"))
    monkeypatch.setattr(paths, "bundles_dir", lambda: tmp_path / "bundles")
    with pytest.raises(RuntimeError, match="stop here"):
        demo.ensure_default_bundle(False, tmp_path / "flickr")
    assert seen["data_dir"] == tmp_path / "flickr"
    where = demo.database_location("postgresql://bob:s3cret@db.example/shop")
    assert where.startswith("database: ") and "db.example/shop" in where and "s3cret" not in where


# -- 6. gallery -------------------------------------------------------------------------------
def test_gallery_rows_do_not_stretch_hits_to_the_tallest():
    """A row holds the query image (160 px) and text hits: flex's default ``align-items:
    stretch`` made every text box as tall as the image."""
    from jointembed_pg.evaluation.gallery import _CSS

    rule = re.search(r"^\.row\{([^}]*)\}", _CSS, re.MULTILINE).group(1)
    assert "display:flex" in rule and re.search(r"align-items:\s*(flex-)?start", rule), rule


# -- a new user's first day (newuser) ----------------------------------------------------------
def _all_commands(group, path=()):
    import click

    yield path, group
    if isinstance(group, click.Group):
        for name, cmd in sorted(group.commands.items()):
            yield from _all_commands(cmd, (*path, name))


def test_help_lists_each_command_with_its_whole_first_sentence_and_no_markup():
    """At 80 columns click cut most command summaries mid-phrase ("Main job: build the bundle,
    index Flickr8K into..."); every group now wraps the whole first sentence. Help text is
    plain: no reStructuredText ``double backticks`` shown literally."""
    import click
    from click.testing import CliRunner

    from jointembed_pg.cli import cli

    runner = CliRunner()
    for path, cmd in _all_commands(cli):
        out = runner.invoke(cli, [*path, "--help"], terminal_width=80).output
        assert "Usage:" in out, (path, out)
        assert "``" not in out, (path, out)
        if isinstance(cmd, click.Group):
            rows = out.split("Commands:", 1)[1].splitlines()
            assert not [r for r in rows if r.rstrip().endswith("...")], (path, out)
            for name, sub in cmd.commands.items():  # each summary is complete (its words, wrapped)
                summary = " ".join(sub.get_short_help_str(limit=10_000).split())
                assert summary in " ".join(out.split()), (path, name, out)


def test_search_of_a_kind_the_collection_lacks_says_why_and_the_fix(flickr8k_dir, bundle_dir, pg_dsn):
    """`index image photos/` then `search image q.jpg` (target text by default) used to print a
    bare "(no results)": the collection has no texts. It now says so and names --target image.
    `search item N` names the item it started from (it printed only "item N")."""
    imgs = _images(flickr8k_dir, 2)
    run(["index", "image", *imgs, "--collection", "photos", *_args(pg_dsn, bundle_dir)], check_rc=0)
    p = run(["search", "image", imgs[0], "--collection", "photos", *_args(pg_dsn, bundle_dir)], check_rc=0)
    assert "(no results: collection 'photos' has no texts; it has 2 images: add --target image)" in p.stdout, p.stdout
    p = run(["search", "image", imgs[0], "--collection", "photos", "--json", *_args(pg_dsn, bundle_dir)], check_rc=0)
    assert p.stdout == "" and "note: no results: collection 'photos' has no texts" in p.stderr, (p.stdout, p.stderr)
    p = run(["search", "item", "1", "--target", "text", "--collection", "photos", "--dsn", pg_dsn], check_rc=0)
    assert "add --target image" in p.stdout, p.stdout
    label = p.stdout.splitlines()[0]  # which item it is, not just its number
    assert label.startswith("item 1 (image): ") and label.endswith(".jpg") and Path(label.split(": ", 1)[1]).name in {
        i.name for i in imgs}, label
    # the hint is only for a missing kind: a search that finds hits prints them as before
    p = run(["search", "image", imgs[0], "--target", "image", "--collection", "photos",
             *_args(pg_dsn, bundle_dir)], check_rc=0)
    assert "no results" not in p.stdout and "[id " in p.stdout, p.stdout


@pytest.mark.parametrize("command", [["demo"], ["eval"]])
def test_missing_flickr8k_names_where_it_looked_and_both_ways_to_fix_it(command, tmp_path, monkeypatch):
    """From a clone elsewhere (or a wheel), "no Flickr8K data found at ../shared/data/flickr8k"
    read as relative to the working directory; the error names the absolute path it looked at
    and both --data-dir and $JOINTEMBED_DATA_DIR."""
    from click.testing import CliRunner

    from jointembed_pg import settings
    from jointembed_pg.cli import cli

    missing = tmp_path / "shared" / "data" / "flickr8k"
    monkeypatch.setattr(settings, "DEFAULT_FLICKR8K", missing)
    monkeypatch.delenv("JOINTEMBED_DATA_DIR", raising=False)
    monkeypatch.setenv("JOINTEMBED_HOME", str(tmp_path / "home"))
    r = CliRunner().invoke(cli, command)
    assert r.exit_code == 1, r.output
    assert f"looked for {missing}" in r.output and "--data-dir DIR" in r.output, r.output
    assert "JOINTEMBED_DATA_DIR" in r.output and "Flickr8k.token.txt" in r.output, r.output
