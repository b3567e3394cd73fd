""""Did you mean ...?" for names the user typed (bundles, collections).

>>> not_found("bundle", "defualt", ["default", "default-int8"])
"no bundle 'defualt'; available: default, default-int8 (did you mean 'default'?)"
"""
from __future__ import annotations

import difflib
from typing import Sequence

#: At most this many names are listed in a message.
MAX_LISTED = 20


def closest(name: str, choices: Sequence[str]) -> str | None:
    """The choice most similar to ``name`` (difflib ratio >= 0.6), or ``None``."""
    best = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.6)
    return best[0] if best else None


def not_found(kind: str, name: str, available: Sequence[str]) -> str:
    """One-line message: ``no <kind> '<name>'; available: a, b (did you mean 'a'?)``."""
    shown = ", ".join(available[:MAX_LISTED]) + (f", ... ({len(available)} in all)"
                                                 if len(available) > MAX_LISTED else "")
    msg = f"no {kind} {name!r}; available: {shown or '(none)'}"
    guess = closest(name, available)
    return f"{msg} (did you mean {guess!r}?)" if guess else msg
