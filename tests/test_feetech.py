"""The Feetech bus driver against emulated servos over a real pty: packets, round trips, faults, errors."""

from __future__ import annotations

import select
import threading
from collections.abc import Iterator

import pytest

from models.errors import WorldloopError
from robot.emulator import ServoEmulator
from robot.feetech import (
    BROADCAST_ID,
    CONTROL_TABLE,
    CorruptReplyError,
    FeetechBus,
    FeetechError,
    Instruction,
    NoReplyError,
    ServoStatusError,
    describe_error_bits,
    encode_packet,
)
from tests.servos import HEALTHY_TIMEOUT


@pytest.fixture
def emulator() -> Iterator[ServoEmulator]:
    with ServoEmulator(ids=range(1, 7)) as emu:
        yield emu


@pytest.fixture
def bus(emulator: ServoEmulator) -> Iterator[FeetechBus]:
    """A bus with a generous timeout: replies come in microseconds, the timeout only bounds a failure."""
    with FeetechBus(emulator.port, timeout=0.5, retries=2) as b:
        yield b


def reads_of(emulator: ServoEmulator, servo_id: int) -> int:
    return sum(1 for p in emulator.received() if p.servo_id == servo_id and p.instruction == Instruction.READ)


# ----------------------------------------------------------------------------------------------------------
# Packets and encodings


def test_packets_match_the_manuals_examples():
    # Ping servo 1, and read 2 bytes at 0x38 (present position) of servo 1, as in Feetech's protocol manual.
    assert encode_packet(1, Instruction.PING) == bytes.fromhex("ff ff 01 02 01 fb")
    assert encode_packet(1, Instruction.READ, bytes([0x38, 0x02])) == bytes.fromhex("ff ff 01 04 02 38 02 be")


def test_control_table_addresses():
    expected = {
        "model_number": (3, 2),
        "id": (5, 1),
        "baud_rate": (6, 1),
        "min_position_limit": (9, 2),
        "max_position_limit": (11, 2),
        "operating_mode": (33, 1),
        "torque_enable": (40, 1),
        "acceleration": (41, 1),
        "goal_position": (42, 2),
        "goal_time": (44, 2),
        "goal_speed": (46, 2),
        "lock": (55, 1),
        "present_position": (56, 2),
        "present_speed": (58, 2),
        "present_load": (60, 2),
        "present_voltage": (62, 1),
        "present_temperature": (63, 1),
        "moving": (66, 1),
    }
    assert {name: (CONTROL_TABLE[name].address, CONTROL_TABLE[name].size) for name in expected} == expected


def test_sign_magnitude_registers():
    speed, goal_speed, offset = (
        CONTROL_TABLE["present_speed"],
        CONTROL_TABLE["goal_speed"],
        CONTROL_TABLE["homing_offset"],
    )
    assert speed.encode(-5) == bytes([0x05, 0x80]) and speed.decode(bytes([0x05, 0x80])) == -5
    assert speed.decode(bytes([0x05, 0x00])) == 5
    assert goal_speed.encode(-1000) == (1 << 15 | 1000).to_bytes(2, "little")
    assert offset.encode(-37) == (1 << 11 | 37).to_bytes(2, "little")
    assert offset.decode(offset.encode(-2047)) == -2047
    with pytest.raises(ValueError):
        offset.encode(2048)
    with pytest.raises(ValueError):
        CONTROL_TABLE["torque_enable"].encode(256)
    with pytest.raises(ValueError):
        CONTROL_TABLE["model_number"].encode(-1)


def test_only_the_offset_and_speeds_are_signed():
    signed = {name: reg.sign_bit for name, reg in CONTROL_TABLE.items() if reg.sign_bit is not None}
    assert signed == {"homing_offset": 11, "goal_speed": 15, "present_speed": 15}
    position = CONTROL_TABLE["present_position"]
    assert position.decode((4095).to_bytes(2, "little")) == 4095
    assert position.decode((1 << 15 | 5).to_bytes(2, "little")) == 32773  # never a negative position
    assert CONTROL_TABLE["present_load"].decode((1 << 10 | 300).to_bytes(2, "little")) == 1324
    assert CONTROL_TABLE["goal_position"].encode(4095) == bytes([0xFF, 0x0F])
    for name in ("goal_position", "min_position_limit", "max_position_limit"):
        with pytest.raises(ValueError, match="4095"):
            CONTROL_TABLE[name].encode(4096)
        with pytest.raises(ValueError):
            CONTROL_TABLE[name].encode(-1)


