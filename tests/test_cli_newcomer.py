"""A newcomer's first hour (issue 18): one vocabulary, discoverable bundles and collections,
queries the model cannot read, a demo that leads somewhere, progress in logs, and one rule
for one-line errors. Real subprocesses, real Postgres, real bundle, real Flickr8K images.
"""
from __future__ import annotations

import io
import json
import os
import shutil
import sys
from pathlib import Path

import click
import pytest

from test_cli import assert_one_line_error, run


def _images(flickr8k_dir: Path, n: int) -> list[Path]:
    names = (flickr8k_dir / "Flickr_8k.testImages.txt").read_text().split()[:n]
    return [flickr8k_dir / "images" / name for name in names]


@pytest.fixture
def mini_flickr(tmp_path, flickr8k_dir) -> Path:
    """A Flickr8K-layout directory with the first 12 test images (symlinks) and their captions."""
    root = tmp_path / "mini"
    (root / "images").mkdir(parents=True)
    imgs = _images(flickr8k_dir, 12)
    for p in imgs:
        (root / "images" / p.name).symlink_to(p)
    names = {p.name for p in imgs}
    lines = [ln for ln in (flickr8k_dir / "Flickr8k.token.txt").read_text().splitlines()
             if ln.split("#", 1)[0] in names]
    (root / "Flickr8k.token.txt").write_text("\n".join(lines) + "\n")
    (root / "Flickr_8k.testImages.txt").write_text("\n".join(p.name for p in imgs) + "\n")
    return root


def _args(pg_dsn, bundle_dir):
    return ["--dsn", pg_dsn, "--bundle", bundle_dir]


# -- 18.3 one vocabulary -------------------------------------------------------------------
def test_one_word_per_thing_and_plural_aliases(tmp_path, flickr8k_dir, bundle_dir, pg_dsn):
    imgs = _images(flickr8k_dir, 3)
    p = run(["index", "image", *imgs, *_args(pg_dsn, bundle_dir), "--json"], check_rc=0)
    assert json.loads(p.stdout)["written"] == 3 and json.loads(p.stdout)["modality"] == "image"
    p = run(["index", "images", *imgs, *_args(pg_dsn, bundle_dir), "--json"], check_rc=0)  # alias
    rep = json.loads(p.stdout)
    assert rep["unchanged"] == 3 and "skipped" not in rep  # the same word as the text summary
    p = run(["index", "image", *imgs, *_args(pg_dsn, bundle_dir)], check_rc=0)
    assert "0 written, 3 unchanged" in p.stderr
    caps = tmp_path / "caps.csv"
    caps.write_text("id,text\nc1,a dog runs on the grass\nc2,🐶🚀\n")
    p = run(["index", "text", caps, *_args(pg_dsn, bundle_dir), "--json"])
    assert p.returncode == 3, p.stderr  # the emoji-only caption fails alone, with its id
    rep = json.loads(p.stdout)
    assert rep["written"] == 1 and [f["key"] for f in rep["failed"]] == ["c2"]
    err = rep["failed"][0]["error"]
    assert err.startswith("c2: cannot embed") and "unknown to the tokenizer" in err and "texts[" not in err
    for target in ("text", "texts"):
        p = run(["search", "image", imgs[0], "--target", target, *_args(pg_dsn, bundle_dir), "--json"], check_rc=0)
        assert json.loads(p.stdout.splitlines()[0])["modality"] == "text"
    p = run(["search", "text", "a dog", "--target", "pictures", *_args(pg_dsn, bundle_dir)])
    assert p.returncode == 2 and "'image', 'text'" in p.stderr
    bad = tmp_path / "broken.jpg"
    bad.write_text("not an image")
    p = run(["search", "image", bad, *_args(pg_dsn, bundle_dir)])
    assert_one_line_error(p, str(bad), "not a readable image")
    assert "images[" not in p.stderr


# -- 18.4 discoverable bundles and collections -----------------------------------------------
def test_model_list_and_misspelt_bundle(tmp_path, bundle_dir):
    bundles = tmp_path / "bundles"
    bundles.mkdir()
    (bundles / "default").symlink_to(Path(bundle_dir).resolve())
    (bundles / "default-int8").symlink_to(Path(bundle_dir).resolve())
    (bundles / "broken").mkdir()
    (bundles / "broken" / "manifest.json").write_text("{")
    env = {"JOINTEMBED_BUNDLES": str(bundles)}
    rows = json.loads(run(["model", "list", "--json"], env_extra=env, check_rc=0).stdout)
    manifest = json.loads((Path(bundle_dir) / "manifest.json").read_text())
    assert [r["name"] for r in rows] == ["broken", "default", "default-int8"]
    good = rows[1]
    assert (good["model_id"], good["dim"], good["precision"]) == (manifest["model_id"], manifest["dim"], "fp32")
    assert good["test_rsum"] == manifest["metrics"]["test"]["rsum"] and good["error"] is None
    assert "not valid JSON" in rows[0]["error"]
    text = run(["model", "list"], env_extra=env, check_rc=0).stdout
    assert manifest["model_id"] in text and f"{manifest['metrics']['test']['rsum']:.2f}" in text
    p = run(["search", "text", "a dog", "--bundle", "defualt", "--dsn", "postgresql://x@127.0.0.1:1/x"], env_extra=env)
    assert_one_line_error(p, "no bundle 'defualt'; available: broken, default, default-int8 (did you mean 'default'?)")


