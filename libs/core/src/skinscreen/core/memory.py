"""Memory for decoding photos: a per-process budget, and freed memory handed back to the system.

A 7000 x 7000 PNG is 160 KB on the wire and 147 MB once decoded; sixteen of them at once
took a worker to 12 GB. Each process that decodes photos holds a `DecodeBudget` of bytes:
a decode takes its estimated peak (`skinscreen.core.imaging.decode_cost`) before it starts
and gives it back when it ends, waiting its turn, first come first served, while the budget
is spent. A decode larger than the whole budget waits until nothing else decodes, then runs
alone.

glibc keeps what a process freed: large buffers come from mmap only above a threshold that
grows, by default, to the largest buffer freed so far (up to 32 MB), so after one burst of
big photos every later decode's 16 MB blocks (Pillow's) land in the heap and its arenas,
which the process keeps (9.9 GB after a burst). `tune_malloc` fixes the threshold, so those
blocks go back to the system when freed, and `DecodeBudget` trims the heap
(`malloc_trim`) when its last decode ends, once the decodes since the last trim held
TRIM_AFTER_BYTES together: after every large photo, but not after every small one (a trim
walks the whole heap; in a busy worker it cost about as much as a small photo's resize).
"""

from __future__ import annotations

import collections
import ctypes
import ctypes.util
import functools
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Final

MIB: Final = 1024 * 1024
# Buffers from this size up are mapped on their own and unmapped when freed (M_MMAP_THRESHOLD).
MMAP_THRESHOLD: Final = 1 * MIB
_M_MMAP_THRESHOLD: Final = -3
# Bytes the decodes since the last trim must have held before the next idle moment trims.
TRIM_AFTER_BYTES: Final = 64 * MIB


@functools.cache
def _libc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        libc.malloc_trim, libc.mallopt  # noqa: B018  (glibc only)
    except (OSError, AttributeError, TypeError):
        return None
    return libc


def tune_malloc() -> bool:
    """Fix glibc's mmap threshold (see the module's docstring); False where there is no glibc."""
    libc = _libc()
    return libc is not None and bool(libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD))


def trim() -> None:
    """Hand the heap's and arenas' free memory back to the system (glibc; elsewhere nothing)."""
    libc = _libc()
    if libc is not None:
        libc.malloc_trim(0)


class DecodeBudgetTimeoutError(TimeoutError):
    """No room in the budget within the wait allowed; `retry_after_s`: when to try again."""

    def __init__(self, needed: int, budget: int, waited_s: float) -> None:
        self.retry_after_s = max(1, round(waited_s))
        super().__init__(
            f"decoding needs {needed // MIB} MiB of the {budget // MIB} MiB decode memory budget "
            f"(DECODE_MEMORY_BUDGET_MB), still in use by other photos after {waited_s:.0f} s"
        )


class DecodeBudget:
    """Bytes of memory that the photos this process decodes at once may take together."""

    def __init__(self, budget_bytes: int) -> None:
        if budget_bytes <= 0:
            raise ValueError(f"a decode memory budget must be positive, not {budget_bytes}")
        self.budget = budget_bytes
        self._free = budget_bytes
        self._condition = threading.Condition()
        self._queue: collections.deque[object] = collections.deque()
        self.peak_in_use = 0
        self._held_since_trim = 0
        # Trims so far (tests read it).
        self.trims = 0

    @property
    def in_use(self) -> int:
        return self.budget - self._free

    @property
    def waiting(self) -> int:
        """Decodes waiting for their share."""
        return len(self._queue)

    @contextmanager
    def hold(self, cost: int, timeout_s: float | None = None) -> Iterator[None]:
        """Hold `cost` bytes (at most the whole budget) while the block runs; waits first come
        first served, at most `timeout_s` (None: as long as it takes), then
        DecodeBudgetTimeoutError."""
        cost = max(0, min(cost, self.budget))
        turn = object()
        started = time.monotonic()
        with self._condition:
            self._queue.append(turn)
            try:
                ready = self._condition.wait_for(
                    lambda: self._queue[0] is turn and self._free >= cost, timeout_s
                )
            finally:
                self._queue.remove(turn)
                # The next in line may fit now, or the head may have changed.
                self._condition.notify_all()
            if not ready:
                raise DecodeBudgetTimeoutError(cost, self.budget, time.monotonic() - started)
            self._free -= cost
            self.peak_in_use = max(self.peak_in_use, self.in_use)
        try:
            yield
        finally:
            with self._condition:
                self._free += cost
                self._held_since_trim += cost
                due = self._free == self.budget and self._held_since_trim >= TRIM_AFTER_BYTES
                if due:
                    self._held_since_trim = 0
                    self.trims += 1
                self._condition.notify_all()
            if due:
                trim()