def test_error_bits_are_named():
    assert describe_error_bits(0x01 | 0x04 | 0x20) == ["input voltage", "overheat", "overload"]
    assert describe_error_bits(0x02 | 0x08) == ["angle sensor", "overcurrent"]
    assert describe_error_bits(0x40) == ["bit 6"]


# ----------------------------------------------------------------------------------------------------------
# Round trips


def test_ping_returns_the_model_number(bus: FeetechBus):
    assert [bus.ping(i) for i in range(1, 7)] == [777] * 6


def test_read_and_write_round_trip(emulator: ServoEmulator, bus: FeetechBus):
    emulator.write_register(2, "present_position", 1234)
    assert bus.read(2, "present_position") == 1234
    assert bus.read(2, "id") == 2

    bus.write(3, "torque_enable", 1)
    assert emulator.read_register(3, "torque_enable") == 1
    bus.write(3, "goal_position", 3000)
    assert emulator.read_register(3, "goal_position") == 3000
    assert emulator.read_register(3, "present_position") == 3000  # torque on: the servo goes there
    assert bus.read(3, "present_position") == 3000

    bus.write(4, "homing_offset", -37)  # signed: written sign-magnitude, read back signed
    assert emulator.registers(4)[31:33] == (1 << 11 | 37).to_bytes(2, "little")
    assert bus.read(4, "homing_offset") == -37


def test_sync_read_and_sync_write(emulator: ServoEmulator, bus: FeetechBus):
    for i in range(1, 7):
        emulator.write_register(i, "present_position", 1000 + i)
    assert bus.sync_read([6, 1, 3], "present_position") == {6: 1006, 1: 1001, 3: 1003}
    packets = [p for p in emulator.received() if p.instruction == Instruction.SYNC_READ]
    assert packets[-1].servo_id == BROADCAST_ID and packets[-1].params == bytes([56, 2, 6, 1, 3])

    bus.sync_write({1: 1, 2: 1}, "torque_enable")
    bus.sync_write({1: 500, 2: 3500}, "goal_position")
    # Sync write gets no reply; a read's reply proves the emulator handled everything sent before it.
    assert bus.sync_read([1, 2], "present_position") == {1: 500, 2: 3500}
    assert [emulator.read_register(i, "goal_position") for i in (1, 2, 3)] == [500, 3500, 2048]


def test_noise_before_a_reply_is_skipped(emulator: ServoEmulator, bus: FeetechBus):
    emulator.noise_before_next_reply(1, b"\x00\x13\xff\x42\xff")
    assert bus.read(1, "model_number") == 777
    emulator.noise_before_next_reply(2, b"\xff")  # FF FF FF id ...: the header is the last two
    assert bus.read(2, "present_position") == 2048
    assert reads_of(emulator, 1) == 1 and reads_of(emulator, 2) == 1


def test_stale_input_is_flushed_before_a_transaction(emulator: ServoEmulator, bus: FeetechBus):
    # A complete, valid but stale status packet from servo 1 (a late reply) waits in the input buffer.
    emulator.inject(encode_packet(1, 0, bytes([0x99, 0x09])))
    readable, _, _ = select.select([bus._serial], [], [], 2.0)
    assert readable
    assert bus.read(1, "present_position") == 2048


# ----------------------------------------------------------------------------------------------------------
# Faults


def test_a_corrupt_checksum_is_retried(emulator: ServoEmulator, bus: FeetechBus):
    emulator.corrupt_next_checksum(3)
    assert bus.read(3, "present_position") == 2048
    assert reads_of(emulator, 3) == 2


