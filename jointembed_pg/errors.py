"""Exception hierarchy of jointembed_pg.

Every error the library raises on purpose is a :class:`JointEmbedError`, so callers (and
the CLI, which turns them into one-line messages with a non-zero exit code) can catch
one type. Messages name the offending value or path.
"""
from __future__ import annotations


class JointEmbedError(Exception):
    """Base class of all jointembed_pg errors."""


class BundleError(JointEmbedError):
    """A model bundle is missing, corrupt, or does not match what it is used with."""


class InputError(JointEmbedError):
    """One input item (an image file, a caption) cannot be embedded.

    Batch jobs catch this per item, record it, and go on with the rest.
    """


class DatabaseError(JointEmbedError):
    """The database is unreachable, or its content does not match the request."""


class ModelMismatchError(DatabaseError):
    """A bundle's model id or dimension differs from what a collection or table stores."""