def test_collections_list_drop_and_misspelt_name(flickr8k_dir, bundle_dir, pg_dsn):
    imgs = _images(flickr8k_dir, 2)
    run(["index", "image", *imgs, "--collection", "photos", *_args(pg_dsn, bundle_dir)], check_rc=0)
    rows = json.loads(run(["collections", "list", "--dsn", pg_dsn, "--json"], check_rc=0).stdout)
    assert [(r["name"], r["image"], r["text"], r["dim"]) for r in rows] == [("photos", 2, 0, 256)]
    assert "photos" in run(["collections", "list", "--dsn", pg_dsn], check_rc=0).stdout
    p = run(["search", "text", "a dog", "--collection", "photo", *_args(pg_dsn, bundle_dir)])
    assert_one_line_error(p, "no collection 'photo'; available: photos (did you mean 'photos'?)")
    p = run(["collections", "drop", "photo", "--yes", "--dsn", pg_dsn])
    assert_one_line_error(p, "did you mean 'photos'?")
    p = run(["collections", "drop", "photos", "--dsn", pg_dsn])  # no terminal, no --yes: refused
    assert_one_line_error(p, "pass --yes")
    assert len(json.loads(run(["collections", "list", "--dsn", pg_dsn, "--json"], check_rc=0).stdout)) == 1
    p = run(["collections", "drop", "photos", "--yes", "--dsn", pg_dsn], check_rc=0)
    assert "dropped collection 'photos' (2 images, 0 texts" in p.stdout
    assert json.loads(run(["collections", "list", "--dsn", pg_dsn, "--json"], check_rc=0).stdout) == []


def _run_with_stdout_closed(args):
    """Run the CLI with a stdout pipe whose reader is already gone (`jointembed ... | head -0`)."""
    import subprocess

    r, w = os.pipe()
    os.close(r)
    env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
    try:
        return subprocess.run([sys.executable, "-m", "jointembed_pg", *map(str, args)], stdout=w,
                              stderr=subprocess.PIPE, text=True, env=env, timeout=300)
    finally:
        os.close(w)


def test_a_closed_stdout_ends_quietly_not_with_an_error_line(flickr8k_dir, bundle_dir, pg_dsn):
    """`jointembed collections list | head -1`: the reader leaving is not our error (exit 1 with
    nothing on stderr, click's EPIPE rule); it used to print `Error: [Errno 32] Broken pipe`."""
    run(["index", "image", *_images(flickr8k_dir, 1), "--collection", "photos", *_args(pg_dsn, bundle_dir)],
        check_rc=0)
    for args in (["collections", "list", "--dsn", pg_dsn], ["model", "info", bundle_dir],
                 ["search", "text", "a dog", "--collection", "photos", *_args(pg_dsn, bundle_dir)]):
        p = _run_with_stdout_closed(args)
        assert (p.returncode, p.stderr) == (1, ""), (args, p.returncode, p.stderr)


def test_collections_drop_asks_on_a_terminal(monkeypatch, flickr8k_dir, bundle_dir, pg_dsn):
    from click.testing import CliRunner

    from jointembed_pg.cli import cli

    run(["index", "image", *_images(flickr8k_dir, 1), "--collection", "keep", *_args(pg_dsn, bundle_dir)],
        check_rc=0)
    monkeypatch.setattr("jointembed_pg.cli.collections._interactive", lambda: True)
    res = CliRunner().invoke(cli, ["collections", "drop", "keep", "--dsn", pg_dsn], input="n\n")
    assert res.exit_code == 0 and "Drop collection 'keep' (1 images" in res.output and "not dropped" in res.output
    res = CliRunner().invoke(cli, ["collections", "drop", "keep", "--dsn", pg_dsn], input="y\n")
    assert res.exit_code == 0 and "dropped collection 'keep'" in res.output
    assert json.loads(run(["collections", "list", "--dsn", pg_dsn, "--json"], check_rc=0).stdout) == []


