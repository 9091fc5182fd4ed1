"""What the user got wrong, as opposed to what vidjax got wrong.

Every error caused by bad input (a config field, a file, a flag) is a :class:`UserError`. The command
lines (:func:`vidjax.cli.run`) print its message on one line and exit with status 2; any other
exception is a bug and keeps its traceback. Messages name the field or file and what was expected.

The subclasses also derive from the built-in exception a caller would expect (``ValueError``,
``FileNotFoundError``), so ``except ValueError`` keeps working.
"""

from __future__ import annotations


class UserError(Exception):
    """Bad input from the user; the message says which field or file, and what was expected."""


class ConfigError(UserError, ValueError):
    """A config field (or command-line flag) with a value that cannot work."""


class InputError(UserError, ValueError):
    """A data, caption, prompt or weights file whose content is not what was expected."""


class MissingFileError(UserError, FileNotFoundError):
    """A file or folder the user named does not exist or cannot be read."""


class OutputError(UserError, OSError):
    """An output path that cannot be written (read-only folder, a file where a folder should be, ...)."""
