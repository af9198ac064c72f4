"""User errors: mistakes the user can fix, shown as one line (the file, line or key, and the fix), exit code 2.

Raise UserError (or one of its kinds: RecipeError, RecordError) for bad input; `tenfold`'s main() prints
`tenfold VERB: error: MESSAGE` and exits 2, with no traceback unless --debug or TENFOLD_DEBUG=1 is given.
Only UserError is shown so: any other exception (a ValueError from torch or transformers, a plain
FileNotFoundError or OSError) may be a bug and keeps its traceback. A write the user can fix (a full disk, no
permission) becomes a UserError where it happens (tenfold.io.write_error).
"""

from __future__ import annotations

import os


class UserError(ValueError):  # a ValueError, so callers that catch ValueError keep working
    pass


class RecipeError(UserError):
    """A recipe, suite or settings value is wrong: the message names the key and what is allowed."""


class RecordError(UserError):
    """A record (or a line of a JSONL file) is malformed."""


def debug_requested(argv: list[str]) -> bool:
    return "--debug" in argv or os.environ.get("TENFOLD_DEBUG", "") not in ("", "0")


def one_line(error: BaseException) -> str | None:
    """The error as the one line a user sees, or None if it is not a user error (a bug: show the traceback)."""
    if not isinstance(error, UserError):
        return None
    return " ".join(line.strip() for line in str(error).splitlines() if line.strip()) or type(error).__name__
