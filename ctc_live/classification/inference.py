"""Running a trained classifier: one-shot ``predict`` and the live batching stage."""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
import warnings
from collections.abc import Hashable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ctc_live.classification.modelfile import ModelFileError, load_model
from ctc_live.classification.networks import fuse_batchnorm, prepare
from ctc_live.classification.quantisation import quantise
from ctc_live.errors import CtcLiveError

log = logging.getLogger(__name__)

# Largest number of crops sent through the network at once by predict(); bounds memory.
CHUNK = 512
PRECISIONS = ("float32", "int8")


@contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Use ``n`` intra-op threads (0: leave as is) and restore the previous count after."""
    before = torch.get_num_threads()
    if n:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise CtcLiveError("classifier device 'cuda' requested but no CUDA GPU is available")
    if device not in ("cpu", "cuda"):
        raise CtcLiveError(f"unknown classifier device {device!r}: expected auto, cpu or cuda")
    return torch.device(device)


def int8_device(device: str) -> torch.device:
    """int8 runs on the CPU only: "auto" means the CPU, an explicit "cuda" is refused."""
    if device == "cuda":
        raise CtcLiveError("classifier precision int8 runs on the CPU only: use device cpu "
                           "(or auto), or precision float32 on the GPU")
    return resolve_device("cpu" if device == "auto" else device)


class Classifier:
    """A network ready for inference, in eval mode.

    float32: BatchNorm folded, channels-last, on ``device``. int8: statically quantised on the
    CPU from ``calibration`` (prepared crops, see :mod:`~ctc_live.classification.quantisation`).
    """

    def __init__(self, model: nn.Module, card: dict, device: str = "auto",
                 precision: str = "float32", calibration: torch.Tensor | None = None):
        if precision not in PRECISIONS:
            raise CtcLiveError(f"unknown classifier precision {precision!r}: expected "
                               f"{' or '.join(PRECISIONS)}")
        self.card = card
        self.precision = precision
        self.input_size = int(card["input_size"])
        self.normalisation = card["normalisation"]
        self.threshold = float(card["threshold"])
        if precision == "int8":
            if calibration is None:
                raise CtcLiveError("int8 needs calibration crops to quantise the network")
            self.device = int8_device(device)
            self.model = quantise(model, calibration, self.normalisation)
        else:
            self.device = resolve_device(device)
            self.model = fuse_batchnorm(model.eval()).to(self.device)
            self.model = self.model.to(memory_format=torch.channels_last)
        self._forward = _traced(self.model, self.input_size, self.normalisation, self.device)

    def predict(self, crops: np.ndarray | list[np.ndarray]) -> np.ndarray:
        """Crops (N, h, w) float or integer, or a list of crops of any sizes → P(CTC), (N,)."""
        x = prepare(crops, self.input_size, self.normalisation)
        out = np.empty(len(x), dtype=np.float32)
        with torch.inference_mode():
            for start in range(0, len(x), CHUNK):
                batch = x[start:start + CHUNK].to(self.device)
                batch = batch.contiguous(memory_format=torch.channels_last)
                out[start:start + len(batch)] = self._forward(batch).cpu().numpy()
        return out

    def features(self, crops: np.ndarray | list[np.ndarray]) -> np.ndarray:
        """The penultimate-layer features (for t-SNE maps); float32 only."""
        if self.precision != "float32":
            raise CtcLiveError("classifier features need the float32 network: load the model "
                               "with precision float32")
        x = prepare(crops, self.input_size, self.normalisation)
        with torch.inference_mode():
            return np.concatenate([
                self.model.features(x[s:s + CHUNK].to(self.device)).cpu().numpy()
                for s in range(0, max(len(x), 1), CHUNK)
            ]) if len(x) else np.zeros((0, 0), np.float32)


class _PCtc(nn.Module):
    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.model(x).float(), dim=1)[:, 1]


def _traced(model: nn.Module, size: int, normalisation: dict, device: torch.device):
    """network + softmax → P(CTC) as a frozen TorchScript graph. It runs without the Python
    interpreter lock (the live pipeline's other threads keep it) and without the per-module
    Python calls, which cost more than the compact network's arithmetic on small batches."""
    example = prepare(np.zeros((2, size, size), np.float32), size, normalisation).to(device)
    with torch.inference_mode(), warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        return torch.jit.freeze(torch.jit.trace(_PCtc(model).eval(), example))


def load_classifier(path: str | Path, device: str = "auto",
                    precision: str = "float32") -> Classifier:
    model, card, calibration = load_model(Path(path))
    if precision == "int8" and calibration is None:
        raise ModelFileError(
            f"{path}: no calibration crops in this model file, and int8 needs them; retrain "
            "with `ctc-live train` (which stores them), add crops of its training data with "
            f"`ctc-live calibrate --model {path} --data TRAINING_DATA`, or use precision "
            "float32"
        )
    log.info("classifier %s: %s, input %d px, threshold %.2f, %s", path, card["architecture"],
             card["input_size"], card["threshold"], precision)
    return Classifier(model, card, device, precision, calibration)


@dataclass(slots=True)
class Classified:
    key: Hashable
    p_ctc: float
    submitted_ns: int
    done_ns: int
    batch_size: int


@dataclass
class BatchStats:
    crops: int = 0
    batches: int = 0
    dropped_in: int = 0     # submit() found the input queue full
    dropped_out: int = 0    # the consumer did not keep up with results
    batch_ns: list[int] = field(default_factory=list)


# The batch window by the classifier's device. On the CPU each network call costs 1-2 ms of
# CPU beyond its crops, scarce on the 2-core rig at 200 fps; on a GPU it costs the host
# little, and the shorter window is latency saved (docs/measurements.md, stop 28).
DEFAULT_WAIT_MS = {"cpu": 10.0, "cuda": 2.0}


def default_wait_ms(classifier) -> float:
    """The batch window for a classifier's device; the CPU's for a predictor without one."""
    device = getattr(classifier, "device", None)
    return DEFAULT_WAIT_MS["cuda" if device is not None and device.type == "cuda" else "cpu"]


class BatchClassifier:
    """A thread that batches crops from many frames and classifies them.

    A batch closes when it holds ``max_batch`` crops or when its oldest crop has waited
    ``max_wait_ms`` (unset: by the classifier's device, ``default_wait_ms``), so latency
    stays bounded at low rates and throughput high at high ones.
    ``submit`` never blocks: a full input queue drops the crop and counts it; results go to
    ``results`` as one list of :class:`Classified` per batch (bounded; pass your own queue to
    share one, e.g. a decider's inbox), and a full results queue also counts its drops.
    ``threads`` sets torch's CPU threads when the stage starts (0 leaves them); ``nice``
    lowers this thread's CPU priority (Linux; 0 leaves it).

    Every put on a queue someone waits on wakes that thread: this thread sleeps out its
    batch window instead of waiting on the inbox crop by crop, and hands each batch on in
    one put, so a batch costs two wake-ups, not two per crop.
    """

    def __init__(self, classifier: Classifier, max_batch: int = 64,
                 max_wait_ms: float | None = None,
                 queue_size: int = 1024, threads: int = 1,
                 results: queue.Queue | None = None, nice: int = 0, lossless: bool = False):
        self.classifier = classifier
        # Lossless (a replay at full speed): ``submit`` waits for room instead of dropping,
        # which holds the stream back to the classifier's pace.
        self.lossless = lossless
        self.threads = threads
        self.nice = nice
        self.max_batch = max_batch
        if max_wait_ms is None:
            max_wait_ms = default_wait_ms(classifier)
        self.max_wait_ns = int(max_wait_ms * 1e6)
        self.inbox: queue.Queue = queue.Queue(queue_size)
        self.results: queue.Queue = results if results is not None else queue.Queue(queue_size)
        self.stats = BatchStats()
        self._stop = threading.Event()
        self._draining = threading.Event()
        self._wake = threading.Event()  # stop() or flush(): the batch window ends now
        self._thread = threading.Thread(target=self._run, name="classifier", daemon=True)

    def start(self) -> BatchClassifier:
        log.info("classifier batches up to %d crops, waiting at most %g ms",
                 self.max_batch, self.max_wait_ns / 1e6)
        self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """Stop now; crops still queued are left unclassified."""
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout)

    def drain(self, timeout: float = 30.0) -> None:
        """Classify every crop already submitted, then stop."""
        self._draining.set()
        self._thread.join(timeout)
        self._stop.set()

    def flush(self) -> None:
        """Close the open batch now, without the rest of its window: the crops submitted so
        far are due (their cell is leaving the field undecided, and its pulse waits)."""
        self._wake.set()

    def submit(self, key: Hashable, crop: np.ndarray) -> bool:
        item = (key, crop, time.monotonic_ns())
        while True:
            try:
                self.inbox.put(item, block=self.lossless, timeout=0.1)
                return True
            except queue.Full:
                # Lossless waits for room only while this thread can make it: a stopped or
                # failed classifier would otherwise hold the stream for ever.
                if not (self.lossless and self._thread.is_alive() and not self._stop.is_set()):
                    self.stats.dropped_in += 1
                    return False

    def _run(self) -> None:
        if self.nice:
            lower_thread_priority(self.nice)
        if self.threads:
            torch.set_num_threads(self.threads)  # process-wide: torch runs only here live
        while not self._stop.is_set():
            try:
                first = self.inbox.get(timeout=0.05)
            except queue.Empty:
                if self._draining.is_set():
                    return
                continue
            batch = [first]
            left = (first[2] + self.max_wait_ns - time.monotonic_ns()) / 1e9
            if left > 0 and self.inbox.qsize() < self.max_batch - 1:
                self._wake.wait(left)
            if not self._stop.is_set():
                self._wake.clear()
            while len(batch) < self.max_batch:
                try:
                    batch.append(self.inbox.get_nowait())
                except queue.Empty:
                    break
            self._classify(batch)

    def _classify(self, batch: list) -> None:
        start = time.monotonic_ns()
        crops = [c for _, c, _ in batch]
        same = all(c.shape == crops[0].shape for c in crops)
        p = self.classifier.predict(np.stack(crops) if same else crops)
        done = time.monotonic_ns()
        self.stats.batches += 1
        self.stats.crops += len(batch)
        self.stats.batch_ns.append(done - start)
        del self.stats.batch_ns[:-1000]
        results = [Classified(key, float(pi), submitted, done, len(batch))
                   for (key, _, submitted), pi in zip(batch, p)]
        try:
            self.results.put_nowait(results)
        except queue.Full:
            self.stats.dropped_out += len(results)


def lower_thread_priority(nice: int) -> None:
    """Add ``nice`` to the calling thread's nice value. Linux keeps it per thread, so the
    process's other threads keep theirs; elsewhere, or where refused, it logs and goes on."""
    try:
        tid = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, tid, os.getpriority(os.PRIO_PROCESS, tid) + nice)
    except (AttributeError, OSError) as exc:
        log.warning("could not lower the %s thread's priority: %s",
                    threading.current_thread().name, exc)
