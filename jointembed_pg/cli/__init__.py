"""The ``jointembed`` command line (click): the root group :data:`cli` and the entry point :func:`main`.

Exit codes: 0 success; 1 error (one line on stderr, no traceback); 2 bad usage;
3 the job finished but some items failed (they are listed in the end-of-run report);
130/143 interrupted/terminated. A reader that closes our stdout early (``| head -1``) ends
the command quietly with 1 (click's EPIPE rule), never with an ``Error:`` line.
Which exceptions are "errors" (one line) and which are bugs (traceback):
:data:`.options.USER_ERRORS`. No password reaches stdout/stderr (:func:`_guard_secrets`).

One module per command group, each importing only :mod:`.options` (shared options and
helpers) and the library; this module adds them to the root group with ``add_command``,
so no CLI module imports another's commands (one-way: ``cli`` -> ``cli.<group>`` -> ``cli.options``).
"""
from __future__ import annotations

import sys

import click

from . import collections, demo, distributed, index, model, query, server, sync
from .options import AliasGroup, Context, _errors


@click.group(cls=AliasGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="jointembed-pg")
@click.pass_context
def cli(ctx):
    """Semantic image<->text search inside PostgreSQL with pgvector.

    \b
    Quick start:
      jointembed model build                 # export the default model bundle
      jointembed index image photos/         # embed images into the 'default' collection
      jointembed index text captions.csv     # embed captions (CSV id,text / JSONL / Flickr8K tokens)
      jointembed search text "a dog running on the beach" -k 5
      jointembed demo                        # the whole thing on Flickr8K, with an HTML gallery
      jointembed model list                  # the model bundles you have
      jointembed collections list            # what is indexed
    """
    ctx.obj = Context()


class _Terminated(BaseException):
    """Raised in the main thread by SIGTERM, so the process unwinds like on Ctrl-C."""


def _guard_secrets() -> None:
    """Register the passwords of every DSN on the command line and in the environment, and
    scrub them (and any found later) from everything this process writes to stdout/stderr."""
    import os

    from .. import errors, settings

    for arg in [*sys.argv[1:], os.environ.get(settings.DSN_ENV) or ""]:  # before settings can fail
        if "=" in arg or "://" in arg:
            errors.register_dsn(arg.split("=", 1)[1] if arg.startswith("--dsn=") else arg)
    errors.register_secret(os.environ.get("PGPASSWORD"))
    if not isinstance(sys.stdout, errors.ScrubbingStream):
        sys.stdout = errors.ScrubbingStream(sys.stdout)
    if not isinstance(sys.stderr, errors.ScrubbingStream):
        sys.stderr = errors.ScrubbingStream(sys.stderr)


def main() -> None:
    """Console entry point: click without its standalone handling, so that Ctrl-C and
    SIGTERM unwind normally (committed batches stay; the embedded server is released).
    No password reaches stdout/stderr (:func:`_guard_secrets`)."""
    import signal

    def _terminate(*_):
        raise _Terminated()

    _guard_secrets()
    signal.signal(signal.SIGTERM, _terminate)
    try:
        with _errors():  # the same rule for commands that did not apply it themselves
            rc = cli.main(prog_name="jointembed", standalone_mode=False)
    except click.exceptions.Exit as e:
        sys.exit(e.exit_code)
    except click.ClickException as e:
        e.show()
        sys.exit(e.exit_code)
    except (KeyboardInterrupt, click.exceptions.Abort):
        click.echo("interrupted: committed batches are kept; rerun the same command to resume", err=True)
        sys.exit(130)
    except _Terminated:
        click.echo("terminated: committed batches are kept; rerun the same command to resume", err=True)
        sys.exit(143)
    sys.exit(rc if isinstance(rc, int) else 0)


for _command in (index.init, index.index, query.search, query.eval_cmd, demo.demo, collections.collections,
                 distributed.index_distributed, model.model, server.server, sync.attach_cmd, sync.detach_cmd,
                 sync.sync_cmd, sync.worker_cmd, sync.status_cmd, sync.reembed_cmd, sync.grant_cmd):
    cli.add_command(_command)
