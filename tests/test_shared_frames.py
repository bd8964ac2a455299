"""The shared-memory frame ring between the pipeline and its segmentation process."""

import multiprocessing as mp
import queue
from collections import namedtuple

import numpy as np
import pytest

from ctc_live import shared_frames
from ctc_live.errors import CtcLiveError
from ctc_live.shared_frames import FrameReader, FrameWriter


def test_frames_pass_in_order_and_a_full_ring_refuses():
    writer = FrameWriter(mp.get_context("spawn"), (4, 5), slots=2)
    reader = FrameReader(writer.spec)
    try:
        frames = [np.full((4, 5), k, np.uint16) for k in range(3)]
        writer.put_nowait(frames[0], ("h", 0))
        writer.put_nowait(frames[1], ("h", 1))
        with pytest.raises(queue.Full):  # both slots in use: dropped, never waited for
            writer.put_nowait(frames[2], ("h", 2))
        slot, header, image = reader.get()
        assert header == ("h", 0) and np.array_equal(image, frames[0])
        reader.release(slot)
        writer.put(frames[2], ("h", 2), timeout=1.0)  # the released slot takes it
        for k in (1, 2):
            slot, header, image = reader.get()
            assert header == ("h", k) and np.array_equal(image, frames[k])
            reader.release(slot)
        writer.put_nowait(None)
        assert reader.get() is None
    finally:
        reader.close()
        writer.close()


def test_too_little_shared_memory_is_refused_clearly(monkeypatch):
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shared_frames.shutil, "disk_usage", lambda path: usage(64e6, 60e6, 4e6))
    with pytest.raises(CtcLiveError, match=r"needs 39 MB of shared memory .* 4 MB free"):
        FrameWriter(mp.get_context("spawn"), (480, 640), slots=64)
