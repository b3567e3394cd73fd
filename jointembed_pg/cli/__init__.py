"""The ``jointembed`` command line (click): the root group, one command group per module.

:mod:`.options` holds what every command shares (``--dsn``, ``--json``, the one-line error
rule); the root group :data:`cli` and the console entry point :func:`main` live here.
"""
