"""Feetech STS3215 serial bus servos: the SCS/STS protocol ("protocol 0") over pyserial.

Our own small driver rather than Feetech's `scservo_sdk` so that every failure says which servo and what went
wrong (no reply, a corrupt reply, the servo's own error bits), retries are bounded, and the whole thing can be
tested byte for byte against `robot.emulator.ServoEmulator` over a real pty.

Wire format (half duplex, 8N1, 1 Mbaud by default), every packet framed the same way:

    FF FF  id  len  code  params...  checksum

`len` counts `code`, the params and the checksum (= len(params) + 2); `checksum` = ~(id + len + code +
sum(params)) & 0xFF. Host -> servo the `code` is an instruction; servo -> host (a *status packet*) it is the
servo's error byte. Multi-byte registers are little-endian on the STS series. Only three registers hold
signed values, in sign-magnitude form: the homing offset (direction bit 11) and the goal and present speeds
(bit 15), the magnitude below the bit (LeRobot's `STS_SMS_SERIES_ENCODINGS_TABLE` agrees). Positions are
plain 0..4095.

Sync write (and anything sent to the broadcast id 0xFE) gets no reply. A sync read gets one status packet per
listed servo, in list order.

The protocol has no sequence numbers: a status packet says which servo sent it, not which request it answers.
So after anything goes wrong on the line (a corrupt or missing reply), the bus is out of step until every
reply still in flight has arrived: the driver drains the line until it stays quiet for a full reply timeout
before it sends again, and only then retries. A value is only ever taken from a checksum-valid packet of the
right size, from a servo the current request asked, on a bus in step; anything else is an error naming the
servo.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from enum import IntEnum
from types import TracebackType
from typing import TypeVar

import serial

from models.errors import WorldloopError

log = logging.getLogger(__name__)
T = TypeVar("T")

HEADER = b"\xff\xff"
BROADCAST_ID = 0xFE
MAX_ID = 0xFD
DEFAULT_BAUDRATE = 1_000_000
STS3215_MODEL_NUMBER = 777
MAX_NOISE_BYTES = 64
"""Bytes of line noise tolerated before a reply's header; more and the reply counts as corrupt."""
MAX_DRAIN_S = 1.0
"""How long a drain may keep reading a line that never goes quiet before the bus gives up."""
POSITION_MAX = 4095
"""Positions (goals, limits) are 12-bit: one turn of the magnetic encoder."""


class Instruction(IntEnum):
    PING = 0x01
    READ = 0x02
    WRITE = 0x03
    SYNC_READ = 0x82
    SYNC_WRITE = 0x83


ERROR_BITS: dict[int, str] = {
    0x01: "input voltage",
    0x02: "angle sensor",
    0x04: "overheat",
    0x08: "overcurrent",
    0x20: "overload",
}
"""Status packet error bits, as named in Feetech's SDK (ERRBIT_VOLTAGE ... ERRBIT_OVERLOAD)."""


def describe_error_bits(bits: int) -> list[str]:
    """Names of the error bits set in a status byte; bits Feetech does not document come out as `bit N`."""
    names = [name for mask, name in ERROR_BITS.items() if bits & mask]
    names += [f"bit {i}" for i in range(8) if bits & (1 << i) and (1 << i) not in ERROR_BITS]
    return names


# ----------------------------------------------------------------------------------------------------------
# Control table


@dataclass(frozen=True)
class Register:
    """Where a value lives in a servo's memory and how its bytes map to an int."""

    address: int
    size: int
    sign_bit: int | None = None
    """Direction bit of a sign-magnitude value; None for unsigned registers."""
    maximum: int | None = None
    """Largest value the servo accepts, when it is below what the bytes could hold (positions: 4095)."""

    def encode(self, value: int) -> bytes:
        """Little-endian bytes for `value`; ValueError when it does not fit."""
        value = int(value)
        if self.sign_bit is not None:
            magnitude = abs(value)
            if magnitude >= 1 << self.sign_bit:
                raise ValueError(f"{value} does not fit a sign-magnitude value with sign bit {self.sign_bit}")
            raw = magnitude | ((1 << self.sign_bit) if value < 0 else 0)
        else:
            if not 0 <= value < 1 << (8 * self.size):
                raise ValueError(f"{value} does not fit {self.size} unsigned byte(s)")
            if self.maximum is not None and value > self.maximum:
                raise ValueError(f"{value} is above the register's maximum {self.maximum}")
            raw = value
        return raw.to_bytes(self.size, "little")

    def decode(self, data: bytes) -> int:
        """The int held in `data` (exactly `size` bytes, little-endian)."""
        raw = int.from_bytes(data, "little")
        if self.sign_bit is not None and raw & (1 << self.sign_bit):
            return -(raw & ((1 << self.sign_bit) - 1))
        return raw