def test_a_persistently_corrupt_reply_names_the_servo(emulator: ServoEmulator, bus: FeetechBus):
    emulator.corrupt_next_checksum(3, count=5)
    with pytest.raises(CorruptReplyError, match=r"servo 3: bad checksum .*after 3 attempts") as info:
        bus.read(3, "present_position")
    assert info.value.servo_id == 3
    assert isinstance(info.value, WorldloopError)
    assert reads_of(emulator, 3) == 3


def test_a_silent_servo_times_out_naming_it(emulator: ServoEmulator):
    emulator.silence(4)
    with FeetechBus(emulator.port, timeout=0.05, retries=1) as bus:
        with pytest.raises(NoReplyError, match=r"servo 4: no reply to READ present_position") as info:
            bus.read(4, "present_position")
        assert info.value.servo_id == 4
        assert reads_of(emulator, 4) == 2
        with pytest.raises(NoReplyError, match=r"servo 4: no reply to PING"):
            bus.ping(4)
        # In a sync read the servos before it still answer; the error names the one that did not.
        with pytest.raises(NoReplyError, match=r"servo 4: no reply to SYNC_READ present_position"):
            bus.sync_read([1, 2, 3, 4, 5, 6], "present_position")
        bus.timeout = 0.5  # only failures above needed the short timeout
        assert bus.read(5, "id") == 5  # the bus recovers


def test_a_silent_servo_still_executes_writes(emulator: ServoEmulator):
    emulator.silence(2)
    with (
        FeetechBus(emulator.port, timeout=0.05, retries=0) as bus,
        pytest.raises(NoReplyError, match="servo 2"),
    ):
        bus.write(2, "torque_enable", 1)
    assert emulator.read_register(2, "torque_enable") == 1


def test_servo_error_bits_raise_with_their_names(emulator: ServoEmulator, bus: FeetechBus):
    emulator.set_error_bits(5, 0x04 | 0x20)
    with pytest.raises(ServoStatusError, match=r"servo 5 reports overheat, overload error") as info:
        bus.read(5, "present_temperature")
    assert info.value.servo_id == 5 and info.value.bits == 0x24 and info.value.value == 28
    assert reads_of(emulator, 5) == 1  # not retried: the servo answered
    with pytest.raises(ServoStatusError, match=r"servo 5 reports overheat"):
        bus.sync_read([1, 5], "present_position")
    emulator.set_error_bits(5, 0)
    assert bus.read(5, "present_temperature") == 28


def test_a_reply_from_the_wrong_servo_is_retried_then_rejected(emulator: ServoEmulator):
    with FeetechBus(emulator.port, timeout=0.5, retries=1) as bus:
        emulator.reply_as_next(1, 7)
        assert bus.read(1, "id") == 1
    assert reads_of(emulator, 1) == 2
    with FeetechBus(emulator.port, timeout=0.5, retries=0) as bus:
        emulator.reply_as_next(1, 7)
        with pytest.raises(CorruptReplyError, match=r"servo 1: reply to READ id came from servo 7") as info:
            bus.read(1, "id")
    assert info.value.servo_id == 1


# ----------------------------------------------------------------------------------------------------------
# A bad line: damaged packets while the rest of a batch is still arriving

IDS = list(range(1, 7))


def assert_names_its_servo(err: FeetechError) -> None:
    assert err.servo_id in IDS, err
    assert f"servo {err.servo_id}" in str(err)


def test_a_damaged_packet_mid_batch_leaves_the_bus_in_step(emulator: ServoEmulator):
    """The rest of the batch is still on the line when the damaged packet is found: its late replies must
    not be taken for the retry's, nor for the next request's (another register)."""
    distinct = emulator.write_distinct_registers()
    emulator.delay_replies(0.001, between_s=0.004)
    with FeetechBus(emulator.port, timeout=HEALTHY_TIMEOUT, retries=2) as bus:
        emulator.corrupt_next_checksum(3)
        assert bus.sync_read(IDS, "present_position") == distinct["present_position"]
        assert bus.sync_read(IDS, "max_position_limit") == distinct["max_position_limit"]
        assert bus.read(2, "homing_offset") == -200
    sync_reads = [p for p in emulator.received() if p.instruction == Instruction.SYNC_READ]
    assert len(sync_reads) == 3  # the damaged batch, its retry, the next request


