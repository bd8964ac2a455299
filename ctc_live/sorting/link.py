"""The host driver for the sorter controller: scheduled pulses on the controller's clock.

`open_sorter(config)` opens the port (or starts the in-process emulator when the port is
"emulator"), checks INFO, syncs the clock and keeps it synced in the background. `fire`
converts a host monotonic target time into controller time and sends FIRE without waiting;
every pulse ends in exactly one `PulseOutcome` (done, missed, cancelled, error or lost),
delivered to the `on_outcome` callback if one is given, else to the bounded queue `outcomes`.
The controller holds at most `max_pending` pulses (INFO): beyond that the driver holds them
and sends the earliest as soon as one of the controller's ends.

A lost link (port gone, read or write failing, controller silent) is reported and retried:
on reconnect the driver re-syncs the clock, re-arms if it was armed, and re-sends the
pulses that are still far enough ahead; those whose time passed meanwhile are missed.
A controller reset (EVENT RESET) is handled the same way on the live port.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Self

import serial

from ctc_live.config import Config, SorterConfig
from ctc_live.errors import CtcLiveError
from ctc_live.sorting import protocol as p
from ctc_live.sorting.clock import ClockModel, SyncSample
from ctc_live.sorting.emulator import SorterEmulator

log = logging.getLogger(__name__)

OUTCOMES = ("done", "missed", "cancelled", "error", "lost")
# The link's defaults are the config's: one source for both (see SorterConfig's fields).
DEFAULTS = SorterConfig()
SYNC_BURST = 16  # exchanges right after (re)connecting, before pulses are (re)sent
OPEN_TIMEOUT_S = 3.0  # a board that resets on open (Arduino bootloader) answers within this
HELD_TOO_LONG = "held while the controller's queue was full, too long"


@dataclass(frozen=True, slots=True)
class PulseOutcome:
    id: int
    target_host_ns: int
    width_us: float
    outcome: str  # one of OUTCOMES
    actual_start_host_ns: int | None
    error_us: float | None  # actual start − target, host time
    sent_ns: int | None  # when the (last) FIRE line was written; None: never sent
    detail: str = ""
    wire_id: int | None = None  # the id in the (last) FIRE line, as the controller logs it


@dataclass(slots=True)
class _Pulse:
    id: int
    target_host_ns: int
    width_us: int
    wire_id: int | None = None  # the id on the wire; a re-sent pulse gets a new one
    sent_ns: int | None = None
    acked: bool = False
    held: bool = False  # waiting for a free place in the controller's queue


class LinkDown(Exception):
    """The port went away or the controller stopped answering."""


class SorterLink:
    def __init__(
        self,
        port: str,
        *,
        baudrate: int = DEFAULTS.baudrate,
        reply_timeout_s: float = DEFAULTS.reply_timeout_ms / 1000,
        min_lead_s: float = DEFAULTS.min_lead_ms / 1000,
        on_outcome: Callable[[PulseOutcome], None] | None = None,
        queue_size: int = 4096,
        ping_interval_s: float = DEFAULTS.ping_interval_ms / 1000,
        emulator: SorterEmulator | None = None,
    ) -> None:
        self.port = port
        self.baudrate = baudrate
        self.reply_timeout_s = reply_timeout_s
        self.min_lead_ns = round(min_lead_s * 1e9)
        self.on_outcome = on_outcome
        self.outcomes: queue.Queue[PulseOutcome] = queue.Queue(maxsize=queue_size)
        self.ping_interval_ns = round(ping_interval_s * 1e9)
        self.emulator = emulator
        self.info: dict[str, str] = {}
        self.max_width_us = p.MAX_WIDTH_US
        self.max_pending = p.MAX_PENDING
        self._held_total = 0

        self._lock = threading.RLock()
        self._cv = threading.Condition(self._lock)
        self._request_lock = threading.Lock()  # taken before _lock, never inside it
        self._ser: serial.Serial | None = None
        self._gen = 0  # connection generation: a stale reader thread stops
        self._connected = False
        self._synced = False  # clock synced and pulses may be sent
        self._closed = False
        self._want_armed = False
        self._controller_armed = False
        self._need_resync = False
        self._resets = 0
        self._clock = ClockModel()
        self._pings: dict[int, int] = {}  # host_us → sent_ns
        self._last_ping_ns = 0
        self._probe_ns = 0  # when the reader's wait was interrupted, until it wakes
        self._last_probe_ns = 0
        self._last_pong_ns = 0
        self._replies: dict[tuple, p.Reply] = {}
        self._pulses: dict[int, _Pulse] = {}
        self._by_wire: dict[int, _Pulse] = {}
        self._next_id = 0
        self._next_wire = 0
        self._counts: Counter[str] = Counter()
        self._last_error = ""
        self._disconnects = 0
        self._watchdog_trips = 0
        self._protocol_errors = 0
        self._outcomes_dropped = 0
        self._supervisor: threading.Thread | None = None

    # --- public API ---------------------------------------------------------------------

    def open(self) -> SorterLink:
        """Connect, check INFO and sync the clock; then keep the link up in the background."""
        try:
            self._connect()
        except (LinkDown, serial.SerialException, OSError) as exc:
            self._drop_port()
            raise CtcLiveError(f"sorter: cannot use port {self.port!r}: {exc}") from None
        self._supervisor = threading.Thread(target=self._supervise, name="sorter-link", daemon=True)
        self._supervisor.start()
        return self

    def arm(self) -> None:
        with self._lock:
            self._want_armed = True
        self._arm_controller()

    def disarm(self) -> None:
        """Disarm; the controller cancels every pending pulse (each reported cancelled)."""
        with self._lock:
            self._want_armed = False
            connected = self._connected
        if connected:
            try:
                self._request("DISARM", ("OK", "DISARM"))
            except LinkDown as exc:
                log.warning("sorter: DISARM not confirmed: %s", exc)

    def fire(self, target_host_ns: int, width_us: float) -> int:
        """Schedule a pulse at a host monotonic time; returns its id at once."""
        width = max(1, round(width_us))
        if width > self.max_width_us:
            raise ValueError(
                f"pulse width {width_us} us exceeds the controller's "
                f"max_width_us {self.max_width_us}"
            )
        with self._lock:
            self._next_id += 1
            pulse = _Pulse(self._next_id, int(target_host_ns), width)
            self._pulses[pulse.id] = pulse
            if self._closed:
                self._finish(pulse, "cancelled", detail="link closed")
            elif self._synced and target_host_ns > time.monotonic_ns():
                self._send_or_hold(pulse)
            # Otherwise it waits unsent: sent when the link is back, or reported missed by the
            # background thread once its time has passed (never from inside fire(), so the
            # caller knows the id before its outcome arrives).
            return pulse.id

    def cancel(self, pulse_id: int) -> None:
        with self._lock:
            pulse = self._pulses.get(pulse_id)
            if pulse is None:
                return
            if pulse.wire_id is None:
                self._finish(pulse, "cancelled", detail="cancelled before sending")
            else:
                self._write(f"CANCEL {pulse.wire_id}")

    def status(self) -> dict:
        with self._lock:
            now = time.monotonic_ns()
            rtt = self._clock.rtt_percentiles_us()
            return {
                "port": self.port,
                "connected": self._connected,
                "synced": self._synced,
                "armed": self._controller_armed,
                "want_armed": self._want_armed,
                "watchdog_trips": self._watchdog_trips,
                "watchdog_tripped": self._watchdog_trips > 0,
                "resets": self._resets,
                "disconnects": self._disconnects,
                "clock_offset_us": (
                    self._clock.to_controller_us(now) - now / 1000.0 if self._clock.valid else None
                ),
                "drift_ppm": self._clock.drift_ppm,
                "rtt_p50_us": rtt[0] if rtt else None,
                "rtt_p99_us": rtt[1] if rtt else None,
                "best_rtt_us": self._clock.best_rtt_us,
                "reader_wake_us": self._clock.receive_delay_ns / 1000.0,
                "last_error": self._last_error,
                "pending": len(self._pulses),
                "held": sum(pulse.held for pulse in self._pulses.values()),
                "held_total": self._held_total,
                "counts": {k: self._counts[k] for k in OUTCOMES},
                "protocol_errors": self._protocol_errors,
                "outcomes_dropped": self._outcomes_dropped,
                "firmware": self.info.get("fw"),
            }

    def to_controller_us(self, host_ns: int) -> float:
        with self._lock:
            return self._clock.to_controller_us(host_ns)

    def to_host_ns(self, controller_us: float) -> int:
        with self._lock:
            return self._clock.to_host_ns(controller_us)

    def wait_idle(self, timeout_s: float) -> bool:
        """Wait until every fired pulse has its outcome; False on timeout."""
        with self._cv:
            return self._cv.wait_for(lambda: not self._pulses, timeout_s)

    def close(self) -> None:
        if self._closed:
            return
        if self._connected:
            self.disarm()
        with self._lock:
            self._closed = True
            for pulse in list(self._pulses.values()):
                self._finish(pulse, "cancelled", detail="link closed")
            self._cv.notify_all()
        if self._supervisor is not None:
            self._supervisor.join(timeout=2.0)
        self._drop_port()
        if self.emulator is not None:
            self.emulator.stop()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # --- connection ---------------------------------------------------------------------

    def _connect(self) -> None:
        ser = serial.Serial(self.port, self.baudrate, timeout=0.05, write_timeout=0.5)
        ser.reset_input_buffer()
        with self._lock:
            self._ser = ser
            self._gen += 1
            self._connected = True
            gen = self._gen
        threading.Thread(
            target=self._read_loop, args=(ser, gen), name="sorter-reader", daemon=True
        ).start()
        self._handshake(first=True)

    def _handshake(self, first: bool = False) -> None:
        """Bring a (re)connected or reset controller to the state the host wants."""
        for _ in range(3):
            with self._lock:
                self._synced = False
                self._need_resync = False
                resets = self._resets
                self._controller_armed = False
                self._detach_in_flight()
            # A newline ends whatever partial line the controller holds from before.
            self._write("")
            self._info(OPEN_TIMEOUT_S if first else self.reply_timeout_s * 2)
            self._request("DISARM", ("OK", "DISARM"))
            self._sync_burst()
            if self._want_armed:
                self._request("ARM", ("OK", "ARM"))
                with self._lock:
                    self._controller_armed = True
            with self._lock:
                if self._resets != resets:
                    continue  # reset again meanwhile: the clock just measured is stale
                self._synced = True
                self._resend_pending()
                return
        raise LinkDown("controller keeps resetting")

    def _info(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                reply = self._request("INFO", ("INFO",), timeout_s=0.3)
                break
            except LinkDown:
                if time.monotonic() > deadline or not self._connected or self._closed:
                    raise
        fields = reply.fields or {}
        if fields.get("proto") != str(p.PROTOCOL_VERSION):
            raise LinkDown(
                f"controller speaks protocol {fields.get('proto')!r}, "
                f"expected {p.PROTOCOL_VERSION}: {reply.line!r}"
            )
        self.info = fields
        self.max_width_us = int(fields.get("max_width_us", p.MAX_WIDTH_US))
        self.max_pending = int(fields.get("max_pending", p.MAX_PENDING))

    def _sync_burst(self) -> None:
        with self._lock:
            # A controller clock restarted from zero: keep only the crystal's drift.
            self._clock = ClockModel(drift_ppm=self._clock.drift_ppm)
            self._pings.clear()
        for _ in range(SYNC_BURST):
            host_us = self._send_ping()
            with self._cv:
                self._cv.wait_for(
                    lambda h=host_us: h not in self._pings or not self._connected,
                    self.reply_timeout_s,
                )
                if not self._connected:
                    raise LinkDown(self._last_error or "link lost during clock sync")
        if not self._clock.valid:
            raise LinkDown("no PONG to clock sync")

    def _arm_controller(self) -> None:
        if not self._connected:
            return  # armed on reconnect
        try:
            self._request("ARM", ("OK", "ARM"))
            with self._lock:
                self._controller_armed = True
        except LinkDown as exc:
            log.warning("sorter: ARM not confirmed: %s", exc)

    def _drop_port(self) -> None:
        with self._lock:
            ser, self._ser = self._ser, None
            self._connected = self._synced = self._controller_armed = False
            self._probe_ns = 0
            self._gen += 1
            self._cv.notify_all()
        if ser is not None:
            try:
                ser.close()
            except (serial.SerialException, OSError):
                pass

    def _lost(self, gen: int, reason: str) -> None:
        with self._lock:
            if gen != self._gen or self._closed:
                return
            self._last_error = reason
            self._disconnects += 1
            log.warning("sorter: link lost (%s); reconnecting", reason)
            self._detach_in_flight()
        self._drop_port()

    def _detach_in_flight(self) -> None:
        """The controller forgot its queue (reset, power loss): its pulses are ours again."""
        for pulse in self._pulses.values():
            pulse.wire_id = None
            pulse.acked = False
        self._by_wire.clear()

    # --- writing ------------------------------------------------------------------------

    def _write(self, line: str) -> None:
        with self._lock:
            ser, gen = self._ser, self._gen
            if ser is None:
                raise LinkDown(self._last_error or "not connected")
            try:
                ser.write((line + "\n").encode("ascii"))
            except (serial.SerialException, serial.SerialTimeoutException, OSError) as exc:
                self._lost(gen, f"write failed: {exc}")
                raise LinkDown(f"write failed: {exc}") from None

    def _request(self, line: str, key: tuple, timeout_s: float | None = None) -> p.Reply:
        # One request at a time: two waiting for the same reply kind would steal it.
        with self._request_lock, self._cv:
            self._replies.pop(key, None)
            self._write(line)
            got = self._cv.wait_for(
                lambda: key in self._replies or not self._connected,
                timeout_s or self.reply_timeout_s,
            )
            if key in self._replies:
                return self._replies.pop(key)
            if not got:
                raise LinkDown(
                    f"no reply to {line.split()[0]} within "
                    f"{(timeout_s or self.reply_timeout_s) * 1000:.0f} ms"
                )
            raise LinkDown(self._last_error or "link lost")

    def _send_ping(self) -> int:
        with self._lock:
            now = time.monotonic_ns()
            host_us = max(now // 1000, max(self._pings, default=0) + 1)
            for old in [h for h, sent in self._pings.items() if now - sent > 10_000_000_000]:
                del self._pings[old]  # never answered: forget it
            self._pings[host_us] = now
            self._last_ping_ns = now
            self._write(f"PING {host_us}")
            return host_us

    def _probe_reader(self) -> None:
        """Interrupt the reader's wait (pyserial's cancel_read) to time how late it wakes.

        The clock sync bounds the controller's time between a PING's send, stamped before
        the write, and its PONG's receipt, stamped after the reader thread wakes for the
        PONG's first bytes: only the return trip includes a wake-up (and the interpreter
        lock), which made the fastest return trip slower than the fastest outbound one and
        every pulse early (by 50 µs on median on the simulated rig). The clock model takes
        that wake-up out again.
        """
        with self._lock:
            ser = self._ser
            if ser is None or self._probe_ns:
                return
            self._probe_ns = self._last_probe_ns = time.monotonic_ns()
        try:
            ser.cancel_read()
        except (serial.SerialException, OSError, AttributeError):  # closed meanwhile
            with self._lock:
                self._probe_ns = 0

    def _probe_answered(self, now: int) -> None:
        with self._lock:
            if self._probe_ns:
                self._clock.add_receive_delay(now - self._probe_ns)
                self._probe_ns = 0

    def _send_fire(self, pulse: _Pulse) -> None:
        at_t = round(self._clock.to_controller_us(pulse.target_host_ns))
        self._next_wire = self._next_wire % p.MAX_ID + 1
        pulse.wire_id = self._next_wire
        pulse.sent_ns = time.monotonic_ns()
        pulse.acked = False
        self._by_wire[pulse.wire_id] = pulse
        try:
            self._write(f"FIRE {pulse.wire_id} {max(0, at_t)} {pulse.width_us}")
        except LinkDown:
            pass  # _lost detached it: re-sent or missed when the link is back

    def _send_or_hold(self, pulse: _Pulse) -> None:
        if len(self._by_wire) < self.max_pending:
            pulse.held = False
            self._send_fire(pulse)
        elif not pulse.held:
            pulse.held = True
            self._held_total += 1
            if self._held_total == 1:
                log.warning("sorter: the controller's queue is full (%d pulses): holding "
                            "pulses until it has room", self.max_pending)

    def _resend_pending(self, held_only: bool = False) -> None:
        """Send the unsent pulses (or the held ones only), earliest first, as far as the
        controller has room."""
        now = time.monotonic_ns()
        unsent = [pulse for pulse in self._pulses.values()
                  if pulse.wire_id is None and (pulse.held or not held_only)]
        for pulse in sorted(unsent, key=lambda pulse: pulse.target_host_ns):
            if pulse.target_host_ns - now < self.min_lead_ns:
                detail = HELD_TOO_LONG if pulse.held else "time passed while the link was down"
                self._finish(pulse, "missed", detail=detail)
            else:
                self._send_or_hold(pulse)

    # --- reading ------------------------------------------------------------------------

    def _read_loop(self, ser: serial.Serial, gen: int) -> None:
        buf = bytearray()
        # When the first bytes of the line in buf arrived: a reply's clock reading left
        # with them. pyserial's read wakes for one byte and the rest comes a read later,
        # on a loaded host up to a thread switch later (PONGs timed 40 µs late at p10).
        started = 0
        while True:
            with self._lock:
                if gen != self._gen or self._closed:
                    return
            try:
                data = ser.read(ser.in_waiting or 1)
            except (serial.SerialException, OSError, TypeError, AttributeError) as exc:
                # TypeError/AttributeError: pyserial's fd vanished under a concurrent close.
                self._lost(gen, f"read failed: {exc}")
                return
            now = time.monotonic_ns()
            if not data:
                self._probe_answered(now)
                continue
            if not buf:
                started = now
            buf += data
            *lines, rest = buf.split(b"\n")
            buf = bytearray(rest)
            for raw in lines:
                text = raw.decode("latin-1").rstrip("\r")
                if text:
                    with self._lock:
                        if gen == self._gen:
                            self._dispatch(text, started)
                started = now

    def _dispatch(self, line: str, arrived_ns: int) -> None:
        try:
            reply = p.parse_reply(line)
        except p.ProtocolError as exc:
            self._protocol_errors += 1
            self._last_error = str(exc)
            log.warning("sorter: %s", exc)
            return
        kind = reply.kind
        if kind == "PONG":
            sent = self._pings.pop(reply.host_us, None)
            if sent is not None:
                self._clock.add(SyncSample(sent, arrived_ns, reply.t))
                self._last_pong_ns = arrived_ns
        elif kind == "ACK":
            if (pulse := self._by_wire.get(reply.id)) is not None:
                pulse.acked = True
        elif kind in ("DONE", "MISS", "CANCELLED"):
            pulse = self._by_wire.get(reply.id)
            if pulse is None:
                return  # a pulse from before a reconnect, already re-sent or settled
            if kind == "DONE":
                actual = self._clock.to_host_ns(reply.t)
                self._finish(pulse, "done", actual, (actual - pulse.target_host_ns) / 1000.0)
            elif kind == "MISS":
                self._finish(pulse, "missed", detail=f"controller: {line}")
            else:
                self._finish(pulse, "cancelled", detail=f"controller: {line}")
        elif kind == "ERR":
            self._last_error = line
            pulse = self._by_wire.get(reply.id) if reply.id is not None else None
            if pulse is not None:
                self._finish(pulse, "error", detail=line)
            else:
                log.warning("sorter: controller says %s", line)
        elif kind == "EVENT":
            self._event(reply)
        elif kind in ("INFO", "STATUS"):
            self._replies[(kind,)] = reply
        elif kind == "OK":
            self._replies[("OK", reply.words[1])] = reply
        self._cv.notify_all()

    def _event(self, reply: p.Reply) -> None:
        what = reply.words[1]
        if what == "RESET":
            # Power-on resets come while connecting; a reset once synced is news.
            log.log(
                logging.WARNING if self._synced else logging.INFO,
                "sorter: controller reset; re-syncing",
            )
            self._resets += 1
            self._controller_armed = False
            self._synced = False
            self._need_resync = True
            self._detach_in_flight()
        elif what == "DISARMED":
            self._controller_armed = False
            if reply.words[2:3] == ("watchdog",):
                self._watchdog_trips += 1
                self._last_error = reply.line
            log.warning("sorter: %s", reply.line)
        else:
            log.info("sorter: %s", reply.line)

    def _finish(
        self,
        pulse: _Pulse,
        outcome: str,
        actual: int | None = None,
        error_us: float | None = None,
        detail: str = "",
    ) -> None:
        self._pulses.pop(pulse.id, None)
        freed = pulse.wire_id is not None and self._by_wire.pop(pulse.wire_id, None) is not None
        self._counts[outcome] += 1
        result = PulseOutcome(
            pulse.id,
            pulse.target_host_ns,
            pulse.width_us,
            outcome,
            actual,
            error_us,
            pulse.sent_ns,
            detail,
            pulse.wire_id,
        )
        if outcome not in ("done", "cancelled"):
            log.info("sorter: pulse %d %s %s", pulse.id, outcome, detail)
        if self.on_outcome is not None:
            self.on_outcome(result)
        else:
            try:
                self.outcomes.put_nowait(result)
            except queue.Full:
                self._outcomes_dropped += 1
        if freed and self._synced:
            self._resend_pending(held_only=True)
        self._cv.notify_all()

    # --- background ---------------------------------------------------------------------

    def _supervise(self) -> None:
        while not self._closed:
            try:
                self._expire_unsent()
                if not self._connected:
                    self._reconnect()
                elif self._need_resync:
                    self._handshake()
                else:
                    self._keep_alive()
            except LinkDown as exc:
                with self._lock:
                    self._last_error = str(exc)
                    gen = self._gen
                log.warning("sorter: %s", exc)
                self._lost(gen, str(exc))
            time.sleep(0.01)

    def _reconnect(self) -> None:
        if self._closed:
            return
        try:
            self._connect()
        except (serial.SerialException, OSError) as exc:
            with self._lock:
                self._last_error = f"cannot open {self.port}: {exc}"
            self._drop_port()
            time.sleep(0.2)
            return
        log.info("sorter: link back on %s; clock re-synced", self.port)

    def _expire_unsent(self) -> None:
        with self._lock:
            now = time.monotonic_ns()
            for pulse in list(self._pulses.values()):
                if pulse.wire_id is None and pulse.target_host_ns <= now:
                    if pulse.held:
                        detail = HELD_TOO_LONG
                    elif pulse.sent_ns is None and self._synced:
                        detail = "target already passed when fired"
                    else:
                        detail = "time passed while the link was down"
                    self._finish(pulse, "missed", detail=detail)

    def _keep_alive(self) -> None:
        now = time.monotonic_ns()
        with self._lock:
            if now - self._last_ping_ns >= self.ping_interval_ns:
                self._send_ping()
            # Between PONGs, when the reader is most likely waiting.
            probe = (self._last_probe_ns < self._last_ping_ns
                     and now - self._last_ping_ns >= self.ping_interval_ns / 2)
            # Re-arm when the controller disarmed itself (watchdog) but the host wants it armed.
            rearm = self._want_armed and not self._controller_armed
            timeout_ns = round(self.reply_timeout_s * 1e9)
            if now - self._last_pong_ns > max(timeout_ns, 3 * self.ping_interval_ns):
                raise LinkDown(f"controller silent for {(now - self._last_pong_ns) / 1e6:.0f} ms")
            for pulse in list(self._pulses.values()):
                if pulse.sent_ns is None or pulse.wire_id is None:
                    continue
                deadline = max(pulse.sent_ns, pulse.target_host_ns + pulse.width_us * 1000)
                if now > deadline + timeout_ns:
                    said = "ACKed, then no outcome" if pulse.acked else "no ACK and no outcome"
                    self._finish(pulse, "lost", detail=f"{said} from the controller")
        if probe:
            self._probe_reader()
        if rearm:
            self._arm_controller()


def open_sorter(
    config: Config | SorterConfig, on_outcome: Callable[[PulseOutcome], None] | None = None
) -> SorterLink:
    """Open the sorter named by the config; "emulator" starts one in-process on a pty."""
    cfg = config.sorter if isinstance(config, Config) else config
    emulator = None
    port = cfg.port
    if port == "emulator":
        emulator = SorterEmulator(cfg.emulator, temp_link=True).start()
        port = emulator.port
    link = SorterLink(
        port,
        baudrate=cfg.baudrate,
        reply_timeout_s=cfg.reply_timeout_ms / 1000,
        min_lead_s=cfg.min_lead_ms / 1000,
        on_outcome=on_outcome,
        ping_interval_s=cfg.ping_interval_ms / 1000,
        emulator=emulator,
    )
    try:
        return link.open()
    except CtcLiveError:
        link.close()
        raise