CONTROL_TABLE: dict[str, Register] = {
    # EEPROM (kept over power cycles; writable only while `lock` is 0)
    "model_number": Register(3, 2),
    "id": Register(5, 1),
    "baud_rate": Register(6, 1),
    "return_delay_time": Register(7, 1),
    "response_status_level": Register(8, 1),
    "min_position_limit": Register(9, 2, maximum=POSITION_MAX),
    "max_position_limit": Register(11, 2, maximum=POSITION_MAX),
    "max_temperature_limit": Register(13, 1),
    "homing_offset": Register(31, 2, sign_bit=11),
    "operating_mode": Register(33, 1),
    # SRAM
    "torque_enable": Register(40, 1),
    "acceleration": Register(41, 1),
    "goal_position": Register(42, 2, maximum=POSITION_MAX),
    "goal_time": Register(44, 2),
    "goal_speed": Register(46, 2, sign_bit=15),
    "torque_limit": Register(48, 2),
    "lock": Register(55, 1),
    "present_position": Register(56, 2),
    "present_speed": Register(58, 2, sign_bit=15),
    "present_load": Register(60, 2),
    "present_voltage": Register(62, 1),
    "present_temperature": Register(63, 1),
    "status": Register(65, 1),
    "moving": Register(66, 1),
    "present_current": Register(69, 2),
}
"""STS3215 registers by name (Feetech's STS memory table, the one LeRobot's `STS_SMS_SERIES_CONTROL_TABLE`
also follows, with its sign bits). Positions are 0..4095 (position mode, the only one the SO-101 uses).
Load and current read unsigned, as LeRobot reads them. Voltage is in 0.1 V, temperature in deg C.
`homing_offset` is subtracted by the servo itself: present = actual - offset."""


def register(name: str | Register) -> tuple[str, Register]:
    """(name, Register) for a register name or a Register; ValueError lists the known names."""
    if isinstance(name, Register):
        found = [n for n, r in CONTROL_TABLE.items() if r == name]
        return (found[0] if found else f"@{name.address}"), name
    try:
        return name, CONTROL_TABLE[name]
    except KeyError:
        raise ValueError(f"unknown register {name!r}; known: {', '.join(CONTROL_TABLE)}") from None


# ----------------------------------------------------------------------------------------------------------
# Packets


def checksum(body: bytes) -> int:
    """The protocol's checksum over id, len, code and params (everything between header and checksum)."""
    return ~sum(body) & 0xFF


def encode_packet(servo_id: int, code: int, params: bytes = b"") -> bytes:
    """A framed packet: `code` is an instruction (host -> servo) or the error byte (a status packet)."""
    if len(params) > 253:
        raise ValueError(f"{len(params)} parameter bytes do not fit one packet (at most 253)")
    body = bytes([servo_id, len(params) + 2, code]) + bytes(params)
    return HEADER + body + bytes([checksum(body)])


# ----------------------------------------------------------------------------------------------------------
# Errors


class FeetechError(WorldloopError):
    """Talking to a servo failed; `servo_id` says which one when it is known."""

    def __init__(self, message: str, servo_id: int | None = None):
        super().__init__(message)
        self.servo_id = servo_id


class NoReplyError(FeetechError):
    """A servo did not answer (in full) within the timeout: unpowered, wrong id or baud rate, cable."""


class CorruptReplyError(FeetechError):
    """A reply arrived but cannot be trusted: bad checksum, wrong servo id, wrong length, only noise."""


