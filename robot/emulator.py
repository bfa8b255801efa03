"""A bus of emulated STS3215 servos behind a real pty, for testing the driver without hardware.

The driver under test opens `ServoEmulator.port` like any serial device, so every byte goes through the
kernel's tty layer exactly as with a USB adapter: the packets, timeouts and noise handling that are tested are
the real ones, with no mock of our own code in between.

The model is deliberately simple and deterministic: each servo is a 256-byte register file; while torque is
enabled the present position jumps to the goal (clamped to the position limits) the moment a goal or the
torque is written. Faults can be injected per servo (a corrupt checksum, silence, error bits, a reply under
another id, noise before a reply) to exercise the driver's error paths, and on the whole line: replies that
arrive late and one after another (`delay_replies`, as a USB adapter's latency and a sync read's batch
deliver them), and status packets damaged at random (`damage_at_random`: a flipped bit, a lost byte, a
broken header), so a failure can land in the middle of a sync read while the rest of its batch is still on
the way.
"""

from __future__ import annotations

import contextlib
import os
import queue
import random
import select
import threading
import time
import tty
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from types import TracebackType

from robot.feetech import (
    BROADCAST_ID,
    CONTROL_TABLE,
    HEADER,
    STS3215_MODEL_NUMBER,
    Instruction,
    checksum,
    encode_packet,
)

REGISTER_FILE_SIZE = 256

DEFAULTS: dict[str, int] = {
    "model_number": STS3215_MODEL_NUMBER,
    "baud_rate": 0,  # 1 Mbaud
    "return_delay_time": 0,
    "response_status_level": 1,  # acknowledge writes too, not only reads and pings
    "min_position_limit": 0,
    "max_position_limit": 4095,
    "max_temperature_limit": 70,
    "homing_offset": 0,
    "operating_mode": 0,  # position mode
    "torque_enable": 0,
    "goal_position": 2048,
    "present_position": 2048,
    "present_voltage": 120,  # 12.0 V, the SO-101 follower's supply
    "present_temperature": 28,
}
"""Power-on register values of an emulated servo (its id comes from the bus)."""


@dataclass(frozen=True)
class Received:
    """A well-formed packet the emulator received (whoever it was addressed to)."""

    servo_id: int
    instruction: int
    params: bytes


@dataclass
class _Servo:
    registers: bytearray
    error_bits: int = 0
    silent: bool = False
    corrupt_replies: int = 0
    reply_as: int | None = None
    noise: bytes = b""

    def get(self, name: str) -> int:
        reg = CONTROL_TABLE[name]
        return reg.decode(bytes(self.registers[reg.address : reg.address + reg.size]))

    def set(self, name: str, value: int) -> None:
        reg = CONTROL_TABLE[name]
        self.registers[reg.address : reg.address + reg.size] = reg.encode(value)

    def settle(self) -> None:
        """With torque on, the servo is at its goal (clamped to the position limits) as soon as it gets it."""
        if self.get("torque_enable"):
            lo, hi = self.get("min_position_limit"), self.get("max_position_limit")
            goal = self.get("goal_position")
            self.set("present_position", min(max(goal, lo), hi) if lo < hi else goal)


@dataclass
class _Parser:
    """Cuts packets out of the incoming byte stream the way a servo does: resync on FF FF, drop bad ones."""

    buffer: bytearray = field(default_factory=bytearray)
    rejected: int = 0

    def feed(self, data: bytes) -> Iterator[Received]:
        self.buffer += data
        buf = self.buffer
        while True:
            start = buf.find(HEADER)
            if start < 0:
                del buf[: len(buf) - (1 if buf.endswith(b"\xff") else 0)]
                return
            del buf[:start]
            while len(buf) > 2 and buf[2] == 0xFF:
                del buf[0]
            if len(buf) < 4:
                return
            total = buf[3] + 4
            if buf[3] < 2:
                del buf[:2]
                self.rejected += 1
                continue
            if len(buf) < total:
                return
            packet = bytes(buf[:total])
            del buf[:total]
            if checksum(packet[2:-1]) != packet[-1]:
                self.rejected += 1
                continue
            yield Received(packet[2], packet[4], packet[5:-1])


