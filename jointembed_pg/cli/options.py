"""What every ``jointembed`` command shares: options, the one-line error rule, output helpers.

Exit codes: 0 success; 1 error (one line on stderr, no traceback); 2 bad usage;
3 the job finished but some items failed (they are listed in the end-of-run report).
Which exceptions are "errors" (one line) and which are bugs (traceback): :data:`USER_ERRORS`.
Every command that touches the database takes ``--dsn`` (or ``$DATABASE_URL``); without
either it starts/reuses the embedded PostgreSQL in ``<home>/pgdata`` (see
:mod:`jointembed_pg.settings`). No password reaches stdout/stderr (:func:`_guard_secrets`).

Vocabulary: the two kinds of item are ``image`` and ``text`` everywhere (commands,
``--target``, JSON, Python, SQL); the plurals ``images`` / ``texts`` are accepted as aliases.
"""
from __future__ import annotations

import contextlib
import json
import logging
import re
import sys
import types
from contextlib import contextmanager

import click
import psycopg

from ..errors import InputError, JointEmbedError, terminal_line
from ..model.threads import THREADS_ENV

EXIT_PARTIAL = 3
DEFAULT_COLLECTION = "default"

#: The one rule for one-line errors, for every command: our own hierarchy (bad input,
#: bad settings, missing bundle, database trouble the library recognised), operating-system
#: errors (unwritable paths, full disks) and the database server's own errors that reach the
#: CLI untranslated (``psycopg.Error``: a lost connection, a timeout, missing rights on the
#: user's table), shown as ``database error: ...`` with every password masked. click's own
#: ``ClickException``s (bad usage) are one line by construction. Every other exception --
#: a bare ``ValueError``, ``TypeError``, ``KeyError`` -- is a bug and keeps its traceback
#: rather than being disguised as a user error.
USER_ERRORS: tuple[type[BaseException], ...] = (JointEmbedError, OSError, psycopg.Error)

#: The item kinds, and the plural spellings accepted for them.
KINDS = ("image", "text")
ALIASES = {"images": "image", "texts": "text"}


class KindChoice(click.Choice):
    """``image`` or ``text`` (``images`` / ``texts`` accepted and normalised)."""

    def __init__(self):
        super().__init__(list(KINDS))

    def convert(self, value, param, ctx):
        if isinstance(value, str):
            value = ALIASES.get(value.lower(), value)
        return super().convert(value, param, ctx)


class HelpGroup(click.Group):
    """A command group whose ``--help`` lists each command with its whole first sentence,
    wrapped to the terminal, instead of click's default of cutting it to one line with
    ``...`` (which ends most of ours mid-phrase at 80 columns). A command's ``short_help``,
    when set, is shown instead."""

    def format_commands(self, ctx, formatter):
        rows = []
        for name in self.list_commands(ctx):
            cmd = self.get_command(ctx, name)
            if cmd is not None and not cmd.hidden:
                rows.append((name, cmd.get_short_help_str(limit=10_000)))
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)


class AliasGroup(HelpGroup):
    """A command group that accepts ``images``/``texts`` for ``image``/``text`` (and back)."""

    group_class = type  # sub-groups made with @group.group() are AliasGroups too

    def get_command(self, ctx, cmd_name):
        cmd = super().get_command(ctx, cmd_name)
        if cmd is None:
            other = ALIASES.get(cmd_name) or {v: k for k, v in ALIASES.items()}.get(cmd_name)
            cmd = super().get_command(ctx, other) if other else None
        return cmd

dsn_option = click.option("--dsn", envvar="DATABASE_URL", default=None, metavar="DSN",
                          help="PostgreSQL DSN (default: $DATABASE_URL, else the embedded server).")
bundle_option = click.option("--bundle", "bundle_name", default=None, metavar="NAME|PATH",
                             envvar="JOINTEMBED_BUNDLE", help="Model bundle (default: the 'default' bundle).")
collection_option = click.option("--collection", default=DEFAULT_COLLECTION, show_default=True,
                                 help="Collection to read or write.")
json_option = click.option("--json", "as_json", is_flag=True, help="Machine-readable JSON output.")
progress_option = click.option("--progress/--no-progress", default=None,
                               help="Progress on stderr: a bar on a terminal, else a line every 10 s "
                                    "($JOINTEMBED_PROGRESS_INTERVAL) [default: on].")
storage_option = click.option("--storage", type=click.Choice(["vector", "halfvec"]), default=None,
                              help="Embedding type of a new collection: vector (float32, default) or halfvec "
                                   "(float16, half the bytes; pgvector >= 0.7). An existing one must match.")

