"""The one command-line error wrapper: user errors become one line and exit status 2, bugs keep their traceback.

    def main(argv=None) -> int | None: ...
    if __name__ == "__main__":
        cli.run("vidjax.sample", main)
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path

from vidjax.errors import OutputError, UserError


def fail(prog: str, message: object, status: int = 2) -> None:
    """Print ``prog: error: message`` on one line to stderr and exit with ``status``."""
    text = " ".join(str(message).split())
    print(f"{prog}: error: {text}", file=sys.stderr)
    sys.stderr.flush()
    raise SystemExit(status)


def run(prog: str, main: Callable[..., int | None], argv: list[str] | None = None) -> None:
    """Call ``main(argv)``; a :class:`~vidjax.errors.UserError` prints one line and exits 2."""
    try:
        status = main(argv)
    except UserError as e:
        fail(prog, e)
    raise SystemExit(status or 0)


def check_writable(path: str | Path, *, what: str = "output") -> Path:
    """Fail early (before any compute) when ``path`` (a file or folder to be written) cannot be created.

    The nearest existing ancestor must be a writable folder; an existing ``path`` must be writable too.
    """
    path = Path(path)
    probe = path
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if probe != path and not probe.is_dir():
        raise OutputError(f"{what} {path}: {probe} is a file, not a folder")
    if not os.access(probe, os.W_OK):
        raise OutputError(f"{what} {path}: {probe} is not writable")
    return path