def test_model_build_says_up_to_date(tmp_path, bundle_dir):
    pytest.importorskip("torch")
    out = tmp_path / "b"
    shutil.copytree(bundle_dir, out)
    p = run(["model", "build", "--out", out], check_rc=0)
    assert p.stdout.startswith(f"up to date {out}: ") and "wrote" not in p.stdout, p.stdout


# -- 18.5 queries the model cannot read -------------------------------------------------------
def test_unreadable_query_refused_and_mostly_unknown_warned(flickr8k_dir, bundle_dir, pg_dsn):
    run(["index", "image", *_images(flickr8k_dir, 3), *_args(pg_dsn, bundle_dir)], check_rc=0)
    for query in ("🐶", "🚀 🎉"):
        p = run(["search", "text", query, *_args(pg_dsn, bundle_dir)])
        assert_one_line_error(p, "the model cannot read it", "word pieces are unknown to the tokenizer")
    p = run(["search", "text", "a dog 🐶 🚀 🎉", *_args(pg_dsn, bundle_dir), "--json"], check_rc=0)
    hits = [json.loads(ln) for ln in p.stdout.splitlines()]
    assert len(hits) == 3 and all(h["warnings"] == hits[0]["warnings"] for h in hits)
    assert "3 of 5 word pieces are unknown" in hits[0]["warnings"][0]
    assert "warning: " in p.stderr and "3 of 5" in p.stderr
    p = run(["search", "text", "a dog on the grass", *_args(pg_dsn, bundle_dir), "--json"], check_rc=0)
    assert json.loads(p.stdout.splitlines()[0])["warnings"] == [] and "warning" not in p.stderr


# -- 18.7 the demo leads somewhere -----------------------------------------------------------
def test_demo_prints_collection_next_steps_and_marks_ground_truth(tmp_path, mini_flickr, bundle_dir, pg_dsn):
    html = tmp_path / "demo.html"
    p = run(["demo", "--data-dir", mini_flickr, "--html", html, "-k", "3", *_args(pg_dsn, bundle_dir)], check_rc=0)
    out = p.stdout
    assert "collection: flickr8k_test (12 images, 60 texts)" in out
    nxt = out.split("next, try:\n", 1)[1].splitlines()
    assert nxt[0].strip().startswith("jointembed search text ") and "--collection flickr8k_test" in nxt[0]
    assert any("jointembed search item " in ln for ln in nxt)
    assert any(ln.strip().startswith("psql ") and "jointembed.more_like_this('flickr8k_test'" in ln for ln in nxt)
    assert "✓" in out  # image -> text queries: the image's own captions are marked
    assert "Loaded pretrained" not in out
    # each printed command runs as printed (item id from the run; psql needs a server: skipped)
    search_item = next(ln.strip() for ln in nxt if "search item" in ln).split()[1:]
    run([*search_item, "--dsn", pg_dsn, "--html", tmp_path / "more.html"], check_rc=0)
    search_text = next(ln.strip() for ln in nxt if "search text" in ln)
    import shlex

    run([*shlex.split(search_text)[1:], *_args(pg_dsn, bundle_dir)], check_rc=0)
    page = html.read_text()
    assert "Collection</dt><dd>flickr8k_test" in page and "12 images, 60 texts" in page
    assert "lower is better" in page and 'class="match"' in page and "correct)" in page
    data = json.loads(run(["demo", "--data-dir", mini_flickr, "--html", html, "-k", "3", "--json",
                           *_args(pg_dsn, bundle_dir)], check_rc=0).stdout)
    assert data["collection"] == "flickr8k_test" and data["counts"] == {"image": 12, "text": 60}
    assert data["ingest"][0]["unchanged"] == 12 and data["next"] == [ln.strip() for ln in nxt]
    correct = [h["correct"] for q in data["queries"] if q["label"].startswith("image → text") for h in q["hits"]]
    assert True in correct


def test_library_prints_go_to_stderr_during_a_build(capsys):
    from jointembed_pg.cli.options import quiet_stdout

    with quiet_stdout():
        print("Loaded pretrained weights for efficientnet-lite0")
    captured = capsys.readouterr()
    assert captured.out == "" and "Loaded pretrained weights" in captured.err


# -- 18.8 progress when it matters --------------------------------------------------------------
def test_progress_log_lines_when_stderr_is_not_a_terminal(flickr8k_dir, bundle_dir, pg_dsn):
    imgs = _images(flickr8k_dir, 40)
    p = run(["index", "image", *imgs, *_args(pg_dsn, bundle_dir), "--batch-size", "8"],
            env_extra={"JOINTEMBED_PROGRESS_INTERVAL": "0"}, check_rc=0)
    lines = [ln for ln in p.stderr.splitlines() if ln.startswith("images: ") and "items/s" in ln]
    assert len(lines) >= 5 and "8/40 items (20%)" in lines[0] and "ETA" in lines[0]
    assert lines[-1].startswith("images: 40/40 items (100%)") and lines[-1].endswith("-- done")
    p = run(["index", "image", *imgs, *_args(pg_dsn, bundle_dir), "--no-progress"],
            env_extra={"JOINTEMBED_PROGRESS_INTERVAL": "0"}, check_rc=0)
    assert "items/s" not in p.stderr


