"""Settings of the pipeline's processes for real-time work."""

from __future__ import annotations

import gc


def settle_garbage_collector() -> None:
    """Collect once, then exempt everything alive from later full collections.

    A full collection stops every thread of the process while it walks all objects: after
    the start-up imports (torch, Qt bindings, the model) that took 50–260 ms, long enough for
    the camera thread to fall behind and skip frames. Objects made during the run are still
    collected.
    """
    gc.collect()
    gc.freeze()