search_index_option = click.option(
    "--index", "search_index", type=click.Choice(["float", "binary", "binary-ivf"]), default=None,
    help="Search index of a new collection: float (HNSW on the embeddings, L2; default), binary (HNSW on "
         "the sign bits, binary_quantize(embedding)::bit(D)) or binary-ivf (IVFFlat on the sign bits, rows/1000 "
         "lists fixed at the build: about the codes' size; build after loading). Binary kinds re-rank a Hamming "
         "candidate pool by exact L2; pgvector >= 0.7. An existing one must match.")


def _check_memory_cap(ctx, param, value):
    """Refuse a bad ``--memory-cap`` / ``$JOINTEMBED_INDEX_MEMORY`` as bad usage before any work."""
    if value is not None:
        from ..errors import ArgumentError
        from ..search.indexing import parse_memory

        try:
            parse_memory(value)
        except ArgumentError as e:
            raise click.BadParameter(str(e), ctx=ctx, param=param) from e
    return value


memory_cap_option = click.option("--memory-cap", envvar="JOINTEMBED_INDEX_MEMORY", default=None, metavar="SIZE",
                                 callback=_check_memory_cap,
                                 help="Most maintenance_work_mem an HNSW build may use, e.g. 2GB "
                                      "(default: $JOINTEMBED_INDEX_MEMORY, else 1GB).")

#: The one ``--threads`` option of ``index image|text``, ``sync`` and ``worker``.
threads_option = click.option(
    "--threads", type=click.IntRange(min=1), default=None, envvar=THREADS_ENV, metavar="N",
    help="Cores to use: onnxruntime gets N intra-op threads, image decoding max(1, N//4) decoder "
         f"processes (default: ${THREADS_ENV}, else the cores this process may run on).")
int8_option = click.option("--int8", "int8", is_flag=True,
                           help="Bulk load with the bundle's int8 variant (<bundle>-int8: ~2x faster images, "
                                "-2.1 test rsum). Only into a collection made with that int8 bundle (or a new one); "
                                "query it with --bundle <name>-int8.")
defer_index_option = click.option("--defer-index", is_flag=True,
                                  help="Drop the collection's HNSW indexes before the load and build them once "
                                       "after it (faster for a load large next to what is stored).")


class Context:
    """Lazily opened resources shared by one CLI invocation."""

    def __init__(self):
        self._store = None
        self._bundle = None

    def bundle(self, name, *, budget=None, int8=False):
        """The bundle of this invocation, loaded once; ``budget``: the batch job's
        :class:`ThreadBudget` (its sessions' threads), ``int8``: the int8 variant."""
        if self._bundle is None:
            from ..search import bulk

            self._bundle = bulk.load_bundle(name, int8=int8, threads=budget)
        return self._bundle

    def collection(self, dsn, name, *, bundle=None, create=False, storage=None, index=None):
        """Open collection ``name`` (checking ``bundle``'s model); a missing one is an
        :class:`InputError` listing the existing names (and the closest one)."""
        from ..errors import DatabaseError
        from ..suggest import not_found

        store = self.store(dsn)
        model = {"model_id": bundle.model_id, "dim": bundle.dim} if bundle is not None else {}
        try:
            coll = store.collection(name, create=create, storage=storage, index=index, **model)
            if bundle is not None:  # the model's SQL text encoder (jointembed.search_text), once per model
                from ..search import text_sql

                with store.connection() as conn:
                    text_sql.load_if_possible(conn, bundle)
            return coll
        except DatabaseError as e:
            names = [c.name for c in store.collections()]
            if create or name in names:
                raise
            raise InputError(not_found("collection", name, names) + " (create one with "
                             "`jointembed index image|text ... --collection NAME`)") from e

    def store(self, dsn):
        if self._store is None:
            from ..search.store import Store

            self._store = Store(dsn)
        return self._store


def _progress(flag):
    """``--progress/--no-progress`` -> the library's ``progress`` argument (on unless turned off;
    :mod:`jointembed_pg.progress` picks a bar or log lines by whether stderr is a terminal)."""
    return flag is not False


#: ``jointembed: `` that our SQL functions put before their messages (useful in psql); the
#: CLI already says ``Error: ``, so it is dropped there (at the start or after a ``: ``).
_SQL_PREFIX = re.compile(r"(^|: )jointembed: ")


