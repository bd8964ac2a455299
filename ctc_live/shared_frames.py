"""Frames handed to another process through shared memory.

The writer copies each frame into a free slot of a shared-memory ring and sends the slot's
number with a small header over a pipe; the reader hands the slot back when it is done.
Pipes, not multiprocessing queues: a queue's feeder thread would take the interpreter lock
from the writer's process for every frame. With no free slot the writer's ``put_nowait``
raises ``queue.Full``, like the bounded queue it stands in for.
"""

from __future__ import annotations

import mmap
import os
import queue
import shutil
import time
from dataclasses import dataclass
from multiprocessing import shared_memory
from multiprocessing.connection import Connection

import numpy as np

from ctc_live.errors import CtcLiveError


@dataclass(frozen=True)
class RingSpec:
    """What a process needs to attach to the ring (picklable)."""

    shm_name: str
    shape: tuple[int, int]
    slots: int
    ready: Connection  # writer → reader: (slot, header) or None at the end
    free: Connection  # reader → writer: slot numbers


SHM_DIR = "/dev/shm"
PAGE_BYTES = mmap.PAGESIZE


def create_shared_memory(nbytes: int, what: str) -> shared_memory.SharedMemory:
    """A new block of ``nbytes``, its pages already mapped (see :func:`map_pages`); refused
    clearly where the shared-memory filesystem is too small: the block would be created
    anyway and the process killed (SIGBUS) on first use (e.g. Docker's default 64 MB
    /dev/shm)."""
    if os.path.isdir(SHM_DIR):
        free = shutil.disk_usage(SHM_DIR).free
        if free < nbytes:
            raise CtcLiveError(
                f"{what} needs {nbytes / 1e6:.0f} MB of shared memory but {SHM_DIR} has "
                f"{free / 1e6:.0f} MB free (in Docker, run with e.g. --shm-size=512m)"
            )
    block = shared_memory.SharedMemory(create=True, size=nbytes)
    np.ndarray((block.size,), np.uint8, buffer=block.buf).fill(0)
    return block


def map_pages(block: shared_memory.SharedMemory) -> None:
    """Touch one byte of every page of a block attached by this process. Pages are mapped on
    first touch, and in this VM each first touch costs microseconds: a frame's 150 pages
    added about a millisecond to each of the first frames through a ring, which made the
    first second of every run fall behind."""
    int(np.ndarray((block.size,), np.uint8, buffer=block.buf)[::PAGE_BYTES].sum())


class FrameWriter:
    """The writing end; create it, pass ``spec`` to the reading process."""

    def __init__(self, ctx, shape: tuple[int, int], slots: int):
        self._shm = create_shared_memory(slots * int(np.prod(shape)) * 2,
                                         f"a ring of {slots} frames")
        self._slots = np.ndarray((slots, *shape), np.uint16, buffer=self._shm.buf)
        ready_r, self._ready = ctx.Pipe(duplex=False)
        self._free, free_w = ctx.Pipe(duplex=False)
        self.spec = RingSpec(self._shm.name, tuple(shape), slots, ready_r, free_w)
        self._available = list(range(slots))

    def put_nowait(self, image: np.ndarray | None, header=None) -> None:
        """Send a frame (``None``: the end of the stream); ``queue.Full`` when no slot is free."""
        if image is None:
            self._ready.send(None)
            return
        while self._free.poll(0):
            self._available.append(self._free.recv())
        if not self._available:
            raise queue.Full
        slot = self._available.pop()
        self._slots[slot] = image
        self._ready.send((slot, header))

    def put(self, image: np.ndarray | None, header=None, timeout: float | None = None) -> None:
        """Like ``put_nowait``, waiting up to ``timeout`` s for a free slot."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            try:
                return self.put_nowait(image, header)
            except queue.Full:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    raise
                self._free.poll(left)

    def close(self) -> None:
        self._slots = None
        self._shm.close()
        self._shm.unlink()


class FrameReader:
    """The reading end, in the other process: ``get()`` → (slot, header, image view) or
    None at the end of the stream; ``release(slot)`` once the view is no longer used."""

    def __init__(self, spec: RingSpec):
        self._spec = spec
        self._shm = shared_memory.SharedMemory(name=spec.shm_name)
        map_pages(self._shm)
        self._slots = np.ndarray((spec.slots, *spec.shape), np.uint16, buffer=self._shm.buf)

    def get(self):
        item = self._spec.ready.recv()
        if item is None:
            return None
        slot, header = item
        return slot, header, self._slots[slot]

    def release(self, slot: int) -> None:
        self._spec.free.send(slot)

    def close(self) -> None:
        self._slots = None  # the views must go before the memory they view
        self._shm.close()
