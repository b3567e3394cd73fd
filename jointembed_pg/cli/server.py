"""``jointembed server start / stop / status / dsn / upgrade``: the embedded PostgreSQL.

The cluster is ``$JOINTEMBED_PGDATA`` (default ``<home>/pgdata``); see
:mod:`jointembed_pg.server.embedded`. Added to the root group by :mod:`jointembed_pg.cli`.
"""
from __future__ import annotations

import json

import click

from .options import HelpGroup, _errors


@click.group(cls=HelpGroup)
def server():
    """The embedded PostgreSQL used when no --dsn / $DATABASE_URL is given."""


def _srv():
    from ..server import embedded

    return embedded.server()


@server.command("start")
@click.option("--tcp", is_flag=True,
              help="Also listen on 127.0.0.1 with a generated password (kept 0600 next to the data dir).")
@click.option("--port", type=click.IntRange(0, 65535), default=0, show_default=True,
              help="TCP port with --tcp (0: a free port).")
@click.option("--json", "as_json", is_flag=True, help="Print the status as JSON.")
def server_start(tcp, port, as_json):
    """Start the embedded server and keep it running until `jointembed server stop`.

    Prints its DSN for psql or your app (with --tcp the password is shown as ***;
    `jointembed server dsn --show-password` prints it).
    """
    with _errors():
        srv = _srv()
        srv.start(hold=True, tcp=tcp, port=port)
        status = srv.status()
    if as_json:
        click.echo(json.dumps(status))
        return
    click.echo(status.get("tcp_dsn") or status["dsn"])
    for db, old, new in srv.updated_extensions:
        click.echo(f"updated pgvector in database {db}: {old} -> {new}", err=True)
    click.echo(f"PostgreSQL {status.get('server_version')} (data {status['data_dir']}) runs until "
               f"`jointembed server stop`", err=True)
    if status.get("upgrade_available"):
        click.echo(f"upgrade available: {status['upgrade_available']}", err=True)


@server.command("stop")
def server_stop():
    """Stop the embedded server (clients are disconnected). It stays stopped: commands and
    Store() that use it implicitly refuse to start it until `jointembed server start`."""
    with _errors():
        srv = _srv()
        was = srv.stop()
    click.echo("stopped" if was else "not running")
    if srv.refused_pid:
        click.echo(f"warning: {srv.refused_pid}", err=True)


@server.command("status")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable JSON output.")
def server_status(as_json):
    """Whether the server runs; its DSN, data directory and versions (exit 0 either way)."""
    with _errors():
        status = _srv().status()
    if as_json:
        click.echo(json.dumps(status))
        return
    if status.get("refused_pid"):
        click.echo(f"warning: {status['refused_pid']}", err=True)
    click.echo(f"running:    {'yes (held by server start)' if status['running'] and status['held'] else 'yes' if status['running'] else 'no (stopped by server stop)' if status['stopped'] else 'no'}")
    for key, label in (("dsn", "dsn"), ("tcp_dsn", "tcp dsn"), ("data_dir", "data dir"),
                       ("socket_dir", "socket dir"), ("data_pg_major", "data made by PostgreSQL"),
                       ("server_version", "server"), ("pgvector_available", "pgvector"), ("package", "package"),
                       ("upgrade_available", "upgrade")):
        if status.get(key) is not None:
            click.echo(f"{label + ':':<11} {status[key]}")


@server.command("dsn")
@click.option("--show-password", is_flag=True, help="Print the TCP password in clear.")
@click.option("--socket", "socket_only", is_flag=True, help="The Unix-socket DSN even when TCP is on.")
@click.option("--database", "database", default=None, metavar="NAME",
              help="The DSN of database NAME on this server instead of 'postgres' (e.g. one per app or test).")
@click.option("--create", is_flag=True, help="With --database: create it first if it does not exist.")
def server_dsn(show_password, socket_only, database, create):
    """Print the DSN of the running server (TCP DSN when it listens on TCP).

    `jointembed server dsn --database shop --create` prints the DSN of database `shop` on
    the embedded server, creating it first; use it as --dsn or $DATABASE_URL.
    """
    if create and database is None:
        raise click.UsageError("--create needs --database NAME")
    with _errors():
        srv = _srv()
        dbname = "postgres"
        if database is not None:
            dbname = _database(srv, database, create)
        tcp = None if socket_only else srv.tcp_uri(show_password=show_password, dbname=dbname)
        dsn = tcp or srv.uri(dbname)
    if show_password and tcp:
        import sys

        out = sys.__stdout__  # explicitly asked for: past the CLI's secret scrubbing
        out.write(dsn + "\n")
        out.flush()
        return
    click.echo(dsn)


def _database(srv, name: str, create: bool) -> str:
    """``name`` percent-encoded for a DSN's path, after checking that the database exists
    (or creating it with ``create``; the name is passed as an identifier, never pasted).

    Raises:
        InputError: empty or over 63 bytes, or no such database and not ``create``.
    """
    from urllib.parse import quote

    import psycopg
    from psycopg import sql

    from ..errors import InputError
    from ..suggest import not_found

    if not name or len(name.encode()) > 63 or "\x00" in name:
        raise InputError(f"database name must be 1 to 63 bytes without NUL, got {name!r}")
    with psycopg.connect(srv.uri(), autocommit=True, connect_timeout=10) as conn:
        names = [r[0] for r in conn.execute(
            "SELECT datname FROM pg_catalog.pg_database WHERE datallowconn ORDER BY datname")]
        if name not in names:
            if not create:
                raise InputError(not_found("database", name, names) + " (add --create to create it)")
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
            click.echo(f"created database {name!r}", err=True)
    return quote(name, safe="")


@server.command("upgrade")
def server_upgrade():
    """Upgrade the cluster to the newest shipped PostgreSQL (pg_upgrade --copy as the server's
    OS user); the old data directory is kept as a backup until you remove it."""
    with _errors():
        srv = _srv()
        backup = srv.upgrade(log=lambda s: click.echo(s, err=True))
        status = srv.status()
    if backup is None:
        click.echo(f"already on PostgreSQL {status['data_pg_major']}; nothing to do")
        return
    click.echo(f"upgraded to PostgreSQL {status['data_pg_major']}; backup of the old cluster: {backup}")
    click.echo(f"check your data, then remove the backup: rm -rf {backup}")