def user_error_message(e: BaseException) -> str | None:
    """The one-line message for an exception :data:`USER_ERRORS` covers, else ``None`` (a bug).

    Never a doubled prefix: an OSError whose text already names its file is not prefixed
    again, and ``jointembed: `` from our SQL functions is dropped (:data:`_SQL_PREFIX`).
    """
    if isinstance(e, OSError) and not isinstance(e, JointEmbedError):
        text = str(e.strerror or e)
        name = getattr(e, "filename", None)
        where = f"{name}: " if name and str(name) not in text else ""
        return f"{where}{text}"
    if isinstance(e, psycopg.Error):
        from ..db import one_line

        return _SQL_PREFIX.sub(r"\1", f"database error: {one_line(e)}")
    if isinstance(e, USER_ERRORS):
        return _SQL_PREFIX.sub(r"\1", str(e))
    return None


def _index_log(flag) -> bool:
    """Route index-build messages to stderr; return whether to draw a progress bar.

    Server notices and warnings always show; progress lines (every 10 s, without a bar)
    and build summaries unless ``--no-progress``.
    """
    logger = logging.getLogger("jointembed_pg.search.indexing")
    if not logger.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)
        logger.propagate = False
    logger.setLevel(logging.WARNING if flag is False else logging.INFO)
    return _progress(flag)


@contextmanager
def _errors():
    """Turn :data:`USER_ERRORS` into one-line ``Error: ...`` messages with exit code 1."""
    try:
        yield
    except BrokenPipeError:  # the reader went away (`| head`): not an error of ours, see cli.main
        raise
    except USER_ERRORS as e:
        raise click.ClickException(user_error_message(e)) from e


def _stack(*options):
    """One decorator applying ``options`` in the listed order (as if stacked top to bottom)."""
    def deco(f):
        for option in reversed(options):
            f = option(f)
        return f
    return deco


def _echo_failures(errors: list, more: str, shown: int = 20) -> None:
    """The first ``shown`` failure reasons on stderr, one line each (:func:`terminal_line`:
    a reason quoting a key or caption with a newline cannot fake a line), then a count."""
    for error in errors[:shown]:
        click.echo(f"  failed: {terminal_line(error)}", err=True)
    if len(errors) > shown:
        click.echo(f"  ... and {len(errors) - shown} more ({more})", err=True)


def exit_if_failed(failed: int) -> None:
    """The one rule for exit code 3, for every command that runs a job over items or rows
    (``index``, ``sync``, ``worker --until-idle``, ``reembed``): the job finished but
    ``failed`` of its items failed (they are reported). Returns when none failed."""
    if failed:
        sys.exit(EXIT_PARTIAL)


@contextmanager
def partial_report_on_interrupt(as_json: bool):
    """Ctrl-C (SIGINT) during a job whose report rides on the interrupt (``e.report``, set by
    :mod:`jointembed_pg.ingest.pipeline`): with ``--json`` that partial report (what was
    saved, ``"interrupted": true``) goes to stdout; the interrupt then goes on (exit 130).
    Yields a holder: set ``holder.report`` once the job returned (an interrupt during the
    index build that follows then prints the whole report)."""
    holder = types.SimpleNamespace(report=None)
    try:
        yield holder
    except KeyboardInterrupt as e:
        report = getattr(e, "report", None) or holder.report
        if as_json and report is not None:
            report.interrupted = True
            click.echo(json.dumps(report.to_dict()))
        raise


def _finish(report, as_json):
    """Print an ingest report; exit 3 when some items failed."""
    if as_json:
        click.echo(json.dumps(report.to_dict()))
    else:
        click.echo(f"{report.modality}s: {report.written} written, {report.unchanged} unchanged, "
                   f"{len(report.failed)} failed, {report.total} total in {report.seconds:.1f} s", err=True)
        _echo_failures([f.error for f in report.failed], "use --json for all")
        if getattr(report, "ignored", None):
            click.echo(f"  {report.ignored_summary()} (not images; --json lists them)", err=True)
    if report.written + report.unchanged == 0:
        # nothing indexed at all (no input, or every item failed) is an error
        if not report.failed and not as_json:
            click.echo(f"Error: nothing to index: no {report.modality} found", err=True)
        sys.exit(1)
    exit_if_failed(len(report.failed))  # some items failing is a partial success


@contextlib.contextmanager
def quiet_stdout():
    """Send what libraries print during an export (``Loaded pretrained weights for ...``)
    to stderr, so stdout carries only the command's own result."""
    with contextlib.redirect_stdout(sys.stderr):
        yield
