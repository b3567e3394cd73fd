"""Hostile values reach the terminal escaped: file names, caption ids and texts and
collection names holding ESC sequences (``ESC]52`` clipboard writes, ``ESC[2J``), C1
controls, bidi overrides and newlines are printed by the CLI as ``\\uXXXX`` (one line per
value), on a real terminal (pty) and in pipes; ``--json`` still gives the exact values."""
from __future__ import annotations

import json
import os
import pty
import re
import shutil
import subprocess
import sys
import threading

import pytest

from test_reliability_support import REPO, _CLI, cli, cli_env, flickr_images

#: What must never reach a terminal raw (TAB/LF/CR aside): C0, DEL, C1, bidi controls.
UNSAFE = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]")
OSC52 = "\x1b]52;c;ZXZpbA==\x07"     # "set the clipboard to 'evil'"
CAPTIONS = [
    {"id": f"dog{OSC52}", "text": "a dog \x1b[2J\x1b[31mruns on the beach \u202eevil"},
    {"id": "girls\r\nfake line", "text": "two girls \x9b31m sit on a bench\nFAKE 2. 0.0000 [id 9] forged"},
]
COLLECTION = f"c\x1b[31m{OSC52}\u202e"


def _on_pty(args) -> tuple[int, str]:
    """Run ``jointembed ARGS`` with stdout and stderr on a pseudo-terminal; (exit code, output)."""
    master, slave = pty.openpty()
    p = subprocess.Popen([sys.executable, "-c", _CLI, *map(str, args)], cwd=REPO, stdin=subprocess.DEVNULL,
                         stdout=slave, stderr=slave, env=cli_env(TERM="xterm"))
    os.close(slave)
    chunks: list[bytes] = []

    def pump():
        while True:
            try:
                b = os.read(master, 65536)
            except OSError:  # EIO: the child closed the terminal
                return
            if not b:
                return
            chunks.append(b)

    t = threading.Thread(target=pump, daemon=True)
    t.start()
    rc = p.wait(timeout=300)
    t.join(10)
    os.close(master)
    return rc, b"".join(chunks).decode("utf-8", "replace")


@pytest.fixture(scope="module")
def loaded(module_pg_dsn, bundle_dir, flickr8k_dir, tmp_path_factory):
    """A collection with hostile caption ids/texts and a hostile image file name."""
    tmp = tmp_path_factory.mktemp("term")
    caps = tmp / "caps.jsonl"
    caps.write_text("".join(json.dumps(c) + "\n" for c in CAPTIONS), encoding="utf-8")
    imgs = tmp / "imgs"
    imgs.mkdir()
    shutil.copy(flickr_images(flickr8k_dir, 1)[0], imgs / f"photo{OSC52}\u202e.jpg")
    (imgs / "bad\x1b[2J\nname.jpg").write_bytes(b"not an image")
    args = ["--dsn", module_pg_dsn, "--bundle", bundle_dir, "--collection", COLLECTION, "--no-progress"]
    p = cli(["index", "text", caps, *args])
    assert p.returncode == 0, p.stderr
    rc, out = _on_pty(["index", "image", imgs, *args])
    assert rc == 3, out  # one image stored, the non-image failed
    return module_pg_dsn, bundle_dir, out


def test_failed_file_names_are_escaped_on_the_terminal(loaded):
    _, _, out = loaded
    assert not UNSAFE.search(out), ascii(out)
    failed = [ln for ln in out.splitlines() if "failed:" in ln]
    assert len(failed) == 1 and "bad\\u001b[2J" in failed[0] and "name.jpg" in failed[0], ascii(out)


def test_search_and_collections_list_escape_stored_values(loaded):
    dsn, bundle_dir, _ = loaded
    common = ["--dsn", dsn, "--bundle", bundle_dir, "--collection", COLLECTION]
    rc, out = _on_pty(["search", "text", "a dog runs", "--target", "text", "-k", "2", *common])
    assert rc == 0, ascii(out)
    assert not UNSAFE.search(out), ascii(out)
    lines = [ln for ln in out.replace("\r\n", "\n").split("\n") if ln]
    assert len(lines) == 3, ascii(out)  # label + 2 hits: a newline in a caption cannot forge a hit line
    assert "\\u001b[2J" in out and "\\u202eevil" in out and "\\u009b31m" in out and "\\u000aFAKE" in out
    rc, out = _on_pty(["search", "text", "a dog", "--target", "image", "-k", "1", *common])
    assert rc == 0 and not UNSAFE.search(out) and "photo\\u001b]52;c;ZXZpbA==\\u0007\\u202e.jpg" in out, ascii(out)
    rc, out = _on_pty(["collections", "list", "--dsn", dsn])
    assert rc == 0 and not UNSAFE.search(out), ascii(out)
    assert "c\\u001b[31m\\u001b]52;c;ZXZpbA==\\u0007\\u202e" in out, ascii(out)
    # --json still gives the exact values
    p = cli(["search", "text", "a dog runs", "--target", "text", "-k", "2", "--json",
             "--dsn", dsn, "--bundle", bundle_dir, "--collection", COLLECTION])
    assert p.returncode == 0, p.stderr
    assert not UNSAFE.search(p.stdout)
    hits = [json.loads(ln) for ln in p.stdout.splitlines()]
    assert sorted((h["key"], h["text"]) for h in hits) == sorted((c["id"], c["text"]) for c in CAPTIONS)


def test_stream_escape_is_json_compatible_and_lets_tqdm_move_up():
    """The stream filter's escapes are JSON's: a ``--json`` line written with
    ``ensure_ascii=False`` (C1 and bidi characters raw) still decodes to the same value."""
    import io

    from jointembed_pg.errors import ScrubbingStream

    buf = io.StringIO()
    s = ScrubbingStream(buf)
    value = {"k": "x\x9b\u202e\udcff\x1b]52;c;e\x07"}
    s.write(json.dumps(value, ensure_ascii=False) + "\n")
    s.write("\x1b[A\x1b[A")  # tqdm moving between its stacked bars
    out = buf.getvalue()
    assert json.loads(out.splitlines()[0]) == value
    assert out.endswith("\n\x1b[A\x1b[A") and not UNSAFE.search(out.split("\n")[0])