class WriteStallError(FeetechError):
    """The request could not be written within the write timeout: the adapter or the machine stalled (a
    transient state, retried like a lost reply; nothing was read, so no value can be wrong)."""


class ServoStatusError(FeetechError):
    """The servo answered and reports a fault in its error byte (it did execute the instruction)."""

    def __init__(self, message: str, servo_id: int, bits: int, value: int | None = None):
        super().__init__(message, servo_id)
        self.bits = bits
        self.names = describe_error_bits(bits)
        self.value = value
        """For a read: the value the servo returned along with the error."""


# ----------------------------------------------------------------------------------------------------------
# The bus


class FeetechBus:
    """One serial port with STS3215 servos daisy-chained on it.

    Every transaction flushes stale input first, then sends one instruction packet and reads the exact number
    of bytes the reply must have, under the port timeout. No reply, or a corrupt one, is retried `retries`
    times; the servo's own error bits are not (retrying would not clear them) and raise `ServoStatusError`.
    A transaction that did not end with all its replies read (a failure, an interrupt) leaves the bus out
    of step: the next packet waits until the line has been quiet for a whole timeout (`_drain`), so no
    reply to an earlier request can be taken for one to the new request. Thread-safe: one transaction at a
    time.
    """

    def __init__(self, port: str, baudrate: int = DEFAULT_BAUDRATE, timeout: float = 0.05, retries: int = 2):
        if timeout <= 0 or retries < 0:
            raise ValueError("timeout must be > 0 and retries >= 0")
        self.port = port
        self.retries = retries
        self._lock = threading.Lock()
        try:
            self._serial = serial.Serial(
                port, baudrate=baudrate, timeout=timeout, write_timeout=max(timeout, 0.1), exclusive=True
            )
        except (serial.SerialException, OSError) as err:
            raise FeetechError(f"cannot open servo bus {port}: {err}") from err
        self._rx = bytearray()
        self._in_step = True
        """False from sending a request until all its replies are read: replies may still be in flight."""

    # -- public API --------------------------------------------------------------------------------------

    def ping(self, servo_id: int) -> int:
        """Check that `servo_id` answers and return its model number (777 for an STS3215)."""
        error, _ = self._transaction(servo_id, Instruction.PING, b"", 0, "PING")
        _check_status(servo_id, error, "PING")
        return self.read(servo_id, "model_number")

    def read(self, servo_id: int, name: str | Register) -> int:
        """One register of one servo."""
        name, reg = register(name)
        what = f"READ {name}"
        error, data = self._transaction(
            servo_id, Instruction.READ, bytes([reg.address, reg.size]), reg.size, what
        )
        value = reg.decode(data)
        _check_status(servo_id, error, what, value)
        return value

    def write(self, servo_id: int, name: str | Register, value: int) -> None:
        """Write one register of one servo and wait for its acknowledgement."""
        name, reg = register(name)
        what = f"WRITE {name}={value}"
        params = bytes([reg.address]) + self._encode(name, reg, value)
        error, _ = self._transaction(servo_id, Instruction.WRITE, params, 0, what)
        _check_status(servo_id, error, what)

    def sync_read(self, servo_ids: Iterable[int], name: str | Register) -> dict[int, int]:
        """The same register of several servos in one round trip: {id: value}."""
        name, reg = register(name)
        ids = list(servo_ids)
        if not ids or len(set(ids)) != len(ids):
            raise ValueError(f"sync_read needs distinct servo ids, got {ids}")
        for servo_id in ids:
            _check_id(servo_id)
        packet = encode_packet(BROADCAST_ID, Instruction.SYNC_READ, bytes([reg.address, reg.size, *ids]))
        what = f"SYNC_READ {name}"

        def attempt() -> dict[int, tuple[int, bytes]]:
            self._send(packet)
            got: dict[int, tuple[int, bytes]] = {}
            while len(got) < len(ids):
                expected = next(i for i in ids if i not in got)
                reply_id, error, data = self._receive(expected, what, reg.size)
                if reply_id not in ids or reply_id in got:
                    raise CorruptReplyError(
                        f"servo {expected}: unexpected reply from servo {reply_id} to {what} of {ids}",
                        expected,
                    )
                got[reply_id] = (error, data)
            return got

        replies = self._with_retries(attempt)
        values = {servo_id: reg.decode(replies[servo_id][1]) for servo_id in ids}
        for servo_id in ids:
            _check_status(servo_id, replies[servo_id][0], what, values[servo_id])
        return values

    def sync_write(self, values: Mapping[int, int], name: str | Register) -> None:
        """The same register of several servos in one broadcast packet. Servos do not acknowledge it."""
        name, reg = register(name)
        if not values:
            return
        params = bytearray([reg.address, reg.size])
        for servo_id, value in values.items():
            _check_id(servo_id)
            params += bytes([servo_id]) + self._encode(name, reg, value)
        packet = encode_packet(BROADCAST_ID, Instruction.SYNC_WRITE, bytes(params))
        with self._lock:
            self._send(packet)
            self._in_step = True  # nothing will answer it

    def close(self) -> None:
        """Close the port (does not touch the servos: see SO101Arm.close for torque)."""
        self._serial.close()

    @property
    def is_open(self) -> bool:
        return self._serial.is_open

    @property
    def timeout(self) -> float:
        """Seconds to wait for a reply (per read of the port), e.g. longer for a slow EEPROM write."""
        return self._serial.timeout

    @timeout.setter
    def timeout(self, seconds: float) -> None:
        if seconds <= 0:
            raise ValueError("timeout must be > 0")
        self._serial.timeout = seconds

    def __enter__(self) -> FeetechBus:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # -- transactions ------------------------------------------------------------------------------------

    def _transaction(
        self, servo_id: int, instruction: int, params: bytes, n_data: int, what: str
    ) -> tuple[int, bytes]:
        """Send one instruction to one servo and return (error byte, data) of its status packet."""
        _check_id(servo_id)
        packet = encode_packet(servo_id, instruction, params)

        def attempt() -> tuple[int, bytes]:
            self._send(packet)
            reply_id, error, data = self._receive(servo_id, what, n_data)
            if reply_id != servo_id:
                raise CorruptReplyError(
                    f"servo {servo_id}: reply to {what} came from servo {reply_id} (two servos share an id, "
                    "or a late reply?)",
                    servo_id,
                )
            return error, data

        return self._with_retries(attempt)

    def _with_retries(self, attempt: Callable[[], T]) -> T:
        """Run `attempt` under the bus lock; again on no reply or a corrupt one, `retries` more times.

        An attempt that returns has read every reply its request asked for: the bus is in step again."""
        tries = 1 + self.retries
        for n in range(tries):
            try:
                with self._lock:
                    result = attempt()
                    self._in_step = True
                    return result
            except (NoReplyError, CorruptReplyError, WriteStallError) as err:
                if n + 1 == tries:
                    raise type(err)(
                        f"{err} (after {tries} attempt{'s' * (tries > 1)})", err.servo_id
                    ) from None
                log.debug("attempt %d of %d failed: %s", n + 1, tries, err)
        raise AssertionError("unreachable")

    def _encode(self, name: str, reg: Register, value: int) -> bytes:
        try:
            return reg.encode(value)
        except ValueError as err:
            raise ValueError(f"register {name}: {err}") from None

    # -- bytes -------------------------------------------------------------------------------------------

    def _send(self, packet: bytes) -> None:
        """Drop stale input (late replies, noise), waiting for the line to go quiet if the last transaction
        did not finish, then write the packet. The bus is out of step until the caller has read the replies.
        """
        if not self._in_step:
            self._drain()
        self._serial.reset_input_buffer()
        self._rx.clear()
        self._in_step = False
        try:
            self._serial.write(packet)
        except serial.SerialTimeoutException as err:
            raise WriteStallError(f"writing to servo bus {self.port} timed out: {err}") from err

    def _drain(self) -> None:
        """Read and drop input until none arrives for a whole reply timeout: the replies still in flight
        after a failure (the rest of a sync read's batch, a servo answering late) are gone before the next
        request, so none of them can be matched to it. FeetechError if the line never goes quiet."""
        self._rx.clear()
        dropped = 0
        deadline = time.monotonic() + max(MAX_DRAIN_S, 4 * self.timeout)
        while chunk := self._serial.read(max(self._serial.in_waiting, 1)):
            dropped += len(chunk)
            if time.monotonic() > deadline:
                raise FeetechError(
                    f"servo bus {self.port} never goes quiet: {dropped} bytes kept arriving after a failed "
                    "transaction (two hosts on the bus, or a wrong baud rate?)"
                )
        if dropped:
            log.debug("drained %d late bytes from %s", dropped, self.port)
        self._in_step = True

    def _take(self, n: int) -> None:
        """Append up to `n` more bytes to the receive buffer, waiting at most the port timeout."""
        self._rx += self._serial.read(n)

    def _receive(self, servo_id: int, what: str, n_data: int) -> tuple[int, int, bytes]:
        """Read one status packet: (id, error byte, data). Skips noise before the header.

        `servo_id` and `what` only word the errors. Reads the exact number of bytes a `n_data` reply has, so
        a normal reply costs one read call; leftovers stay in the buffer for the next packet of a sync read.
        """
        expected_size = 6 + n_data
        skipped = 0
        while True:
            start = self._rx.find(HEADER)
            if start < 0:
                keep = 1 if self._rx.endswith(b"\xff") else 0
                skipped += len(self._rx) - keep
                del self._rx[: len(self._rx) - keep]
            else:
                skipped += start
                del self._rx[:start]
                while len(self._rx) > 2 and self._rx[2] == 0xFF:  # FF FF FF ...: the header is the last two
                    del self._rx[0]
                    skipped += 1
            if skipped > MAX_NOISE_BYTES:
                raise CorruptReplyError(
                    f"servo {servo_id}: only noise ({skipped} bytes without a packet header) in reply to "
                    f"{what}",
                    servo_id,
                )
            if start >= 0 and len(self._rx) >= 4:
                length = self._rx[3]
                if length < 2:
                    raise CorruptReplyError(
                        f"servo {servo_id}: malformed reply to {what} (length byte {length})", servo_id
                    )
                if len(self._rx) >= length + 4:
                    break
                missing = length + 4 - len(self._rx)
            else:
                missing = max(expected_size - len(self._rx), 1)
            before = len(self._rx)
            self._take(missing)
            if len(self._rx) == before:
                if before:
                    problem = f"incomplete reply (got {before} bytes: {bytes(self._rx).hex(' ')})"
                else:
                    problem = f"no reply ({skipped} bytes of noise only)" if skipped else "no reply"
                raise NoReplyError(f"servo {servo_id}: {problem} to {what} within {self.timeout} s", servo_id)

        length = self._rx[3]
        packet = bytes(self._rx[: length + 4])
        del self._rx[: length + 4]
        if checksum(packet[2:-1]) != packet[-1]:
            raise CorruptReplyError(
                f"servo {servo_id}: bad checksum in reply to {what} (packet {packet.hex(' ')}, expected "
                f"checksum {checksum(packet[2:-1]):02x})",
                servo_id,
            )
        reply_id, error, data = packet[2], packet[4], packet[5:-1]
        if len(data) != n_data:
            raise CorruptReplyError(
                f"servo {servo_id}: reply to {what} carries {len(data)} data bytes, expected {n_data}",
                servo_id,
            )
        return reply_id, error, data


def _check_status(servo_id: int, bits: int, what: str, value: int | None = None) -> None:
    """Raise ServoStatusError naming the fault bits when a status packet's error byte is not zero."""
    if bits:
        names = ", ".join(describe_error_bits(bits))
        raise ServoStatusError(
            f"servo {servo_id} reports {names} error (status 0x{bits:02x}) in reply to {what}",
            servo_id,
            bits,
            value,
        )


def _check_id(servo_id: int) -> None:
    if not 0 <= servo_id <= MAX_ID:
        raise ValueError(f"servo id {servo_id} is outside 0..{MAX_ID}")