def test_one_bad_packet_in_ten_never_yields_a_wrong_value(emulator: ServoEmulator):
    distinct = emulator.write_distinct_registers()
    emulator.delay_replies(0.0005, between_s=0.001)
    emulator.damage_at_random(0.1, seed=7)
    names = list(distinct)
    ok, failures = 0, []
    with FeetechBus(emulator.port, timeout=HEALTHY_TIMEOUT, retries=2) as bus:
        for k in range(60):
            name = names[k % len(names)]
            try:
                values = bus.sync_read(IDS, name)
            except FeetechError as err:
                failures.append(err)
                continue
            assert values == distinct[name], f"read {k} of {name}"
            ok += 1
        for servo_id in IDS:  # single-servo transactions on the same bad line
            try:
                assert bus.read(servo_id, "present_position") == distinct["present_position"][servo_id]
            except FeetechError as err:
                failures.append(err)
    assert emulator.damaged >= 20  # the line really was bad
    assert ok >= 40  # retries recover most reads (an attempt of 6 packets fails 47% of the time)
    for err in failures:
        assert_names_its_servo(err)


def test_sync_writes_land_between_damaged_reads(emulator: ServoEmulator):
    emulator.delay_replies(0.0005, between_s=0.001)
    emulator.damage_at_random(0.1, seed=3)
    with FeetechBus(emulator.port, timeout=HEALTHY_TIMEOUT, retries=2) as bus:
        bus.sync_write(dict.fromkeys(IDS, 1), "torque_enable")
        for k in range(30):
            goals = {i: 500 + 97 * ((i + k) % 30) for i in IDS}
            bus.sync_write(goals, "goal_position")
            try:
                assert bus.sync_read(IDS, "present_position") == goals, f"step {k}"
            except FeetechError as err:
                assert_names_its_servo(err)
            assert emulator.wait_until(
                lambda g=goals: all(emulator.read_register(i, "goal_position") == g[i] for i in IDS)
            ), f"step {k}: the goals did not land"
    assert emulator.damaged >= 10


def test_a_line_that_never_goes_quiet_is_an_error(emulator: ServoEmulator):
    emulator.corrupt_next_checksum(1)
    stop = threading.Event()

    def chatter() -> None:
        while not stop.wait(0.005):
            emulator.inject(b"\x00")

    with FeetechBus(emulator.port, timeout=0.05, retries=1) as bus:
        thread = threading.Thread(target=chatter)
        thread.start()
        try:
            with pytest.raises(FeetechError, match="never goes quiet"):
                bus.read(1, "id")
        finally:
            stop.set()
            thread.join()


def test_bad_arguments_are_refused_before_sending(emulator: ServoEmulator, bus: FeetechBus):
    with pytest.raises(ValueError, match="unknown register"):
        bus.read(1, "no_such_register")
    with pytest.raises(ValueError, match="goal_position"):
        bus.write(1, "goal_position", 1 << 15)
    with pytest.raises(ValueError, match="servo id"):
        bus.read(254, "id")
    with pytest.raises(ValueError, match="distinct"):
        bus.sync_read([1, 1], "id")
    assert emulator.received() == []


def test_a_missing_port_is_a_clear_error(tmp_path):
    with pytest.raises(FeetechError, match="cannot open servo bus"):
        FeetechBus(str(tmp_path / "ttyUSB9"))


def test_the_emulator_stops_cleanly():
    emulator = ServoEmulator(ids=[1])
    with FeetechBus(emulator.port, timeout=0.5) as bus:
        assert bus.ping(1) == 777
    thread = emulator._thread
    emulator.stop()
    assert not thread.is_alive()
    emulator.stop()  # idempotent
