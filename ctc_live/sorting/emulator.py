"""An emulator of the sorter controller speaking protocol v1 on a pseudo-terminal.

The host opens the pty's path with pyserial exactly as it opens the real board. The
emulator models what matters for timing: the controller's own microsecond clock (an offset
and a drift against the host's monotonic clock), the serial line's latency and jitter in
each direction (lines stay in order), the hardware timer's pulse start jitter, the queue
limit and the watchdog. Every fired pulse is logged with its actual start in HOST
monotonic ns, which is the ground truth the simulated rig scores deflections against.

``unplug()``/``plug()`` make the port vanish and come back (a USB cable pulled: the board
loses power, so it comes back reset); ``reset()`` resets the controller on a live port.
Give ``link_path`` (or ``temp_link``) to get a stable symlink to the current pty, as udev
gives a real board a stable name.
"""

from __future__ import annotations

import heapq
import logging
import os
import random
import select
import shutil
import tempfile
import termios
import threading
import time
import tty
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Self

from ctc_live.config import EmulatorConfig
from ctc_live.sorting import protocol as p

log = logging.getLogger(__name__)

FIRMWARE_NAME = "ctc-emulator/1.0"


@dataclass(frozen=True, slots=True)
class PulseLogEntry:
    id: int
    at_t: int  # requested start, controller µs
    start_t: int  # actual start, controller µs (as reported in DONE)
    width_us: int
    start_host_ns: int  # actual start, host monotonic ns


class ControllerClock:
    """The controller's free-running µs clock as a function of host monotonic time."""

    def __init__(self, reading_us: float, at_host_ns: int, drift_ppm: float) -> None:
        self.rate = 1.0 + drift_ppm * 1e-6
        self.zero_ns = at_host_ns - reading_us * 1000.0 / self.rate

    def at(self, host_ns: int) -> float:
        return (host_ns - self.zero_ns) / 1000.0 * self.rate

    def host_ns(self, t_us: float) -> int:
        return round(self.zero_ns + t_us * 1000.0 / self.rate)


@dataclass(slots=True)
class _Pending:
    at_t: int
    width_us: int
    start_t: int


