"""keep_freed_memory: large buffers come from glibc's heap and are reused, not mapped anew."""
import os
import subprocess
import sys

import pytest

from jaxgen import host_memory

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Allocates and frees a 64 MiB buffer twice and prints glibc's count of mmapped blocks
# (mallinfo2().hblks) that each adds while held, with the setting first when asked.
_PROBE = r"""
import ctypes, sys
from jaxgen import host_memory
print(host_memory.keep_freed_memory() if sys.argv[1] == "1" else None)
libc = ctypes.CDLL("libc.so.6")
class Info(ctypes.Structure):
  _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd",
              "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]
libc.mallinfo2.restype = Info
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
for _ in range(2):
  before = libc.mallinfo2().hblks
  p = libc.malloc(64 << 20)
  ctypes.memset(p, 1, 64 << 20)
  print(libc.mallinfo2().hblks - before, libc.mallinfo2().arena >= 64 << 20)
  libc.free(p)
"""


def _probe(setting, env=None):
  out = subprocess.run([sys.executable, "-c", _PROBE, setting], cwd=ROOT, text=True,
                       capture_output=True, check=True, env={**os.environ, **(env or {})})
  return out.stdout.split("\n")[:3]


@pytest.mark.skipif(host_memory._glibc() is None, reason="glibc only")
def test_large_buffers_come_from_the_heap_once_set():
  on, off = _probe("1"), _probe("0")
  # default glibc: each 64 MiB buffer is its own mapping, not in the heap
  assert off == ["None", "1 False", "1 False"]
  # set: no new mapping, the heap holds them
  assert on == ["True", "0 True", "0 True"]


@pytest.mark.skipif(host_memory._glibc() is None, reason="glibc only")
def test_the_variable_turns_it_off():
  out = _probe("1", {host_memory.VARIABLE: "0"})
  assert out == ["False", "1 False", "1 False"]
