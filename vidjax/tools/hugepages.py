"""Does this host give vidjax's commands huge pages? ``python -m vidjax.tools.hugepages``

Every ``python -m vidjax.*`` command restarts itself once with ``GLIBC_TUNABLES=glibc.malloc.hugetlb=1``
(``vidjax.cli.use_huge_pages``); this one does too, then reports what the kernel did with a fresh malloc block:

    GLIBC_TUNABLES='glibc.malloc.hugetlb=1'; a fresh 64 MB malloc block has 62 MB in transparent huge pages

0 MB means 4 KB pages (``VIDJAX_HUGE_PAGES=0``, transparent huge pages set to ``never``, or not Linux).
"""

from __future__ import annotations

import ctypes
import os
import re
from pathlib import Path


def _anon_huge_kb() -> int:
    try:
        text = Path("/proc/self/smaps_rollup").read_text()
    except OSError:
        return 0
    m = re.search(r"AnonHugePages:\s+(\d+) kB", text)
    return int(m.group(1)) if m else 0


def huge_pages_in_use(mb: int = 64) -> int:
    """MB of transparent huge pages under a fresh ``mb`` MB malloc block of this process (0 off Linux)."""
    libc = ctypes.CDLL(None)
    libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
    libc.free.argtypes = [ctypes.c_void_p]
    before, block = _anon_huge_kb(), libc.malloc(mb << 20)
    if not block:
        return 0
    ctypes.memset(block, 1, mb << 20)  # first touch: the kernel backs the block now
    used = _anon_huge_kb() - before
    libc.free(block)
    return max(used, 0) // 1024


def main() -> None:
    print(f"GLIBC_TUNABLES={os.environ.get('GLIBC_TUNABLES', '')!r}; a fresh 64 MB malloc block has "
          f"{huge_pages_in_use()} MB in transparent huge pages")


if __name__ == "__main__":
    main()
