"""Exception hierarchy of jointembed_pg.

Every error the library raises on purpose is a :class:`JointEmbedError`, so callers (and
the CLI, which turns them into one-line messages with a non-zero exit code) can catch
one type. Messages name the offending value or path.

The CLI's rule (``jointembed_pg.cli.USER_ERRORS``): ``JointEmbedError``, ``OSError`` and
click's own usage errors become one line on stderr; anything else (a bare ``ValueError``,
``TypeError``, ...) is a bug and keeps its traceback.
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


class ItemError(InputError):
    """One item of a list passed to the library is refused.

    ``str(e)`` is ``"<label>: <reason>"`` where ``label`` names the item by its position
    in the caller's list (e.g. ``texts[3]``). Callers that know the user's name for the
    item (a file path, a row id, a line number) report :meth:`for_item` instead.

    Attributes:
        label: the positional label, e.g. ``"texts[3]"``.
        reason: the message without the label.
        index: the item's position in the caller's list (``int``) or ``None``.
    """

    def __init__(self, label: str, reason: str, index: int | None = None):
        super().__init__(f"{label}: {reason}")
        self.label, self.reason, self.index = label, reason, index

    def for_item(self, name: str) -> str:
        """The message with the user's name for the item in place of the label."""
        return f"{name}: {self.reason}"


class ArgumentError(JointEmbedError, ValueError):
    """An argument value is invalid (a collection name, a dimension).

    Also a ``ValueError``, so code written against the earlier bare ``ValueError`` keeps working.
    """


class DatabaseError(JointEmbedError):
    """The database is unreachable, or its content does not match the request."""


class ModelMismatchError(DatabaseError):
    """A bundle's model id or dimension differs from what a collection or table stores."""
