"""One thread budget for a batch job: decoder processes vs onnxruntime's intra-op threads.

Decoding images (in :mod:`jointembed_pg.ingest.sandbox` decoder processes), onnxruntime's own
intra-op thread pool and the writer thread share the same cores. :class:`ThreadBudget`
makes the split explicit: ``decode`` decoder processes (and as many feeding threads) and
``intra_op`` onnxruntime threads per session, with onnxruntime's spin-waiting turned off
(``session.intra_op.allow_spinning = 0``) so that its idle threads yield the cores to the
decoders instead of busy-waiting between operators.

The default split (:meth:`ThreadBudget.auto`) is the one measured best on a 2-core machine
(docs/BENCHMARKS.md, section "thread budget"): onnxruntime gets every core and one decoder
process runs beside it (``intra_op = total``, ``decode = max(1, total // 4)``); the CLI
takes ``--threads N`` (total cores, default: the cores this process may run on,
:func:`available_cores`) on ``index``, ``sync`` and ``worker``.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

#: onnxruntime session config entry: "0" stops intra-op threads from spin-waiting for work
#: (they sleep instead), so decoder processes get the cores between operators. Source:
#: ``kOrtSessionOptionsConfigAllowIntraOpSpinning`` in onnxruntime's
#: ``onnxruntime_session_options_config_keys.h``.
NO_SPINNING = ("session.intra_op.allow_spinning", "0")
#: Environment variable read by ``--threads`` when the option is not given.
THREADS_ENV = "JOINTEMBED_THREADS"


def available_cores() -> int:
    """Cores this process may run on (``os.sched_getaffinity``; ``os.cpu_count()`` where
    affinity is not available), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


@dataclass(frozen=True)
class ThreadBudget:
    """How a batch job uses its cores.

    Attributes:
        decode: decoder processes (and threads feeding them), >= 1.
        intra_op: onnxruntime intra-op threads per session, >= 1.
        spinning: let onnxruntime's idle threads spin-wait (onnxruntime's default; off
            here so decoders get the cores).
    """

    decode: int
    intra_op: int
    spinning: bool = False

    def __post_init__(self):
        if self.decode < 1 or self.intra_op < 1:
            raise ValueError(f"thread budget needs decode >= 1 and intra_op >= 1, got {self}")

    @classmethod
    def auto(cls, total: int | None = None) -> "ThreadBudget":
        """The measured-best split of ``total`` cores (default :func:`available_cores`):
        ``intra_op = total``, ``decode = max(1, total // 4)``.

        Raises:
            ValueError: ``total < 1``.
        """
        total = available_cores() if total is None else int(total)
        if total < 1:
            raise ValueError(f"--threads must be >= 1, got {total}")
        return cls(decode=max(1, total // 4), intra_op=total)

    def session_config(self) -> dict[str, str]:
        """onnxruntime session config entries for this budget (``{key: value}``)."""
        return {} if self.spinning else dict([NO_SPINNING])
