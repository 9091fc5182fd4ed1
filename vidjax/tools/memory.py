"""Which host allocator do vidjax's commands get, and does it keep freed memory? ``python -m vidjax.tools.memory``

Every ``python -m vidjax.*`` command restarts itself once with the allocator ``VIDJAX_MALLOC`` picks
(``vidjax.cli.tune_memory``: jemalloc or tcmalloc when installed, else glibc with huge pages); this one does
too, then reports what a train step's scratch block meets, for example:

    allocator jemalloc (LD_PRELOAD=/usr/lib/x86_64-linux-gnu/libjemalloc.so.2); a fresh 64 MB block has 64 MB in
    transparent huge pages; a freed 256 MB block, allocated and written again, costs 0 page faults

With glibc the second figure is in the thousands (4 KB pages) or about 128 (2 MB pages): the kernel zeroes the
block again. With jemalloc or tcmalloc it is near 0: the memory was kept.
"""

from __future__ import annotations

import ctypes
import os
import re
import resource
from pathlib import Path

from vidjax.cli import preloaded_allocator


def _anon_huge_kb() -> int:
    try:
        text = Path("/proc/self/smaps_rollup").read_text()
    except OSError:
        return 0
    m = re.search(r"AnonHugePages:\s+(\d+) kB", text)
    return int(m.group(1)) if m else 0


def _libc() -> ctypes.CDLL:
    libc = ctypes.CDLL(None)  # malloc and free as the process resolves them: a preloaded allocator's
    libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
    libc.free.argtypes = [ctypes.c_void_p]
    return libc


def _touched_block(libc: ctypes.CDLL, mb: int) -> int:
    """malloc ``mb`` MB and write every byte (first touch: the kernel backs the block now); its address."""
    block = libc.malloc(mb << 20)
    if not block:
        raise MemoryError(f"malloc({mb} MB) failed")
    ctypes.memset(block, 1, mb << 20)
    return block


def huge_pages_in_use(mb: int = 64) -> int:
    """MB of transparent huge pages under a fresh ``mb`` MB malloc block of this process (0 off Linux)."""
    libc = _libc()
    before = _anon_huge_kb()
    block = _touched_block(libc, mb)
    used = _anon_huge_kb() - before
    libc.free(block)
    return max(used, 0) // 1024


def refault_count(mb: int = 256) -> int:
    """Minor page faults when a freed ``mb`` MB block is allocated and written again (as XLA's next step does)."""
    libc = _libc()
    libc.free(_touched_block(libc, mb))
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    block = _touched_block(libc, mb)
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
    libc.free(block)
    return faults


def main() -> None:
    name = preloaded_allocator()
    where = (f"{name} (LD_PRELOAD={os.environ['LD_PRELOAD']})" if name
             else f"glibc (GLIBC_TUNABLES={os.environ.get('GLIBC_TUNABLES', '')!r})")
    print(f"allocator {where}; a fresh 64 MB block has {huge_pages_in_use()} MB in transparent huge pages; "
          f"a freed 256 MB block, allocated and written again, costs {refault_count()} page faults")


if __name__ == "__main__":
    main()
