"""Process-wide allocator settings for a partitioned export run by the ``rowstream`` command.

N parts at once mean N ADBC reader threads and N Parquet writer threads, each allocating
and freeing megabytes of buffers. Arrow's own allocations stay small (about 13 MB at the peak
for 4 jobs); what grows is the memory the allocators keep for each thread:

- pyarrow's C++ default pool (the one the Parquet writer's pages and encoders use) is chosen
  once, when pyarrow is imported, from ``ARROW_DEFAULT_MEMORY_POOL``: so it is set before
  pyarrow loads. The system pool (glibc malloc) shares glibc's arenas with the ADBC driver,
  which allocates its batches with malloc anyway, instead of a second allocator's caches;
- glibc gives each thread that meets contention an arena of its own, up to 8 per core, and
  keeps freed memory in each: ``mallopt(M_ARENA_MAX, 2)`` caps them. glibc reads
  ``MALLOC_ARENA_MAX`` only when the process starts, so it is set through ``mallopt`` at run
  time; glibc settles the cap when it first needs more than 8 arenas, so a call before the
  parts start is in time.

Measured: ``rowstream export --jobs 4`` to Parquet, 1M orders rows, peak RSS over 3 runs each
on a busy 2-core machine: jemalloc (the command's default) 188-213 MB, median 210; system
pool and 2 arenas 182-191 MB, median 185; a single export is the same either way (144 MB).

These change the whole process, so only the command's entry point calls them (the library
never does: a program that calls ``rowstream.export(jobs=N)`` owns its allocators; it can
start with ``ARROW_DEFAULT_MEMORY_POOL=system MALLOC_ARENA_MAX=2`` in its environment).
"""

from __future__ import annotations

import ctypes
import os
import sys

__all__ = ["ARROW_POOL_VARIABLE", "JOBS_ARROW_POOL", "JOBS_MALLOC_ARENAS", "lean_for_jobs"]

ARROW_POOL_VARIABLE = "ARROW_DEFAULT_MEMORY_POOL"
#: pyarrow's pool for a partitioned export (the module docstring says why).
JOBS_ARROW_POOL = "system"
#: glibc malloc arenas for a partitioned export.
JOBS_MALLOC_ARENAS = 2
# <malloc.h>: mallopt's parameter for the arena cap.
_M_ARENA_MAX = -8


def lean_for_jobs(*, user_pool: str | None) -> list[str]:
    """Set the allocators for a partitioned export; return what was set, for a test or a log.

    ``user_pool``: the ``ARROW_DEFAULT_MEMORY_POOL`` the process was started with, if any; the
    user's choice stands. Each setting is skipped where it cannot apply (pyarrow loaded
    already, a libc that is not glibc).
    """
    done = []
    if user_pool is None and "pyarrow" not in sys.modules:
        os.environ[ARROW_POOL_VARIABLE] = JOBS_ARROW_POOL
        done.append(f"{ARROW_POOL_VARIABLE}={JOBS_ARROW_POOL}")
    if limit_malloc_arenas(JOBS_MALLOC_ARENAS):
        done.append(f"M_ARENA_MAX={JOBS_MALLOC_ARENAS}")
    return done


def limit_malloc_arenas(arenas: int) -> bool:
    """Cap glibc's malloc arenas at ``arenas``; False (nothing done) on any other libc."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None)  # the libc this process runs on
        libc.gnu_get_libc_version  # noqa: B018  (glibc only: musl has no such function)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return bool(mallopt(_M_ARENA_MAX, arenas))
