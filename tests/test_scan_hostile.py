"""Symlink loops among image paths (``a.jpg -> b.jpg -> a.jpg``, ``self.jpg -> self.jpg``):
in a scanned folder, named on the command line, or in a Flickr8K layout given to
``jointembed eval --data-dir``, each is an item that fails (or a missing image) with its
reason; the run goes on. (``Path.resolve()`` raised ``RuntimeError: Symlink loop`` and
ended the run with a traceback.) Real images, real PostgreSQL, the real bundle."""
from __future__ import annotations

import json
import shutil

from test_reliability_support import cli, flickr_images, one_line_error


def test_symlink_loops_fail_alone(pg_dsn, bundle_dir, flickr8k_dir, tmp_path):
    d = tmp_path / "photos"
    d.mkdir()
    shutil.copy(flickr_images(flickr8k_dir, 1, start=80)[0], d / "good.jpg")
    (d / "self.jpg").symlink_to("self.jpg")
    (d / "a.jpg").symlink_to("b.jpg")
    (d / "b.jpg").symlink_to("a.jpg")
    p = cli(["index", "image", d, d / "a.jpg", "--json", "--no-progress", "--dsn", pg_dsn, "--bundle", bundle_dir])
    assert p.returncode == 3 and "Traceback" not in p.stderr, p.stderr[-3000:]
    rep = json.loads(p.stdout)
    assert rep["written"] == 1 and rep["total"] == 4  # a.jpg named twice is one item
    assert sorted(f["key"].rsplit("/", 1)[1] for f in rep["failed"]) == ["a.jpg", "b.jpg", "self.jpg"]
    assert all("symbolic links" in f["error"] for f in rep["failed"]), rep["failed"]


def test_eval_data_dir_with_a_looping_image_is_one_line(pg_dsn, bundle_dir, flickr8k_dir, tmp_path):
    root = tmp_path / "f8k"
    (root / "images").mkdir(parents=True)
    names = (flickr8k_dir / "Flickr_8k.testImages.txt").read_text().split()[:2]
    (root / "Flickr8k.token.txt").symlink_to(flickr8k_dir / "Flickr8k.token.txt")
    (root / "Flickr_8k.testImages.txt").write_text("\n".join(names) + "\n")
    (root / "images" / names[0]).symlink_to(flickr8k_dir / "images" / names[0])
    (root / "images" / names[1]).symlink_to(names[1])  # loops onto itself
    p = cli(["eval", "--data-dir", root, "--dsn", pg_dsn, "--bundle", bundle_dir, "--no-progress"])
    line = one_line_error(p)
    assert "1 images of the test split are missing" in line and names[1] in line, line


def test_tree_deeper_than_the_recursion_limit(pg_dsn, bundle_dir, flickr8k_dir, tmp_path):
    """A folder nested 1100 levels deep (Python < 3.12's recursive os.walk raised
    RecursionError and ended the run): scanned to the bottom, its image indexed."""
    import os

    root = tmp_path / "deep"
    root.mkdir()
    fd = os.open(root, os.O_RDONLY)
    try:
        for depth in range(1, 1101):
            os.mkdir("d", dir_fd=fd)
            new = os.open("d", os.O_RDONLY, dir_fd=fd)
            os.close(fd)
            fd = new
            if depth == 300:
                with open(os.open("photo.jpg", os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fd), "wb") as f:
                    f.write(flickr_images(flickr8k_dir, 1, start=90)[0].read_bytes())
        with open(os.open("notes.txt", os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fd), "w") as f:
            f.write("x")
    finally:
        os.close(fd)
    try:
        p = cli(["index", "image", root, "--json", "--no-progress", "--dsn", pg_dsn, "--bundle", bundle_dir])
    finally:  # bottom-up, without recursion (pytest's own clean-up of tmp_path would recurse too deep)
        for depth in range(1100, 0, -1):
            d = os.path.join(root, *["d"] * depth)
            for name in os.listdir(d):
                os.unlink(os.path.join(d, name))
            os.rmdir(d)
    assert p.returncode == 0 and "Traceback" not in p.stderr, p.stderr[-2000:]
    rep = json.loads(p.stdout)
    assert rep["written"] == 1 and [i["kind"] for i in rep["ignored"]] == [".txt"], rep


def test_eval_split_file_that_is_a_fifo_or_dev_zero(pg_dsn, bundle_dir, flickr8k_dir, tmp_path):
    """``eval --data-dir`` whose split file is a FIFO (read_bytes blocked forever) or a
    symlink to /dev/zero (read until memory ran out): one line naming it, at once."""
    import os

    for kind in ("fifo", "zero"):
        root = tmp_path / kind
        (root / "images").mkdir(parents=True)
        (root / "Flickr8k.token.txt").symlink_to(flickr8k_dir / "Flickr8k.token.txt")
        split = root / "Flickr_8k.testImages.txt"
        os.mkfifo(split) if kind == "fifo" else split.symlink_to("/dev/zero")
        p = cli(["eval", "--data-dir", root, "--dsn", pg_dsn, "--bundle", bundle_dir, "--no-progress"], timeout=60)
        line = one_line_error(p)
        assert "Flickr_8k.testImages.txt" in line and ("FIFO" if kind == "fifo" else "character device") in line


def test_path_arguments_too_long_fail_alone(pg_dsn, bundle_dir, flickr8k_dir, tmp_path):
    """A path argument whose name is over NAME_MAX or whose length is over PATH_MAX made
    Path.exists() raise (Python < 3.12) and the whole run end with one error line, the
    good images not indexed. Each is now a failed item; the rest is indexed."""
    good = flickr_images(flickr8k_dir, 1, start=110)[0]
    long_name, long_path = tmp_path / ("x" * 300 + ".jpg"), tmp_path / ("x/" * 3000 + "y.jpg")
    p = cli(["index", "image", good, long_name, long_path, "--json", "--no-progress", "--dsn", pg_dsn,
             "--bundle", bundle_dir])
    assert p.returncode == 3, p.stderr[-2000:]
    rep = json.loads(p.stdout)
    assert rep["written"] == 1 and len(rep["failed"]) == 2, rep
    assert all("too long" in f["error"] for f in rep["failed"]), rep["failed"]
