"""The one command-line error wrapper: user errors become one line and exit status 2, bugs keep their traceback.

    def main(argv=None) -> int | None: ...
    if __name__ == "__main__":
        cli.run("vidjax.sample", main)

Also the commands' process setup: ``tune_memory`` (called by ``vidjax/__init__.py`` for ``python -m vidjax.*``).
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


# --------------------------------------------------------------------------------------
# Process setup: the host memory allocator (CPU hosts; accelerators are unaffected)
# --------------------------------------------------------------------------------------

MALLOC_CHOICES = ("auto", "jemalloc", "tcmalloc", "glibc", "off")
MALLOC_LIBS = {"jemalloc": "libjemalloc.so.2", "tcmalloc": "libtcmalloc_minimal.so.4"}  # "auto" tries this order
MALLOC_PACKAGES = {"jemalloc": "libjemalloc2", "tcmalloc": "libtcmalloc-minimal4"}  # Debian / Ubuntu
LIB_DIRS = ("/usr/lib/x86_64-linux-gnu", "/usr/lib/aarch64-linux-gnu", "/usr/lib64", "/usr/lib", "/usr/local/lib",
            f"{sys.prefix}/lib")
JEMALLOC_CONF = "thp:always,retain:true,dirty_decay_ms:-1,muzzy_decay_ms:-1"  # keep freed memory, in huge pages
HUGE_PAGES = "glibc.malloc.hugetlb=1"
THP_SETTING = Path("/sys/kernel/mm/transparent_hugepage/enabled")


def find_malloc_lib(name: str) -> Path | None:
    """The shared library of allocator ``name`` ("jemalloc" or "tcmalloc") in the usual folders, or None.

    Only an ELF file counts: anything else in ``LD_PRELOAD`` makes the loader complain in every child process."""
    for folder in LIB_DIRS:
        path = Path(folder) / MALLOC_LIBS[name]
        try:
            with path.open("rb") as f:
                if f.read(4) == b"\x7fELF":
                    return path
        except OSError:
            continue
    return None


def preloaded_allocator() -> str | None:
    """The allocator this process runs with when ``LD_PRELOAD`` holds jemalloc or tcmalloc, else None."""
    preload = os.environ.get("LD_PRELOAD", "")
    return next((name for name in MALLOC_LIBS if f"lib{name}" in preload), None)


def tune_memory() -> None:
    """Restart this process once (same interpreter, same command line) with a host allocator that suits XLA.

    XLA's CPU runtime allocates each step's scratch memory as one block (763 MB for the float32 mid step of
    ``benchmarks/step_vs_torch.py``) and frees it after the step. glibc's malloc maps a block that large
    straight from the kernel and unmaps it on free, so every step the kernel zeroes fresh pages for it: a
    quarter of the process's CPU time in ``clear_page_erms`` under ``perf``, about 0.3 s of system time per
    0.9 s step on a 2-core host. ``VIDJAX_MALLOC`` picks what to do:

    - ``auto`` (default): preload jemalloc (with ``MALLOC_CONF`` keeping freed memory, in transparent huge
      pages) or else tcmalloc, when the host has one (Debian/Ubuntu: ``apt install libjemalloc2``); both keep
      freed memory, so the next step reuses it without a page fault. Without either, as ``glibc``.
    - ``jemalloc`` / ``tcmalloc``: that one, or a one-line error when it is not installed.
    - ``glibc``: glibc's malloc with ``GLIBC_TUNABLES=glibc.malloc.hugetlb=1`` (glibc >= 2.35, transparent huge
      pages on ``madvise``): the blocks are still zeroed every step, but in 2 MB pages, far fewer faults.
    - ``off``: nothing.

    Allocators are chosen at start-up, hence the restart (``os.execv``: same PID, the environment plus
    ``LD_PRELOAD`` and ``MALLOC_CONF``, or ``GLIBC_TUNABLES``; a value the user set is kept). Nothing happens
    off Linux, or when the process already runs with jemalloc, tcmalloc or the hugetlb tunable.
    """
    choice = os.environ.get("VIDJAX_MALLOC", "auto")
    if choice not in MALLOC_CHOICES:
        fail("vidjax", f"VIDJAX_MALLOC={choice!r}: expected one of {', '.join(MALLOC_CHOICES)}")
    tunables = os.environ.get("GLIBC_TUNABLES", "")
    if (choice == "off" or sys.platform != "linux" or not sys.executable or not getattr(sys, "orig_argv", None)
            or preloaded_allocator() or "glibc.malloc.hugetlb" in tunables):
        return
    for name in MALLOC_LIBS if choice == "auto" else [choice] if choice in MALLOC_LIBS else []:
        lib = find_malloc_lib(name)
        if lib is None and choice == name:
            fail("vidjax", f"VIDJAX_MALLOC={name}: {MALLOC_LIBS[name]} is not in {', '.join(LIB_DIRS)}; install "
                           f"it (Debian/Ubuntu: apt install {MALLOC_PACKAGES[name]}) or set VIDJAX_MALLOC=auto")
        if lib:
            preload = os.environ.get("LD_PRELOAD", "")
            os.environ["LD_PRELOAD"] = f"{lib}:{preload}" if preload else str(lib)
            if name == "jemalloc":
                os.environ.setdefault("MALLOC_CONF", JEMALLOC_CONF)
            return _restart()
    libc, version = platform.libc_ver()
    glibc = re.match(r"(\d+)\.(\d+)", version) if libc == "glibc" else None
    if not glibc or (int(glibc[1]), int(glibc[2])) < (2, 35) or "[madvise]" not in _read(THP_SETTING):
        return
    os.environ["GLIBC_TUNABLES"] = f"{tunables}:{HUGE_PAGES}" if tunables else HUGE_PAGES
    _restart()


def _restart() -> None:
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, sys.orig_argv)


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""