class ServoEmulator:
    """Emulated STS3215 servos with the given ids, served on a background thread behind a pty.

    `port` is the pty's slave device: open it with pyserial (or `FeetechBus`). Use as a context manager, or
    call `stop()`; both join the thread and close the pty.
    """

    def __init__(self, ids: Iterable[int] = range(1, 7), positions: Mapping[int, int] | None = None):
        self._servos: dict[int, _Servo] = {}
        for servo_id in ids:
            servo = _Servo(bytearray(REGISTER_FILE_SIZE))
            for name, value in DEFAULTS.items():
                servo.set(name, value)
            servo.set("id", servo_id)
            self._servos[servo_id] = servo
        for servo_id, position in (positions or {}).items():
            self._servos[servo_id].set("present_position", position)
            self._servos[servo_id].set("goal_position", position)

        self._received: list[Received] = []
        self._parser = _Parser()
        self._changed = threading.Condition()
        self._failure: BaseException | None = None
        self._latency_s = self._between_s = 0.0
        self._damage_rate = 0.0
        self._damage_random = random.Random(0)
        self._damaged = 0

        self._master, self._slave = os.openpty()
        tty.setraw(self._slave)  # no echo, no newline translation: a byte in is a byte out
        self.port = os.ttyname(self._slave)
        self._wake_r, self._wake_w = os.pipe()
        self._outbox: queue.SimpleQueue[tuple[float, bytes] | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._serve, name="servo-emulator", daemon=True)
        self._sender = threading.Thread(target=self._send_replies, name="servo-emulator-tx", daemon=True)
        self._thread.start()
        self._sender.start()

    # -- inspecting and setting up servos ----------------------------------------------------------------

    @property
    def ids(self) -> list[int]:
        return list(self._servos)

    def registers(self, servo_id: int) -> bytes:
        """A copy of one servo's whole register file."""
        with self._changed:
            return bytes(self._servos[servo_id].registers)

    def read_register(self, servo_id: int, name: str) -> int:
        """One register of one servo, decoded like the driver decodes it."""
        with self._changed:
            return self._servos[servo_id].get(name)

    def write_register(self, servo_id: int, name: str, value: int) -> None:
        """Set a register directly (test setup): no packet, no physics."""
        with self._changed:
            self._servos[servo_id].set(name, value)

    def write_distinct_registers(self) -> dict[str, dict[int, int]]:
        """Give a few registers values that differ between servos and between registers (servo ids 1..6),
        so that a reply taken for the wrong servo or the wrong request shows as a wrong value; returns them
        ({register: {servo id: value}})."""
        values = {
            "present_position": {i: 1000 + 10 * i for i in self._servos},
            "max_position_limit": {i: 4095 - i for i in self._servos},
            "min_position_limit": {i: i for i in self._servos},
            "homing_offset": {i: -100 * i for i in self._servos},
        }
        for name, per_servo in values.items():
            for servo_id, value in per_servo.items():
                self.write_register(servo_id, name, value)
        return values

    def received(self) -> list[Received]:
        """Every well-formed packet received so far, in order."""
        with self._changed:
            return list(self._received)

    @property
    def rejected(self) -> int:
        """How many incoming packets were dropped as malformed or with a bad checksum."""
        with self._changed:
            return self._parser.rejected

    def wait_until(self, condition: Callable[[], bool], timeout: float = 2.0) -> bool:
        """Block until `condition()` holds, re-checking after every packet handled; False on timeout.

        For packets that get no reply (sync write, broadcast), where there is no answer to wait for.
        """
        with self._changed:
            return self._changed.wait_for(condition, timeout)

    # -- fault injection ---------------------------------------------------------------------------------

    def corrupt_next_checksum(self, servo_id: int, count: int = 1) -> None:
        """The servo's next `count` replies carry a wrong checksum."""
        with self._changed:
            self._servos[servo_id].corrupt_replies = count

    def silence(self, servo_id: int, silent: bool = True) -> None:
        """The servo stops answering anything (it still executes writes), like one with a broken data line."""
        with self._changed:
            self._servos[servo_id].silent = silent

    def set_error_bits(self, servo_id: int, bits: int) -> None:
        """Error byte sent in every status packet of the servo from now on (0 clears it)."""
        with self._changed:
            self._servos[servo_id].error_bits = bits

    def reply_as_next(self, servo_id: int, other_id: int) -> None:
        """The servo's next reply claims to come from `other_id`."""
        with self._changed:
            self._servos[servo_id].reply_as = other_id

    def noise_before_next_reply(self, servo_id: int, noise: bytes) -> None:
        """Bytes sent just before the servo's next reply, like line noise or a partial late packet."""
        with self._changed:
            self._servos[servo_id].noise = bytes(noise)

    def delay_replies(self, latency_s: float, between_s: float = 0.0) -> None:
        """Every reply starts `latency_s` after the one before it is out (the first after the request), and
        the status packets of one sync read follow each other `between_s` apart: the batch is still arriving
        while the driver reads its first packets."""
        if latency_s < 0 or between_s < 0:
            raise ValueError("delays must be >= 0")
        with self._changed:
            self._latency_s, self._between_s = latency_s, between_s

    def damage_at_random(self, rate: float, seed: int = 0) -> None:
        """Damage each status packet with probability `rate`, reproducibly from `seed`: one bit flipped in
        one byte (the header included), or one byte lost."""
        if not 0 <= rate <= 1:
            raise ValueError(f"rate must be in [0, 1], got {rate}")
        with self._changed:
            self._damage_rate, self._damage_random = rate, random.Random(seed)

    @property
    def damaged(self) -> int:
        """How many status packets `damage_at_random` has damaged so far."""
        with self._changed:
            return self._damaged

    def inject(self, data: bytes) -> None:
        """Send bytes nobody asked for (a late reply, noise) to whoever has the port open."""
        self._write(data)

    # -- lifecycle ---------------------------------------------------------------------------------------

    def stop(self) -> None:
        """Stop serving, join the thread, close the pty; re-raises a crash of the serving thread."""
        if self._thread.is_alive():
            os.write(self._wake_w, b"x")
            self._thread.join()
        if self._sender.is_alive():
            self._outbox.put(None)
            self._sender.join()
        for fd in (self._master, self._slave, self._wake_r, self._wake_w):
            with contextlib.suppress(OSError):
                os.close(fd)
        self._master = self._slave = self._wake_r = self._wake_w = -1
        if self._failure is not None:
            failure, self._failure = self._failure, None
            raise RuntimeError("the servo emulator thread crashed") from failure

    def __enter__(self) -> ServoEmulator:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    # -- serving -----------------------------------------------------------------------------------------

    def _serve(self) -> None:
        try:
            while True:
                ready, _, _ = select.select([self._master, self._wake_r], [], [])
                if self._wake_r in ready:
                    return
                try:
                    data = os.read(self._master, 4096)
                except OSError:  # EIO while no one has the slave open: nothing to read
                    continue
                with self._changed:
                    for packet in self._parser.feed(data):
                        for k, reply in enumerate(self._handle(packet)):
                            self._outbox.put((self._between_s if k else self._latency_s, reply))
                    self._changed.notify_all()
        except BaseException as err:  # surfaced by stop()
            self._failure = err

    def _send_replies(self) -> None:
        """Write queued replies in order, each after its delay, while `_serve` goes on reading requests."""
        try:
            while (item := self._outbox.get()) is not None:
                delay, reply = item
                if delay:
                    time.sleep(delay)
                with contextlib.suppress(OSError):  # the pty closed under a late reply
                    self._write(reply)
        except BaseException as err:  # surfaced by stop()
            self._failure = err

    def _write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            view = view[os.write(self._master, view) :]

    def _handle(self, packet: Received) -> list[bytes]:
        """Execute one packet on the addressed servo(s) and return the status packets they send back."""
        self._received.append(packet)
        p, instr = packet.params, packet.instruction
        if instr == Instruction.SYNC_READ and len(p) >= 2:
            address, size = p[0], p[1]
            replies = [
                self._reply(self._servos[i], i, bytes(self._servos[i].registers[address : address + size]))
                for i in p[2:]
                if i in self._servos
            ]
            return [r for r in replies if r]
        if instr == Instruction.SYNC_WRITE and len(p) >= 2:
            address, size = p[0], p[1]
            for k in range(2, len(p) - size, size + 1):
                if p[k] in self._servos:
                    self._store(self._servos[p[k]], address, p[k + 1 : k + 1 + size])
            return []

        targets = list(self._servos) if packet.servo_id == BROADCAST_ID else [packet.servo_id]
        replies = []
        for servo_id in targets:
            servo = self._servos.get(servo_id)
            if servo is None:
                continue
            if instr == Instruction.PING:
                replies.append(self._reply(servo, servo_id, b""))
            elif instr == Instruction.READ and len(p) == 2:
                replies.append(self._reply(servo, servo_id, bytes(servo.registers[p[0] : p[0] + p[1]])))
            elif instr == Instruction.WRITE and len(p) >= 2:
                self._store(servo, p[0], p[1:])
                if servo.get("response_status_level") and packet.servo_id != BROADCAST_ID:
                    replies.append(self._reply(servo, servo_id, b""))
        return [r for r in replies if r]

    def _store(self, servo: _Servo, address: int, data: bytes) -> None:
        servo.registers[address : address + len(data)] = data
        servo.settle()

    def _reply(self, servo: _Servo, servo_id: int, data: bytes) -> bytes:
        if servo.silent:
            return b""
        reply_id = servo.reply_as if servo.reply_as is not None else servo_id
        packet = bytearray(encode_packet(reply_id, servo.error_bits, data))
        if servo.corrupt_replies > 0:
            packet[-1] ^= 0xFF
            servo.corrupt_replies -= 1
        packet = servo.noise + self._damage(packet)
        servo.reply_as, servo.noise = None, b""
        return bytes(packet)

    def _damage(self, packet: bytearray) -> bytearray:
        """`packet` with one bit flipped or one byte lost, at the rate `damage_at_random` set."""
        rng = self._damage_random
        if not self._damage_rate or rng.random() >= self._damage_rate:
            return packet
        self._damaged += 1
        at = rng.randrange(len(packet))
        if rng.random() < 0.5:
            del packet[at]
        else:
            packet[at] ^= 1 << rng.randrange(8)
        return packet
