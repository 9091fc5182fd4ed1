"""The one command-line error wrapper: user errors become one line and exit status 2, bugs keep their traceback.

    def main(argv=None) -> int | None: ...
    if __name__ == "__main__":
        cli.run("vidjax.sample", main)

Also the commands' process setup: ``use_huge_pages`` (called by ``vidjax/__init__.py`` for ``python -m vidjax.*``).
"""

from __future__ import annotations

import os
import platform
import re
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


HUGE_PAGES = "glibc.malloc.hugetlb=1"
THP_SETTING = Path("/sys/kernel/mm/transparent_hugepage/enabled")


def use_huge_pages() -> None:
    """Restart this process (same interpreter, same command line) with glibc's malloc asking for huge pages.

    XLA's CPU runtime allocates each step's scratch memory afresh (hundreds of MB for a train step), and glibc
    maps large blocks straight from the kernel, so every step first-touches new 4 KB pages: a page fault each,
    and a TLB full of small pages under the matmuls. ``GLIBC_TUNABLES=glibc.malloc.hugetlb=1`` (glibc >= 2.35)
    has malloc mark those blocks ``MADV_HUGEPAGE``, so Linux backs them with 2 MB transparent huge pages: the
    float32 mid step of ``benchmarks/step_vs_torch.py`` took about 0.83x the time on this 2-core machine.
    glibc reads its tunables only at start-up, hence the restart (``os.execv``: same PID, same environment
    plus the tunable). Nothing happens when the tunable is already set, when ``VIDJAX_HUGE_PAGES=0``, or
    where it cannot help: not Linux with glibc >= 2.35, or transparent huge pages off (``never``) or already
    used for everything (``always``). Accelerators are unaffected; this is the host's memory.
    """
    tunables = os.environ.get("GLIBC_TUNABLES", "")
    if ("glibc.malloc.hugetlb" in tunables or os.environ.get("VIDJAX_HUGE_PAGES", "1") == "0"
            or sys.platform != "linux" or not sys.executable or not getattr(sys, "orig_argv", None)):
        return
    libc, version = platform.libc_ver()
    glibc = re.match(r"(\d+)\.(\d+)", version) if libc == "glibc" else None
    if not glibc or (int(glibc[1]), int(glibc[2])) < (2, 35) or "[madvise]" not in _read(THP_SETTING):
        return
    os.environ["GLIBC_TUNABLES"] = f"{tunables}:{HUGE_PAGES}" if tunables else HUGE_PAGES
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, sys.orig_argv)


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""
