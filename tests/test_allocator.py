"""toydiff.infra.allocator: freed tensors' pages are reused (fewer page faults), the numbers are unchanged."""
import subprocess
import sys

import pytest

from toydiff.infra import allocator

# a 4 MiB tensor allocated, written and freed 200 times after a warm-up: 1024 minor page faults each (a fresh mmap)
# unless the pages are kept
_FAULTS = """
import ctypes, resource, sys, torch
from toydiff.infra.allocator import keep_freed_memory
on = sys.argv[1] == "on" and keep_freed_memory()
if not on:               # glibc's default threshold, held fixed (its adaptive raise would make the count vary)
    ctypes.CDLL("libc.so.6").mallopt(-3, 128 << 10)
x = torch.ones(1 << 20)
for _ in range(100):                  # warm-up: the heap grows to its size
    x = x + 1.0
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(200):
    x = x + 1.0
after = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
torch.manual_seed(0)
print(on, after - before, float(x.sum()), torch.randn(64, 64).matmul(torch.randn(64, 64)).sum().item())
"""


def _run(mode: str) -> list[str]:
    return subprocess.run([sys.executable, "-c", _FAULTS, mode], check=True, capture_output=True,
                          text=True).stdout.split()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_freed_pages_are_reused_and_numbers_unchanged():
    off, on = _run("off"), _run("on")
    assert off[0] == "False" and on[0] == "True"
    assert int(off[1]) > 100 * 1000 > 1000 * int(on[1])      # kept: (almost) no new page once the heap has grown
    assert on[2:] == off[2:]                                      # the same bits


def test_idempotent():
    assert allocator.keep_freed_memory() is allocator.keep_freed_memory()
