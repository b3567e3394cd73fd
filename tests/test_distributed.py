"""The Ray engine (local mode, 2 workers) against the single-machine ingest, on real Flickr8K.

One module database holds the single-machine reference (1,000 images + 4 bad inputs, and
2,500 captions + 1 bad line). Each distributed run must store the same keys, content
hashes, model id and byte-identical float32 embeddings, and report the same failures:
after a clean run, after one worker actor is SIGKILLed mid-job (Ray retries its batch),
and after the whole job is SIGKILLed part-way and rerun (the rerun skips what was
committed). Skipped when Ray is not installed.
"""
from __future__ import annotations

import contextlib
import importlib.util
import json
import re
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from jointembed_pg import distributed
from jointembed_pg.ingest import flickr8k, pipeline as ingest, readers
from jointembed_pg.errors import JointEmbedError

N_ITEMS = 1000
#: Captions: more than two partitions of 4 x 256, so the batch boundaries matter.
N_CAPTIONS = 2500
#: Bad image inputs: a corrupt JPEG, an empty file, a text file named .png, a missing path.
N_BAD = 4
WORKERS = 2
JOB_TIMEOUT_S = 300
_ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+")

needs_ray = pytest.mark.skipif(importlib.util.find_spec("ray") is None,
                               reason="Ray is not installed (pip install 'jointembed-pg[ray]')")
needs_proc = pytest.mark.skipif(not Path("/proc/self/stat").exists(),
                                reason="needs Linux /proc to find and kill the job's worker processes")


