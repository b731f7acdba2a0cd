"""How the host's C allocator gives memory to XLA:CPU, set once per process.

XLA:CPU takes every buffer of a step (its temporary arena of intermediates, each output) from the
C library's `malloc`. glibc serves requests above its mmap threshold (128 KiB at first, at most 32
MiB) with a fresh `mmap` and returns them with `munmap` when freed, and the per-thread arenas
that XLA's worker threads allocate from give their memory back to the system as they shrink. So
every step of a convolutional network maps new pages for its large buffers, and the kernel
zero-fills each page on first touch: a jitted y * 2 + 1 over 128 MB took 70 ms that way and 13
ms with the memory kept (2-core AMD EPYC Zen 3; the memory moved at 3.8 against 21 GB/s), and
writing the 115 MB im2col matrix of a 64x28x28x64 3x3 convolution 200-290 against 36-50 ms.
`keep_freed_memory` has glibc serve every request from one heap (no mmap, one arena) and keep
freed memory for reuse instead of returning it: the same steps then reuse the same pages. The
price is that a process holds on to its peak host memory until it exits, which suits a training
run. Other C libraries are left as they are. It must run before JAX starts its threads (programs
call it through `jaxgen.training.configure_jax`, first in `main`).
"""

import ctypes
import ctypes.util
import os
import sys

# glibc's mallopt parameters (malloc.h).
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_M_ARENA_MAX = -8
_KEEP = 2**31 - 1  # the largest trim threshold an int holds: freed memory is never trimmed
VARIABLE = "JAXGEN_KEEP_FREED_MEMORY"  # "0" leaves the allocator as it is

_done = []


def _glibc():
  """glibc's handle, or None on other systems and C libraries."""
  if not sys.platform.startswith("linux"):
    return None
  try:
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    libc.gnu_get_libc_version  # glibc only
    return libc
  except (OSError, AttributeError):
    return None


def keep_freed_memory() -> bool:
  """Has glibc serve large requests from its heap and keep freed memory (see the module's
  docstring); True when that is in force. Idempotent; $JAXGEN_KEEP_FREED_MEMORY=0 turns it off."""
  if _done:
    return _done[0]
  libc = None if os.environ.get(VARIABLE, "1") == "0" else _glibc()
  ok = bool(libc) and all(libc.mallopt(param, value) for param, value in (
      (_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, _KEEP), (_M_ARENA_MAX, 1)))
  _done.append(ok)
  return ok


def kept() -> bool:
  """Whether `keep_freed_memory` is in force in this process."""
  return bool(_done and _done[0])