def test_progress_bar_on_a_terminal_and_silence_for_short_runs():
    from tqdm import tqdm

    from jointembed_pg.progress import heartbeat, progress

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    bar = progress(10, "images", stream=Terminal())
    assert isinstance(bar, tqdm)
    bar.close()
    log = io.StringIO()
    with progress(10, "images", stream=log, interval=3600) as p:
        p.update(10)
    assert log.getvalue() == ""  # under one interval: nothing in the log
    with heartbeat("building", stream=log, interval=0.01):
        import time

        time.sleep(0.1)
    assert "building: elapsed 0 s" in log.getvalue() and log.getvalue().rstrip().endswith("building: done in 0 s")


# -- 15.3 one rule for one-line errors ---------------------------------------------------------
@pytest.mark.parametrize("exc, one_line", [
    (lambda: __import__("jointembed_pg.errors").errors.InputError("caps.csv: bad"), "caps.csv: bad"),
    (lambda: __import__("jointembed_pg.errors").errors.DatabaseError("no server"), "no server"),
    (lambda: FileNotFoundError(2, "No such file or directory", "/x/y.html"), "/x/y.html: No such file or directory"),
    (lambda: __import__("psycopg").OperationalError("server closed the connection\nunexpectedly"),
     "database error: server closed the connection unexpectedly"),
    (lambda: __import__("psycopg").errors.InsufficientPrivilege("permission denied for table photos"),
     "database error: permission denied for table photos"),
    (lambda: ValueError("a bug"), None),
    (lambda: KeyError("a bug"), None),
    (lambda: TypeError("a bug"), None),
])
def test_one_rule_for_one_line_errors(monkeypatch, capsys, exc, one_line):
    from jointembed_pg import cli

    def boom(self, dsn):
        raise exc()

    monkeypatch.setattr(cli.Context, "store", boom)
    monkeypatch.setattr(sys, "argv", ["jointembed", "collections", "list"])
    if one_line is None:  # a bug keeps its type and traceback; it is not turned into "Error: ..."
        with pytest.raises(type(exc())):
            cli.main()
        assert "Error:" not in capsys.readouterr().err
        return
    with pytest.raises(SystemExit) as e:
        cli.main()
    assert e.value.code == 1
    assert capsys.readouterr().err.strip() == f"Error: {one_line}"


def test_a_bad_setting_is_one_line_not_a_traceback(tmp_path):
    """A bad environment variable is the user's error (settings raise ArgumentError)."""
    p = run(["model", "list"], home=tmp_path, env_extra={"JOINTEMBED_PG_MAJOR": "eighteen"})
    assert_one_line_error(p, "JOINTEMBED_PG_MAJOR must be a PostgreSQL major version", "'eighteen'")


@pytest.mark.parametrize("how", ["option", "env"])
def test_a_bad_memory_cap_is_bad_usage_before_any_work(tmp_path, how):
    """``--memory-cap`` / ``$JOINTEMBED_INDEX_MEMORY`` are checked when parsed (exit 2), not after indexing."""
    caps = tmp_path / "caps.csv"
    caps.write_text("id,text\n1,a dog\n")
    args = ["index", "text", caps, "--dsn", "postgresql://nobody@127.0.0.1:1/none"]
    p = run(args + (["--memory-cap", "lots"] if how == "option" else []), home=tmp_path,
            env_extra={"JOINTEMBED_INDEX_MEMORY": "lots"} if how == "env" else None)
    assert p.returncode == 2, (p.returncode, p.stderr)
    assert "memory size must look like 512MB or 1GB, got 'lots'" in p.stderr and "Traceback" not in p.stderr


def test_bad_collection_name_is_an_argument_error_not_a_bare_value_error(pg_dsn):
    from jointembed_pg.errors import ArgumentError, JointEmbedError
    from jointembed_pg.search.store import Store

    with Store(pg_dsn) as store, pytest.raises(ArgumentError) as e:
        store.collection("", model_id="m", dim=4, create=True)
    assert isinstance(e.value, JointEmbedError) and isinstance(e.value, ValueError)


def test_click_usage_errors_stay_exit_2():
    p = run(["search", "text"])
    assert p.returncode == 2 and "Missing argument 'QUERY'" in p.stderr and "Traceback" not in p.stderr
    with pytest.raises(click.UsageError):
        from jointembed_pg.cli import cli

        cli.main(["search", "text"], standalone_mode=False)