class SorterEmulator:
    def __init__(
        self,
        config: EmulatorConfig | None = None,
        *,
        link_path: str | Path | None = None,
        temp_link: bool = False,
        seed: int | None = None,
        on_pulse: Callable[[PulseLogEntry], None] | None = None,
    ) -> None:
        self.config = config or EmulatorConfig()
        # temp_link: a stable link in a fresh temporary folder, removed on stop.
        self._tmpdir = Path(tempfile.mkdtemp(prefix="ctc-sorter-")) if temp_link else None
        if self._tmpdir is not None:
            link_path = self._tmpdir / "port"
        self.link_path = Path(link_path) if link_path else None
        self.on_pulse = on_pulse
        self._rng = random.Random(seed)
        self._lock = threading.RLock()
        self._log: list[PulseLogEntry] = []
        self._master: int | None = None
        self._slave: int | None = None
        self._pty_path = ""
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_w, False)
        self._stop = False
        # Fault injection: a controller that fires but never reports DONE/MISS.
        self.drop_outcomes = False
        self._thread: threading.Thread | None = None
        self._clock = ControllerClock(
            self.config.clock_offset_us, time.monotonic_ns(), self.config.drift_ppm
        )
        self._power_on(time.monotonic_ns(), announce=False)

    # --- the port -----------------------------------------------------------------------

    @property
    def port(self) -> str:
        """The path the host opens: the stable link if any, else the pty itself."""
        return str(self.link_path) if self.link_path else self._pty_path

    @property
    def pty_path(self) -> str:
        return self._pty_path

    def start(self) -> SorterEmulator:
        with self._lock:
            self._open_pty()
            self._send("EVENT RESET", time.monotonic_ns())
        self._thread = threading.Thread(target=self._run, name="sorter-emulator", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop = True
        self._wake()
        if self._thread is not None:
            self._thread.join(timeout=2.0)
        with self._lock:
            self._close_pty()
        for fd in (self._wake_r, self._wake_w):
            os.close(fd)
        if self._tmpdir is not None:
            shutil.rmtree(self._tmpdir, ignore_errors=True)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def unplug(self) -> None:
        """The port vanishes and the board loses power."""
        with self._lock:
            self._close_pty()
            self._events.clear()
            self._pending.clear()
            self._armed = False
        self._wake()

    def plug(self) -> None:
        """The port comes back with the board freshly reset (clock from 0)."""
        with self._lock:
            now = time.monotonic_ns()
            self._open_pty()
            self._power_on(now, announce=True, clock_from_zero=True)
        self._wake()

    def reset(self) -> None:
        """Reset the controller on a live port (its reset button)."""
        with self._lock:
            self._power_on(time.monotonic_ns(), announce=True, clock_from_zero=True)
        self._wake()

    def send_raw(self, data: bytes) -> None:
        """Bytes to the host right now, outside the protocol (a noisy line)."""
        with self._lock:
            self._write(data)

    # --- ground truth -------------------------------------------------------------------

    def pulse_log(self) -> list[PulseLogEntry]:
        with self._lock:
            return list(self._log)

    def clock_us(self, host_ns: int | None = None) -> float:
        """The controller clock's true reading at a host time (default: now)."""
        with self._lock:
            return self._clock.at(time.monotonic_ns() if host_ns is None else host_ns)

    # --- controller state ---------------------------------------------------------------

    def _power_on(self, now: int, announce: bool, clock_from_zero: bool = False) -> None:
        if clock_from_zero:
            self._clock = ControllerClock(0.0, now, self.config.drift_ppm)
        self._events: list[tuple[int, int, str, object]] = []
        self._seq = 0
        self._last_in = self._last_out = now
        self._last_line_ns = now
        self._assembler = p.LineAssembler()
        self._armed = False
        self._pending: dict[int, _Pending] = {}
        self._fired = self._missed = self._errors = 0
        if announce:
            self._send("EVENT RESET", now)

    def _open_pty(self) -> None:
        master, slave = os.openpty()
        # Raw on the slave side: no echo or line editing before the host sets its own mode.
        tty.setraw(slave, termios.TCSANOW)
        os.set_blocking(master, False)
        self._master, self._slave = master, slave
        self._pty_path = os.ttyname(slave)
        if self.link_path:
            tmp = self.link_path.with_name(self.link_path.name + ".new")
            tmp.unlink(missing_ok=True)
            tmp.symlink_to(self._pty_path)
            tmp.replace(self.link_path)
        log.debug("emulator port %s (pty %s)", self.port, self._pty_path)

    def _close_pty(self) -> None:
        if self.link_path:
            self.link_path.unlink(missing_ok=True)
        for fd in (self._master, self._slave):
            if fd is not None:
                os.close(fd)
        self._master = self._slave = None

    def _delay_ns(self) -> int:
        lat, jit = self.config.latency_us, self.config.jitter_us
        return round(self._rng.uniform(max(0.0, lat - jit), lat + jit) * 1000)

    def _push(self, at_ns: int, kind: str, data: object) -> None:
        self._seq += 1
        heapq.heappush(self._events, (at_ns, self._seq, kind, data))

    def _send(self, line: str, now: int) -> None:
        self._last_out = max(self._last_out, now + self._delay_ns())
        self._push(self._last_out, "out", (line + "\n").encode("latin-1"))

    def _err(self, pulse_id: int | None, code: int, now: int) -> None:
        self._errors += 1
        self._send(p.err_line(pulse_id, code), now)

    def _cancel_all(self, now: int) -> None:
        for pulse_id in list(self._pending):
            del self._pending[pulse_id]
            self._send(f"CANCELLED {pulse_id}", now)

    def _handle(self, line: str | None, now: int) -> None:
        self._last_line_ns = now
        if line is None:
            self._err(None, p.ERR_TOO_LONG, now)
            return
        t = int(self._clock.at(now))
        words = [w for w in line.split(" ") if w]
        cmd, args = (words[0], words[1:]) if words else ("", [])
        if cmd == "PING" and len(args) == 1 and (host_us := p.parse_uint(args[0])) is not None:
            self._send(f"PONG {host_us} {t}", now)
        elif cmd == "INFO" and not args:
            self._send(
                f"INFO proto={p.PROTOCOL_VERSION} fw={FIRMWARE_NAME} "
                f"max_width_us={p.MAX_WIDTH_US} max_pending={p.MAX_PENDING}",
                now,
            )
        elif cmd == "ARM" and not args:
            self._armed = True
            self._send("OK ARM", now)
        elif cmd == "DISARM" and not args:
            self._armed = False
            self._cancel_all(now)
            self._send("OK DISARM", now)
        elif cmd == "STATUS" and not args:
            self._send(
                f"STATUS armed={int(self._armed)} pending={len(self._pending)} "
                f"fired={self._fired} missed={self._missed} errors={self._errors} t={t}",
                now,
            )
        elif cmd == "CANCEL" and len(args) == 1 and (pid := p.parse_id(args[0])) is not None:
            if self._pending.pop(pid, None) is None:
                self._err(pid, p.ERR_UNKNOWN_ID, now)
            else:
                self._send(f"CANCELLED {pid}", now)
        elif cmd == "FIRE" and len(args) == 3:
            self._fire(args, t, now)
        else:
            self._err(None, p.ERR_SYNTAX, now)

    def _fire(self, args: list[str], t: int, now: int) -> None:
        pid, at_t, width = p.parse_id(args[0]), p.parse_uint(args[1]), p.parse_uint(args[2])
        if pid is None or at_t is None or width is None:
            self._err(None, p.ERR_SYNTAX, now)
        elif not self._armed:
            self._err(pid, p.ERR_NOT_ARMED, now)
        elif width == 0 or width > p.MAX_WIDTH_US:
            self._err(pid, p.ERR_WIDTH, now)
        elif pid in self._pending:
            self._err(pid, p.ERR_DUPLICATE, now)
        elif len(self._pending) >= p.MAX_PENDING:
            self._err(pid, p.ERR_QUEUE_FULL, now)
        else:
            self._send(f"ACK {pid}", now)
            if at_t + p.MISS_TOLERANCE_US < t:
                self._missed += 1
                self._send(f"MISS {pid} {t}", now)
                return
            # The hardware timer starts the pulse on time, give or take its jitter; never early.
            start_t = round(max(at_t, t) + self._rng.uniform(0, self.config.pulse_jitter_us))
            self._pending[pid] = _Pending(at_t, width, start_t)
            self._push(self._clock.host_ns(start_t), "due", (pid, start_t))

    def _due(self, data: tuple[int, int], now: int) -> None:
        pid, start_t = data
        pulse = self._pending.get(pid)
        if pulse is None or pulse.start_t != start_t:
            return  # cancelled (or replaced) before it came due
        del self._pending[pid]
        self._fired += 1
        entry = PulseLogEntry(pid, pulse.at_t, start_t, pulse.width_us, now)
        self._log.append(entry)
        log.debug(
            "pulse %d requested %d started %d width %d us", pid, pulse.at_t, start_t, pulse.width_us
        )
        if self.on_pulse is not None:
            self.on_pulse(entry)
        if not self.drop_outcomes:
            self._send(f"DONE {pid} {start_t}", now)

    def _write(self, data: bytes) -> None:
        if self._master is None:
            return
        try:
            os.write(self._master, data)
        except BlockingIOError:
            log.warning("emulator: host is not reading; dropped %r", data)

    # --- the loop -----------------------------------------------------------------------

    def _wake(self) -> None:
        try:
            os.write(self._wake_w, b"x")
        except (BlockingIOError, OSError):
            pass

    def _next_event(self) -> int | None:
        watchdog = self._last_line_ns + p.WATCHDOG_US * 1000 if self._armed else None
        top = self._events[0][0] if self._events else None
        return min((x for x in (watchdog, top) if x is not None), default=None)

    def _process(self, now: int) -> None:
        """Handle every event due by ``now`` in the order of the times they happen."""
        while (at := self._next_event()) is not None and at <= now:
            if self._armed and at == self._last_line_ns + p.WATCHDOG_US * 1000:
                self._armed = False
                self._cancel_all(at)
                self._send("EVENT DISARMED watchdog", at)
                continue
            _, _, kind, data = heapq.heappop(self._events)
            if kind == "in":
                self._handle(data, at)
            elif kind == "due":
                self._due(data, at)
            else:
                self._write(data)

    def _run(self) -> None:
        _exact_timer_wakeups()
        while not self._stop:
            with self._lock:
                at = self._next_event()
                master = self._master
            timeout = None if at is None else max(0.0, (at - time.monotonic_ns()) / 1e9)
            fds = [self._wake_r] + ([master] if master is not None else [])
            try:
                readable, _, _ = select.select(fds, [], [], timeout)
            except OSError:
                continue  # the port was unplugged between taking its fd and waiting on it
            if self._wake_r in readable:
                os.read(self._wake_r, 4096)
            with self._lock:
                now = time.monotonic_ns()
                if master is not None and master in readable and master == self._master:
                    try:
                        data = os.read(master, 4096)
                    except (BlockingIOError, OSError):
                        data = b""
                    for line in self._assembler.feed(data):
                        # The line reaches the controller after the serial latency, in order.
                        self._last_in = max(self._last_in, now + self._delay_ns())
                        self._push(self._last_in, "in", line)
                self._process(time.monotonic_ns())


def _exact_timer_wakeups() -> None:
    """Ask Linux to wake this thread on time, not up to its default 50 µs timer slack late:
    the controller's replies leave at the times the model gives them, and a late reply
    biases the host's clock sync."""
    try:
        import ctypes

        PR_SET_TIMERSLACK = 29
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_TIMERSLACK, 1, 0, 0, 0)
    except (OSError, AttributeError):  # not Linux: the default slack stands
        pass