def test_missing_ray_is_one_clear_error(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(JointEmbedError, match=r"pip install 'jointembed-pg\[ray\]'"):
        distributed.index_images_ray("postgresql://nowhere/x", "c", tmp_path, [tmp_path])


def test_config_is_validated():
    with pytest.raises(ValueError, match="workers"):
        distributed.RayConfig(workers=0)
    with pytest.raises(ValueError, match="batch_size"):
        distributed.RayConfig(batch_size=0)


def test_partitions_keep_the_single_path_batches():
    items = [(f"k{i}", f"v{i}", None) for i in range(10)]
    parts = distributed.partitions(items, 4)
    assert [p["keys"] for p in parts] == [["k0", "k1", "k2", "k3"], ["k4", "k5", "k6", "k7"], ["k8", "k9"]]
    assert parts[2] == {"keys": ["k8", "k9"], "values": ["v8", "v9"], "errors": [None, None]}


def test_work_items_match_what_ingest_batches(tmp_path):
    # index_images batches unusable paths with the rest; index_texts reports bad lines first.
    images = list(readers.iter_image_paths([tmp_path / "missing.jpg"]))
    report = ingest.IngestReport("image")
    assert distributed._work_items("image", images, report) == [(images[0].key, str(images[0].path), images[0].error)]
    assert report.failed == []
    texts = [readers.TextRecord("a", "a dog"), readers.TextRecord("b", "", "b: empty caption")]
    report = ingest.IngestReport("text")
    assert distributed._work_items("text", texts, report) == [("a", "a dog", None)]
    assert report.failed == [ingest.Failure("b", "b: empty caption")]


def test_worker_errors_come_out_as_our_errors():
    from jointembed_pg.errors import DatabaseError, ModelMismatchError

    wrapped = RuntimeError("RayTaskError(UserCodeException): ...")
    wrapped.cause = DatabaseError("OperationalError: the server closed the connection")
    assert distributed.worker_error(wrapped) == (DatabaseError, "DatabaseError: OperationalError: "
                                                                 "the server closed the connection")
    died = RuntimeError("The actor died because of an error raised in its creation task\n  File \"x.py\", line 1\n"
                        "jointembed_pg.errors.ModelMismatchError: /b holds model 'a', the job's is 'b'")
    assert distributed.worker_error(died) == (ModelMismatchError, "ModelMismatchError: /b holds model 'a', "
                                                                  "the job's is 'b'")
    assert distributed.worker_error(ValueError("plain")) == (JointEmbedError, "ValueError: plain")


def test_the_job_dsn_password_never_leaves_in_repr_errors_or_worker_output(capsys):
    """Ray logs actor arguments and worker output, and re-raises worker messages in the
    driver; none of them may carry the DSN's password (library callers have no CLI scrub)."""
    import sys

    secret = "Ray-w0rker-s3cret"
    dsn = f"postgresql://app:{secret}@db.internal:5432/photos"
    job = distributed.Job(dsn, "photos", "/models/default", "je-1", 256)
    assert secret not in repr(job) and "db.internal" not in repr(job)
    died = RuntimeError("The actor died because of an error raised in its creation task\n"
                        f"jointembed_pg.errors.DatabaseError: cannot use {dsn}")
    err = distributed.job_error(died, job, "image")
    assert type(err).__name__ == "DatabaseError" and secret not in str(err) and "***" in str(err)
    saved = sys.stdout, sys.stderr
    try:
        distributed.guard_secrets(dsn)  # what every IngestWorker does first in its process
        print(f"worker says {dsn}")
        print(f"password={secret}", file=sys.stderr)
    finally:
        sys.stdout, sys.stderr = saved
    out, err_text = capsys.readouterr()
    assert secret not in out + err_text and out.startswith("worker says postgresql://app:***@")


def test_cli_command_is_registered():
    from click.testing import CliRunner

    from jointembed_pg.cli import distributed as cli_distributed
    from jointembed_pg.cli import cli

    result = CliRunner().invoke(cli, ["index-distributed", "images", "--help"])
    assert result.exit_code == 0, result.output
    assert "--workers" in result.output and "--engine [ray]" in result.output
    assert cli_distributed.ENGINES == ("ray",)


# -- fixtures: the inputs and the single-machine reference ------------------------------------
@pytest.fixture(scope="module")
def image_dir(flickr8k_dir, tmp_path_factory) -> Path:
    """1,000 Flickr8K images as symlinks (keys resolve to the originals) + 3 bad files."""
    d = tmp_path_factory.mktemp("ray_images")
    for src in sorted((flickr8k_dir / "images").glob("*.jpg"))[:N_ITEMS]:
        (d / src.name).symlink_to(src)
    (d / "zz_corrupt.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    (d / "zz_empty.jpg").write_bytes(b"")
    (d / "zz_text.png").write_text("hello")
    return d


def _paths(image_dir: Path) -> list[Path]:
    """What every run is given: the directory and one path that does not exist."""
    return [image_dir, image_dir / "zz_missing.jpg"]


@pytest.fixture(scope="module")
def caption_file(flickr8k_dir, tmp_path_factory) -> Path:
    lines = (flickr8k_dir / flickr8k.TOKEN_FILE).read_bytes().splitlines()[:N_CAPTIONS]
    path = tmp_path_factory.mktemp("ray_texts") / "captions.token.txt"
    path.write_bytes(b"\n".join(lines + [b"a line without a tab"]) + b"\n")
    return path


def _open(dsn, name, bundle=None):
    from jointembed_pg.search.store import Store

    store = Store(dsn)
    if bundle is None:
        return store.collection(name)
    return store.collection(name, model_id=bundle.model_id, dim=bundle.dim, create=True)


def _stored(dsn, name) -> dict[str, tuple]:
    """``{(modality, key): (source, text, content_hash, model_id, embedding bytes)}``; asserts no duplicates."""
    from psycopg import sql

    coll = _open(dsn, name)
    with coll.store.transaction() as conn:
        rows = conn.execute(sql.SQL("SELECT modality, key, source, text, content_hash, model_id, embedding "
                                    "FROM {}").format(coll.table_ident)).fetchall()
    coll.store.close()
    out = {(m, k): (s, t, h, mid, _float32_bytes(e)) for m, k, s, t, h, mid, e in rows}
    assert len(out) == len(rows), "duplicate (modality, key) rows"
    return out


def _float32_bytes(embedding) -> bytes:
    e = embedding.to_numpy() if hasattr(embedding, "to_numpy") else np.asarray(embedding)
    assert e.dtype == np.float32
    return e.tobytes()


def _failures(report) -> set[tuple[str, str]]:
    """``{(key, error)}``, with object addresses that Pillow puts in its messages removed."""
    failed = report["failed"] if isinstance(report, dict) else [f.__dict__ for f in report.failed]
    return {(f["key"], _ADDRESS.sub("", f["error"])) for f in failed}


@pytest.fixture(scope="module")
def reference(module_pg_dsn, bundle, image_dir, caption_file):
    """The single-machine path's reports and stored rows for the same inputs."""
    coll = _open(module_pg_dsn, "single", bundle)
    images = ingest.index_images(coll, bundle, list(readers.iter_image_paths(_paths(image_dir))), progress=False)
    texts = ingest.index_texts(coll, bundle, readers.read_texts(caption_file), progress=False)
    coll.store.close()
    assert images.written == N_ITEMS and len(images.failed) == N_BAD
    assert texts.written == N_CAPTIONS and len(texts.failed) == 1
    return {"images": images, "texts": texts, "rows": _stored(module_pg_dsn, "single")}


def _assert_same_as_reference(dsn, name, reference, modalities=("image",)):
    got = _stored(dsn, name)
    want = {k: v for k, v in reference["rows"].items() if k[0] in modalities}
    assert got.keys() == want.keys()
    different = [k for k in want if got[k] != want[k]]
    assert not different, f"{len(different)} rows differ from the single-machine path, e.g. {different[:3]}"


# -- the distributed runs -----------------------------------------------------------------------
@needs_ray
@pytest.mark.slow
@pytest.mark.flickr8k
def test_ray_texts_equal_single_machine(module_pg_dsn, bundle_dir, caption_file, reference):
    report = distributed.index_texts_ray(module_pg_dsn, "ray_texts", bundle_dir, caption_file, workers=WORKERS)
    want = reference["texts"]
    assert (report.total, report.written, report.unchanged) == (want.total, want.written, 0)
    assert _failures(report) == _failures(want)
    _assert_same_as_reference(module_pg_dsn, "ray_texts", reference, ("text",))


def _start(args: list[str]) -> subprocess.Popen:
    """A job in its own session, so that it and the Ray processes it starts can be killed together."""
    return subprocess.Popen([sys.executable, *args], start_new_session=True, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=Path(__file__).resolve().parent.parent)


def _wait_for_rows(dsn, name, at_least: int, proc: subprocess.Popen) -> int:
    deadline = time.monotonic() + JOB_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"job ended (rc {proc.returncode}) before {at_least} rows: {proc.stderr.read()[-2000:]}")
        try:
            coll = _open(dsn, name)
            n = coll.count()
            coll.store.close()
        except JointEmbedError:  # the collection is not created yet
            n = 0
        if n >= at_least:
            return n
        time.sleep(0.2)
    pytest.fail(f"fewer than {at_least} rows after {JOB_TIMEOUT_S} s")


def _session_processes(session_id: int, marker: bytes = b"") -> list[int]:
    """PIDs of the processes in our job's session (whose command line holds ``marker``)."""
    pids = []
    for d in Path("/proc").iterdir():
        try:
            stat, cmd = (d / "stat").read_text(), (d / "cmdline").read_bytes()
        except (OSError, ValueError):
            continue
        if d.name.isdigit() and int(stat.rsplit(")", 1)[1].split()[3]) == session_id and marker in cmd:
            pids.append(int(d.name))
    return sorted(pids)


def _kill_session(proc: subprocess.Popen) -> None:
    """SIGKILL the job and everything it started. Ray actors run in process groups of their own
    (so ``killpg`` alone misses them) but stay in the job's session."""
    deadline = time.monotonic() + 30
    while (pids := _session_processes(proc.pid)) and time.monotonic() < deadline:
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if proc.poll() is None:
            proc.wait()
        time.sleep(0.2)
    proc.communicate()


@needs_ray
@needs_proc
@pytest.mark.slow
@pytest.mark.flickr8k
def test_worker_killed_mid_job_is_retried_without_duplicates(module_pg_dsn, bundle_dir, image_dir, reference):
    proc = _start(["-m", "jointembed_pg", "index-distributed", "images", *map(str, _paths(image_dir)),
                   "--collection", "ray_worker_killed", "--dsn", module_pg_dsn, "--bundle", str(bundle_dir),
                   "--engine", "ray", "--workers", str(WORKERS), "--json", "--no-progress"])
    try:
        before = _wait_for_rows(module_pg_dsn, "ray_worker_killed", 64, proc)
        actors = _session_processes(proc.pid, b"IngestWorker")
        assert actors, "no worker actor found in the job's session"
        os.kill(actors[0], signal.SIGKILL)
        out, err = proc.communicate(timeout=JOB_TIMEOUT_S)
    finally:
        if proc.poll() is None:
            _kill_session(proc)
    assert before < N_ITEMS, "the job finished before a worker could be killed"
    assert proc.returncode == 3, err[-2000:]  # done, with the bad inputs reported
    report = json.loads(out)
    assert report["total"] == N_ITEMS + N_BAD and report["written"] + report["unchanged"] == N_ITEMS
    assert _failures(report) == _failures(reference["images"])
    _assert_same_as_reference(module_pg_dsn, "ray_worker_killed", reference)


@needs_ray
@needs_proc
@pytest.mark.slow
@pytest.mark.flickr8k
def test_job_killed_part_way_then_rerun_resumes(module_pg_dsn, bundle_dir, image_dir, reference):
    code = ("import sys; from jointembed_pg import distributed; "
            "distributed.index_images_ray(sys.argv[1], 'ray_job_killed', sys.argv[2], sys.argv[3:], workers=2)")
    proc = _start(["-c", code, module_pg_dsn, str(bundle_dir), *map(str, _paths(image_dir))])
    try:
        _wait_for_rows(module_pg_dsn, "ray_job_killed", 100, proc)
    finally:
        _kill_session(proc)  # the driver, the Ray cluster it started and its workers
    coll = _open(module_pg_dsn, "ray_job_killed")
    partial = coll.count()
    coll.store.close()
    assert 100 <= partial < N_ITEMS

    report = distributed.index_images_ray(module_pg_dsn, "ray_job_killed", bundle_dir, _paths(image_dir),
                                          workers=WORKERS)
    assert (report.total, report.unchanged, report.written) == (N_ITEMS + N_BAD, partial, N_ITEMS - partial)
    assert _failures(report) == _failures(reference["images"])
    _assert_same_as_reference(module_pg_dsn, "ray_job_killed", reference)


@needs_ray
@pytest.mark.slow
@pytest.mark.flickr8k
def test_inside_a_users_ray_pipeline(module_pg_dsn, bundle_dir, image_dir, reference):
    import ray

    records = [r for r in readers.iter_image_paths([image_dir])][:200]
    job = distributed.prepare_job(module_pg_dsn, "ray_pipeline", bundle_dir)
    cfg = distributed.RayConfig(workers=WORKERS)
    with distributed.ray_session(ray, cfg):
        ds = ray.data.from_items([{"key": r.key, "value": str(r.path)} for r in records])
        report = distributed.run_dataset(ds, job, "image", cfg, ingest.IngestReport("image", total=len(records)))
    assert (report.written, report.unchanged, report.failed) == (200, 0, [])
    got = _stored(module_pg_dsn, "ray_pipeline")
    assert all(reference["rows"][k] == v for k, v in got.items()) and len(got) == 200
