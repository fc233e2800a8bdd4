"""PROTOCOL.md, claim by claim, as a phone sees it (issue 14, "the spec kept").

Each test plays what a phone (or a stranger's phone) does and checks what the spec says it gets:
the virtual-board tests run the real firmware under MicroPython with the real NimBLE stack; the
spec's tables are checked against the codec by reading PROTOCOL.md itself, so the two cannot
drift apart. Claims other test files already check are not repeated here.
"""

from __future__ import annotations

import asyncio
import json
import math
import re
from pathlib import Path

import pytest
from bumble import att
from bumble.gatt import Characteristic
from bumble.pairing import PairingConfig, PairingDelegate
from jikimi import VERSION
from jikimi import protocol as p
from jikimi import protocol_json as pj
from jikimi_host.rig.firmware import (
    CONFIG,
    PASSKEY,
    PhoneApp,
    firmware_board,
    log_records,
    records_since,
)
from jikimi_host.sim.phone import Phone
from jikimi_host.wait import until

# What an ATT layer answers a link without an authenticated key (PROTOCOL.md §2.1).
REFUSED = {att.ATT_INSUFFICIENT_AUTHENTICATION_ERROR, att.ATT_INSUFFICIENT_ENCRYPTION_ERROR}
# The rig's test console opens the pairing window (as the owner's hold at power-up does, 3 s faster).
RIG = dict(CONFIG, test_console=True)
PAUSE_S = 0.3  # between two presses: far above the 2 × bounce_ms the debouncer needs to tell them apart


# -- helpers: the bell, its window, the owner's phone ---------------------------------------------


async def logged(board, kind: str, mark: int = 0, timeout_s: float = 30.0, **fields) -> list[dict]:
    """The bell's log records of `kind` with these fields after the first `mark` records, once
    there is one (WaitTimeout with the console's tail if none comes)."""
    return await until(lambda: records_since(board, mark, kind, **fields), timeout_s, f"log {kind} {fields}",
                       log=lambda: board.console.tail(40))


async def start(board) -> float:
    """Power the bell up; the loop time it was started at."""
    started = asyncio.get_running_loop().time()
    await board.start()
    await logged(board, "test_console", 0, msg="ready")
    return started


async def open_window(board) -> None:
    mark = len(log_records(board))
    board.console.write(b"pairing\n")
    await logged(board, "core", mark, msg="pairing open")


async def pair_owner(board, radio, phone: Phone | None = None, app: type[PhoneApp] = PhoneApp) -> PhoneApp:
    """The owner's phone pairs with the passkey from the label (the window must be open),
    subscribes to Events and is ready to command."""
    mark = len(log_records(board))
    if phone is None:
        phone = await Phone(radio).start()
    if not phone.connected:
        await phone.connect(board.ble.on_air_address)
    await phone.pair(PASSKEY)
    await logged(board, "ble", mark, msg="bonded")
    owner = app(phone)
    await owner.open()
    return owner


async def read(characteristic: Characteristic) -> bytes:
    return bytes(await characteristic.read_value())


async def refused_at_att(events, commands) -> None:
    """Events is not readable and Commands not writable on this link: the ATT layer says no."""
    with pytest.raises(att.ATT_Error) as refused:
        await events.read_value()
    assert att_error(refused) in REFUSED
    with pytest.raises(att.ATT_Error) as refused:
        await commands.write_value(p.encode(p.Message(p.REQUEST_STATUS, counter=1)), with_response=True)
    assert att_error(refused) in REFUSED


def att_error(excinfo) -> int:
    return excinfo.value.error_code


# -- §2.1, §2.5, §6.2, §6.3: what a phone reads ---------------------------------------------------


@pytest.mark.micropython
async def test_unpaired_only_info_answers_paired_a_read_of_events_is_the_current_status(tmp_path, radio):
    """§2.1: Events is "read, notify", a read returns a current STATUS frame, and only on an
    authenticated link; Commands is write with response; Info is the one open read, an INFO frame
    with the versions only (§6.3) that says nothing of the state. Notifications still carry the
    event (§5), not the value a read returns. §2.5: frames do not grow with a larger MTU."""
    async for bell in firmware_board(tmp_path / "flash", radio, RIG):
        started = await start(bell)
        boot = records_since(bell, 0, "boot")[0]
        phone = await Phone(radio).start()
        await phone.connect(bell.ble.on_air_address)

        events = await phone.characteristic(p.uuid(p.UUID_EVENTS))
        commands = await phone.characteristic(p.uuid(p.UUID_COMMANDS))
        info = await phone.characteristic(p.uuid(p.UUID_INFO))
        P = Characteristic.Properties
        shown = P.READ | P.NOTIFY | P.INDICATE | P.WRITE | P.WRITE_WITHOUT_RESPONSE
        assert events.properties & shown == P.READ | P.NOTIFY
        assert commands.properties & shown == P.WRITE  # with response only
        assert info.properties & shown == P.READ

        # Not paired: Info answers, Events and Commands are refused at the ATT layer.
        info_frame = await read(info)
        assert len(info_frame) == 6
        assert p.decode(info_frame) == p.Message(p.INFO, fw_major=VERSION[0], fw_minor=VERSION[1],
                                                 fw_patch=VERSION[2], max_frame=20)
        await refused_at_att(events, commands)

        # The owner pairs on that link; now a read of Events is the current STATUS.
        await open_window(bell)
        owner = await pair_owner(bell, radio, phone)
        first = await read(owner.events)
        status = p.decode(first)  # 0 bytes here would be BAD_LENGTH: the value was never written
        assert status.type == p.STATUS and len(first) <= p.MAX_FRAME
        assert (status.fw_major, status.fw_minor, status.fw_patch) == VERSION
        assert status.roles == p.ROLE_PANIC and status.epoch == boot["epoch"]
        assert status.journal_depth == 0 and not status.flags & (p.FLAG_ALARM_ACTIVE | p.FLAG_PAIRING_WINDOW)
        assert 0 <= status.uptime_s <= asyncio.get_running_loop().time() - started + 1
        await asyncio.sleep(1.5)
        later = p.decode(await read(owner.events))
        assert later.type == p.STATUS and later.uptime_s > status.uptime_s

        # An alarm: the notification is the event itself; a read says what is going on now.
        await bell.press("button", hold_s=2.0)
        await until(lambda: owner.of(p.ALARM_RAISED), what="the alarm notified")
        alarm = owner.of(p.ALARM_RAISED)[0]
        assert (alarm.mode, alarm.trigger, alarm.seq) == (p.MODE_LOUD, p.TRIGGER_HOLD, 1)
        assert alarm.time == 0 and alarm.epoch == boot["epoch"] != 0  # no SET_TIME yet: time 0 (§4)
        during = p.decode(await read(owner.events))
        assert during.type == p.STATUS and during.journal_depth == 1
        assert during.flags & p.FLAG_ALARM_ACTIVE and during.flags & p.FLAG_SIREN_ON
        assert await read(info) == info_frame  # Info tells nothing of the alarm (§6.3)

        # A phone may exchange a larger MTU; the frames stay within 20 bytes (§2.5).
        await owner.phone.peer.request_mtu(247)
        assert len(await read(owner.events)) <= p.MAX_FRAME
        before = len(owner.frames)
        await owner.send(p.REQUEST_STATUS)
        await until(lambda: owner.of(p.STATUS) and len(owner.frames) > before + 1, what="RESULT and STATUS")
        assert all(len(p.encode(m)) <= p.MAX_FRAME for m in owner.frames)


# -- §2.4, §2.1, §2.2: a stranger in radio range --------------------------------------------------

AD_FLAGS, AD_UUID128_COMPLETE = 0x01, 0x07


def ad_structures(data: bytes) -> list[tuple[int, bytes]]:
    out, i = [], 0
    while i < len(data) and data[i]:
        length = data[i]
        out.append((data[i + 1], bytes(data[i + 2:i + 1 + length])))
        i += 1 + length
    return out


class Scanner:
    """A stranger's phone listening to what the bell advertises (active scan: scan responses too)."""

    def __init__(self, phone: Phone) -> None:
        self.phone = phone
        self.heard: list[tuple[float, object]] = []
        phone.device.on("advertisement", lambda adv: self.heard.append((asyncio.get_running_loop().time(), adv)))

    async def start(self) -> "Scanner":
        await self.phone.device.start_scanning(active=True, filter_duplicates=False)
        return self

    async def adverts_after(self, since: float, count: int = 2) -> list:
        found = await until(lambda: len(self.since(since)) >= count and self.since(since), what="adverts")
        return found

    def since(self, since: float) -> list:
        return [adv for at, adv in self.heard if at > since]


SERVICE_UUID_LE = bytes(reversed(bytes.fromhex(p.uuid(p.UUID_SERVICE).replace("-", ""))))


@pytest.mark.micropython
async def test_a_stranger_in_range_sees_no_beacon_reads_nothing_and_hears_nothing(tmp_path, radio):
    """§2.4: a resolvable private address, no name, no personal or manufacturer data, advertising
    or scan response; the service UUID only while the pairing window is open. §2.1/§2.2: a
    stranger's link reads no Events and writes no Commands (ATT errors 0x05/0x0F), and even
    subscribed to Events it hears none of the owner's frames."""
    async for bell in firmware_board(tmp_path / "flash", radio, RIG):
        loop = asyncio.get_running_loop()
        await start(bell)
        scanner = await Scanner(await Phone(radio, name="stranger's scanner").start()).start()

        def contents(adverts) -> set[tuple[int, bytes]]:
            out = set()
            for adv in adverts:
                assert adv.address.is_resolvable, adv.address  # never the identity address
                out |= set(ad_structures(adv.data_bytes))
            return out

        flags_only = {(AD_FLAGS, b"\x06")}
        assert contents(await scanner.adverts_after(loop.time() - 10)) == flags_only
        await open_window(bell)
        opened = loop.time()
        await until(lambda: any(ad_structures(a.data_bytes) != [(AD_FLAGS, b"\x06")] for a in scanner.since(opened)),
                    what="the service UUID in the window")
        window = [a for a in scanner.since(opened) if ad_structures(a.data_bytes) != [(AD_FLAGS, b"\x06")]]
        assert contents(window) == flags_only | {(AD_UUID128_COMPLETE, SERVICE_UUID_LE)}

        owner = await pair_owner(bell, radio)
        await logged(bell, "core", 0, msg="pairing closed")
        closed = loop.time()
        await until(lambda: len(scanner.since(closed + 0.5)) >= 2, what="adverts after the window")
        assert contents(scanner.since(closed + 0.5)) == flags_only  # still advertising, no UUID
        await scanner.phone.device.stop_scanning()

        stranger = await Phone(radio, name="stranger").start()
        await stranger.connect(bell.ble.on_air_address)
        events = await stranger.characteristic(p.uuid(p.UUID_EVENTS))
        commands = await stranger.characteristic(p.uuid(p.UUID_COMMANDS))
        await refused_at_att(events, commands)
        overheard: list[bytes] = []
        await stranger.subscribe(events, overheard.append)  # the CCCD is open to anyone

        await bell.press("button", hold_s=2.0)
        await until(lambda: owner.of(p.ALARM_RAISED), what="the alarm at the owner's phone")
        await owner.send(p.REQUEST_STATUS)
        await until(lambda: owner.of(p.RESULT), what="the owner's RESULT")
        await asyncio.sleep(0.3)
        assert stranger.connected and overheard == []


# -- the spec's tables are the codec's (§2.1, §3-§8, §10) -----------------------------------------

SPEC = (Path(__file__).parent.parent / "firmware" / "PROTOCOL.md").read_text()
WIDTH = {"8": 0xFF, "16": 0xFFFF, "32": 0xFFFFFFFF}


def section(number: str) -> str:
    """The text of PROTOCOL.md section `number` ("2.1", "5"), up to the next heading of its level
    or above (a section's subsections are part of it)."""
    level = "##" if "." not in number else "###"
    match = re.search(rf"^{level} {re.escape(number)}[ .].*?$(.*?)(?=^#{{2,{len(level)}}} |\Z)", SPEC, re.M | re.S)
    assert match, f"no section {number} in PROTOCOL.md"
    return match.group(1)


def table_rows(text: str) -> list[list[str]]:
    rows = []
    for line in text.splitlines():
        if line.startswith("|") and not line.startswith("|---"):
            rows.append([cell.strip() for cell in line.strip().strip("|").split("|")])
    return rows[1:]  # without the header row


def typed_fields(cell: str) -> list[tuple[str, int]]:
    """"`epoch` u16, `seq` u32" -> [("epoch", 0xFFFF), ("seq", 0xFFFFFFFF)]"""
    return [(name, WIDTH[bits]) for name, bits in re.findall(r"`(\w+)` u(8|16|32)\b", cell)]


def body_fields(code: int) -> list[tuple[str, int]]:
    header = {"event": 3, "command": 1, "reply": 0}[p.type_class(code)]
    return list(p.fields_of(code)[header:])


def frame_size(code: int) -> int:
    return len(p.encode(p.Message(code, **{name: 0 for name, _ in p.fields_of(code)})))


def test_the_gatt_table_and_flags_in_the_spec_are_the_codecs():
    rows = {row[0]: row for row in table_rows(section("2.1"))}
    assert rows["Jikimi service"][1] == f"`{p.uuid(p.UUID_SERVICE)}`"
    assert rows["Events"][1] == f"`{p.uuid(p.UUID_EVENTS)}`" and rows["Events"][2] == "read, notify"
    assert rows["Commands"][1] == f"`{p.uuid(p.UUID_COMMANDS)}`" and rows["Commands"][2] == "write (with response)"
    assert rows["Info"][1] == f"`{p.uuid(p.UUID_INFO)}`" and rows["Info"][2] == "read"
    flags = dict(re.findall(r"^- (Events|Commands|Info): `[A-Z_ |]+` = `(0x[0-9A-Fa-f]{4})`", section("2.1"), re.M))
    assert {name: int(value, 16) for name, value in flags.items()} == {
        "Events": p.EVENTS_FLAGS, "Commands": p.COMMANDS_FLAGS, "Info": p.INFO_FLAGS}
    # the flag names in the spec are MicroPython's (bluetooth module docs)
    assert (p.EVENTS_FLAGS, p.COMMANDS_FLAGS, p.INFO_FLAGS) == (0x0612, 0x3008, 0x0002)


def test_frames_are_2_to_20_bytes_and_each_class_has_the_header_the_spec_gives():
    assert "A frame is 2 to 20 bytes" in section("3") and p.MAX_FRAME == 20
    ranges = []
    for codes, klass, _direction, header, size in table_rows(section("4")):
        first, _, last = codes.partition("-")
        first, last = int(first.strip("`"), 16), int((last or first).strip("`"), 16)
        ranges.append((first, last, klass))
        for code in (first, last):
            assert p.type_class(code) == (None if klass == "reserved" else klass), codes
        if klass != "reserved":
            # an unknown type of the class with an empty body: exactly its header
            fields = {name: 0 for name, _ in typed_fields(header)}
            frame = p.encode(p.Message(last, body=b"", **fields))
            assert len(frame) == int(size), (klass, frame.hex())
            decoded = p.decode(frame)
            assert [n for n in decoded.field_names() if n != "body"] == [n for n, _ in typed_fields(header)]
    # the ranges cover every code, in order, without a gap
    assert [r[0] for r in ranges] == [0] + [r[1] + 1 for r in ranges[:-1]] and ranges[-1][1] == 0xFF


@pytest.mark.parametrize("number", ["5", "7"])
def test_every_event_and_command_in_the_spec_has_the_codecs_code_fields_and_size(number):
    rows = table_rows(section(number))
    listed = set()
    for row in rows:
        code, name, body, size = int(row[0].strip("`"), 16), row[1].strip("`"), row[2], int(row[3])
        listed.add(code)
        assert p.type_name(code) == name
        assert body_fields(code) == typed_fields(body), name
        assert frame_size(code) == size, name
    klass = "event" if number == "5" else "command"
    assert listed == {c for c in pj.known_types() if p.type_class(c) == klass}


@pytest.mark.parametrize("number, code", [("6.1", p.RESULT), ("6.2", p.STATUS), ("6.3", p.INFO)])
def test_every_reply_in_the_spec_has_the_codecs_fields_and_size(number, code):
    text = section(number)
    heading = re.search(rf"^### {re.escape(number)} `(0x[0-9A-F]{{2}})` (\w+)", SPEC, re.M)
    assert int(heading.group(1), 16) == code and heading.group(2).lower() == p.type_name(code)
    rows = table_rows(text)
    if rows:
        fields = []
        for row in rows:
            names = re.findall(r"`(\w+)`", row[0])
            fields += [(name, WIDTH[re.search(r"u(8|16|32)", row[1]).group(1)]) for name in names]
    else:  # INFO is a sentence: "`a`, `b`, ... (u8 each; ...)"
        names = re.findall(r"`(\w+)`", text.split("(u8 each")[0])
        fields = [(name, 0xFF) for name in names]
    assert body_fields(code) == fields
    assert frame_size(code) == int(re.search(r"Size (\d+)\.", text).group(1))


FIELD_WORDS = {  # §8: each constant and the words the spec gives its value
    "1": {"MODE_LOUD": "loud", "MODE_SILENT": "silent"},
    "2": {"TRIGGER_HOLD": "button held", "TRIGGER_TRIPLE_PRESS": "button pressed three times",
          "TRIGGER_PULL_PIN": "pull-pin pulled", "TRIGGER_DOOR_INTRUSION": "door opened while armed",
          "TRIGGER_TAMPER": "tamper"},
    "3": {"SOURCE_DEVICE": "the device", "SOURCE_PHONE": "the phone", "SOURCE_TIMEOUT": "a timeout",
          "SOURCE_PULL_PIN": "the pull-pin put back"},
    "4": {"ARM_DISARMED": "disarmed", "ARM_EXIT_DELAY": "exit delay", "ARM_ARMED": "armed",
          "ARM_ENTRY_DELAY": "entry delay", "ARM_ALARM": "alarm"},
    "5": {"ROLE_PANIC": "panic button", "ROLE_DOOR": "door alarm", "ROLE_PULL_PIN": "pull-pin"},
    "6": {"FLAG_ALARM_ACTIVE": "alarm active", "FLAG_SIREN_ON": "siren on", "FLAG_ARMED": "armed",
          "FLAG_LOW_BATTERY": "low battery", "FLAG_CLOCK_SET": "clock set",
          "FLAG_PAIRING_WINDOW": "pairing window open", "FLAG_TAMPERED": "tampered"},
}


@pytest.mark.parametrize("item", sorted(FIELD_WORDS))
def test_every_field_value_in_the_spec_is_the_codecs_constant(item):
    line = re.search(rf"^{item}\. `\w+`[^:\n]*: (.*?)(?=^\d\. |\Z)", section("8"), re.M | re.S).group(1)
    line = " ".join(line.split())
    prefix = next(iter(FIELD_WORDS[item])).split("_")[0] + "_"
    assert set(FIELD_WORDS[item]) == {name for name in dir(p) if name.startswith(prefix)}  # none left out
    for name, words in FIELD_WORDS[item].items():
        value = getattr(p, name)
        spelled = f"`0x{value:02X}` {words}" if item in ("5", "6") else f"{value} {words}"
        assert spelled in line, (name, line)


def test_every_error_code_in_the_spec_is_the_codecs():
    rows = table_rows(section("10"))
    assert [(int(code), name.strip("`")) for code, name, _ in rows] == list(enumerate(p.ERROR_NAMES))
    for code, name in enumerate(p.ERROR_NAMES):
        assert getattr(p, "E_" + name) == code


def test_the_odds_the_spec_gives_an_online_passkey_guesser_are_the_binomials():
    """§2.3: with a static passkey an attacker allowed F failures wins with P(Binomial(20, 1/2) <= F)."""
    def odds(failures: int) -> float:
        return sum(math.comb(20, k) for k in range(failures + 1)) / 2**20

    text = " ".join(section("2.3").split())
    superscript = str.maketrans("⁻⁰¹²³⁴⁵⁶⁷⁸⁹", "-0123456789")
    for failures, spelled in ((2, "2 × 10⁻⁴"), (3, "1.3 × 10⁻³"), (6, "5.8 × 10⁻²")):
        assert f"{spelled} for *F* = {failures}" in text
        mantissa, exponent = spelled.split(" × 10")
        stated = float(mantissa) * 10 ** int(exponent.translate(superscript))
        assert abs(odds(failures) - stated) / stated < 0.05
    assert "near 1 for *F* = 13" in text and odds(13) > 0.9


# -- §6.1, §7.1, §11, §12: what a phone's commands get back --------------------------------------


def results(app: PhoneApp) -> list[tuple[int, int, str, int]]:
    return [(m.counter, m.command, p.error_name(m.code), m.detail) for m in app.of(p.RESULT)]


@pytest.mark.micropython
async def test_every_command_write_gets_exactly_one_result_and_the_counter_rules_hold_over_a_reboot(tmp_path, radio):
    """§6.1: exactly one RESULT per command write, counter and command 0 when the frame is too
    broken to read them; REQUEST_STATUS is answered RESULT then STATUS (§7). §7.1: a command that
    admission refuses (UNKNOWN_TYPE) leaves its counter unused, 0 is never accepted, and the
    highest counter is on flash before the device acts, so a replay after a power cut is still
    REPLAYED. §11: appended bytes are ignored, another major version is BAD_VERSION with counter
    0. §12: replies are not journaled."""
    async for bell in firmware_board(tmp_path / "flash", radio, RIG):
        await start(bell)
        await open_window(bell)
        owner = await pair_owner(bell, radio)
        alarm_frame = p.encode(p.Message(p.ALARM_RAISED, epoch=1, seq=1, time=0, mode=1, trigger=1, battery_pct=9))
        set_time_3 = p.encode(p.Message(p.SET_TIME, counter=3, time=800_000_000)) + b"\xaa\xbb"  # a newer phone's field
        writes = [
            p.encode(p.Message(p.REQUEST_STATUS, counter=1)),
            b"\x02\x87\x02\x00\x00\x00",  # protocol version 2
            b"\x01",  # too short for anything
            alarm_frame,  # an event, not a command
            p.encode(p.Message(0xBE, counter=2, body=b"\x01")),  # a command only a newer device knows
            p.encode(p.Message(p.REQUEST_STATUS, counter=2)),  # 2 is still unused
            p.encode(p.Message(p.SET_TIME, counter=0, time=1)),  # 0 is never accepted
            set_time_3,
        ]
        for frame in writes:
            await owner.commands.write_value(frame, with_response=True)
        await until(lambda: len(owner.of(p.RESULT)) >= len(writes), what="a RESULT per write")
        await asyncio.sleep(0.5)  # nothing more may come
        assert results(owner) == [
            (1, p.REQUEST_STATUS, "OK", 0),
            (0, 0, "BAD_VERSION", 0),
            (0, 0, "BAD_LENGTH", 0),
            (0, p.ALARM_RAISED, "UNKNOWN_TYPE", 0),
            (2, 0xBE, "UNKNOWN_TYPE", 0),
            (2, p.REQUEST_STATUS, "OK", 0),
            (0, p.SET_TIME, "REPLAYED", 2),
            (3, p.SET_TIME, "OK", 0),
        ]
        answers = [m for m in owner.frames if m.type in (p.RESULT, p.STATUS)]
        for i, m in enumerate(answers):
            if m.type == p.RESULT and m.command == p.REQUEST_STATUS:
                assert answers[i + 1].type == p.STATUS  # RESULT, then STATUS
        statuses = owner.of(p.STATUS)
        assert statuses and all(s.journal_depth == 0 for s in statuses)  # nothing journaled
        assert p.decode(await read(owner.events)).flags & p.FLAG_CLOCK_SET  # SET_TIME 3 acted

        # A power cut, the phone back with its bond: the frame with counter 3 is still a replay.
        await owner.phone.disconnect()
        await bell.power_cut()
        mark = len(log_records(bell))
        await bell.start()
        await logged(bell, "ready", mark)
        await owner.phone.connect(bell.ble.identity_address)
        await owner.phone.encrypt()
        owner.frames.clear()
        await owner.open()
        await owner.commands.write_value(set_time_3, with_response=True)
        owner.counter = 3
        await owner.send(p.REQUEST_STATUS)  # 4
        await until(lambda: len(owner.of(p.RESULT)) >= 2, what="two RESULTs after the reboot")
        assert results(owner) == [(3, p.SET_TIME, "REPLAYED", 3), (4, p.REQUEST_STATUS, "OK", 0)]


# -- §12, §6.2: when frames come -----------------------------------------------------------------


class TimedPhone(PhoneApp):
    """The phone's app, noting when each frame came."""

    async def open(self) -> None:
        self.timed: list[tuple[float, p.Message]] = []
        self.events = await self.phone.characteristic(p.uuid(p.UUID_EVENTS))
        self.commands = await self.phone.characteristic(p.uuid(p.UUID_COMMANDS))

        def on_value(value: bytes) -> None:
            message = p.decode(value)
            self.frames.append(message)
            self.timed.append((asyncio.get_running_loop().time(), message))

        await self.phone.subscribe(self.events, on_value)

    def times(self, kind: int, since: float = 0.0, **fields) -> list[float]:
        return [at for at, m in self.timed if m.type == kind and at >= since
                and all(getattr(m, k) == v for k, v in fields.items())]


@pytest.mark.micropython
async def test_unacked_events_come_oldest_first_every_second_until_the_phone_speaks_then_every_five(tmp_path, radio):
    """§12: the oldest unacknowledged event first, resent every 1 s until the phone's first command
    on the connection, at once at that command (§2.2), then every 5 s; §6.2: a STATUS heartbeat
    every heartbeat_s without being asked."""
    config = dict(RIG, ble={"heartbeat_s": 10})
    async for bell in firmware_board(tmp_path / "flash", radio, config):
        loop = asyncio.get_running_loop()
        await start(bell)
        await open_window(bell)
        owner = await pair_owner(bell, radio, app=TimedPhone)  # subscribed, as the relay is; no command yet
        await bell.press("button", hold_s=2.0)  # alarm_raised, seq 1
        await until(lambda: owner.times(p.ALARM_RAISED), what="the alarm", log=bell.console.tail)
        # A finger lifts before it presses again. With no pause (the alarm reached the phone
        # during the hold, whenever the press came after the boot window), the debouncer rightly
        # took release-and-press for contact bounce and saw one 4 s hold: no cancel.
        await asyncio.sleep(PAUSE_S)
        await bell.press("button", hold_s=2.0)  # inside the cancel window: alarm_cancelled, seq 2
        await until(lambda: owner.times(p.ALARM_CANCELLED), what="the cancel", log=bell.console.tail)
        await asyncio.sleep(2.5)  # two more rounds, nobody acking

        def event_seqs(since: float = 0.0) -> list[int]:
            return [m.seq for at, m in owner.timed if m.klass == "event" and at >= since]

        first_cancel = owner.times(p.ALARM_CANCELLED)[0]
        rounds = event_seqs(first_cancel)
        assert rounds[:1] == [2] and rounds[1:] and rounds[1:] == [1, 2] * (len(rounds[1:]) // 2), rounds
        raised = owner.times(p.ALARM_RAISED)
        gaps = [b - a for a, b in zip(raised, raised[1:])]
        assert len(gaps) >= 3 and all(0.6 < gap < 2.5 for gap in gaps), gaps  # every second

        spoke = loop.time()
        await owner.send(p.SET_TIME, time=800_000_000)  # the first command on this link
        await until(lambda: owner.times(p.ALARM_RAISED, spoke) and owner.times(p.STATUS, spoke),
                    timeout_s=1.0, what="everything again at once")
        status_at = owner.times(p.STATUS, spoke)[0]
        await until(lambda: len(owner.times(p.ALARM_RAISED, spoke)) >= 2, timeout_s=8, what="the next resend")
        again = owner.times(p.ALARM_RAISED, spoke)
        assert 4.0 < again[1] - again[0] < 6.5, again  # now every 5 s
        assert event_seqs(spoke)[:2] == [1, 2]
        await until(lambda: owner.times(p.STATUS, status_at + 0.1), timeout_s=14, what="the heartbeat")
        heartbeat = owner.times(p.STATUS, status_at + 0.1)[0]
        assert 9.0 < heartbeat - status_at < 12.0


# -- §2.3: one pairing at a time, and a full bell evicts nobody -----------------------------------


class Stalling(PairingDelegate):
    """A stranger's phone that starts passkey pairing and never types a passkey."""

    def __init__(self) -> None:
        super().__init__(io_capability=PairingDelegate.IoCapability.KEYBOARD_INPUT_ONLY)

    async def get_number(self) -> int | None:
        await asyncio.Event().wait()
        return None


def bonds_on_flash(bell) -> list[str]:
    path = bell.flash / "bonds.json"
    return json.loads(path.read_text())["peers"] if path.exists() else []


@pytest.mark.micropython
async def test_one_pairing_at_a_time_and_a_full_bell_refuses_a_new_phone_instead_of_evicting(tmp_path, radio):
    """§2.3: while one passkey pairing runs, another phone's does not go through and does not
    count as a failed attempt; the first one giving up does. With `ble.max_bonds` bonds, a new
    phone in the window is refused (`bonds_full`) and the owner's bond stays, and works."""
    config = dict(RIG, ble={"max_bonds": 1, "pairing_lockout_ms": 1000})
    async for bell in firmware_board(tmp_path / "flash", radio, config):
        await start(bell)
        await open_window(bell)
        stranger = Phone(radio, name="stranger")
        stranger.device.pairing_config_factory = lambda connection: PairingConfig(
            sc=True, mitm=True, bonding=True, delegate=Stalling())
        await stranger.start()
        await stranger.connect(bell.ble.on_air_address)
        stalled = asyncio.ensure_future(stranger.connection.pair())
        await logged(bell, "ble", 0, msg="pairing")

        # The owner's pairing meanwhile goes nowhere (NimBLE leaves the second request unanswered;
        # one that got as far as a passkey the link refuses as `busy`), and is no failed attempt.
        owner = await Phone(radio).start()
        await owner.connect(bell.ble.on_air_address)
        with pytest.raises((Exception, asyncio.CancelledError)):  # timed out, or the link dropped
            await owner.pair(PASSKEY, timeout_s=3)
        assert len(records_since(bell, 0, "ble", msg="pairing")) == 1  # no passkey shown to the owner
        assert not records_since(bell, 0, "ble", msg="bonded")
        assert not records_since(bell, 0, "ble", msg="pairing_failed")
        await owner.disconnect()

        await stranger.disconnect()  # gives up: that is a failed attempt
        stalled.cancel()
        failed = await logged(bell, "ble", 0, msg="pairing_failed")
        assert failed[0]["attempt"] == 1
        await asyncio.sleep(failed[0]["locked_ms"] / 1000 + 0.2)
        app = await pair_owner(bell, radio, owner)
        kept = bonds_on_flash(bell)
        assert len(kept) == 1

        await open_window(bell)  # the owner opens the window again, a new phone tries its luck
        mark = len(log_records(bell))
        newcomer = await Phone(radio, name="new phone").start()
        await newcomer.connect(bell.ble.on_air_address)
        with pytest.raises((Exception, asyncio.CancelledError)):
            await newcomer.pair(PASSKEY, timeout_s=20)
        await logged(bell, "ble", mark, msg="pairing_refused", reason="bonds_full")
        assert bonds_on_flash(bell) == kept
        await app.send(p.REQUEST_STATUS)
        await until(lambda: app.of(p.RESULT), what="the owner's RESULT")
        assert app.of(p.RESULT)[0].code == p.E_OK


# -- §7, §8.6, §12, §2.3 at the device core (CPython): what each command answers -------------------


def make_device(tmp_path, roles=("panic",), **config):
    from jikimi import config as cfg
    from jikimi.device import Device
    from jikimi.journal import Journal

    conf, errors = cfg.validate(dict({"passkey": "000001", "board": "sim", "roles": list(roles)}, **config))
    assert not errors
    tmp_path.mkdir(parents=True, exist_ok=True)
    journal = Journal(str(tmp_path / "journal.bin"), new_epoch=lambda: 0x1234)
    return Device(conf, journal, 100000, {}, (1, 2, 3))


def command(device, kind, now_ms, counter=1, **fields) -> str:
    return p.error_name(device.command(p.Message(kind, counter=counter, **fields), now_ms))


def hold(device, at_ms) -> None:
    """The button held for hold_ms (3 s) from `at_ms`, then let go."""
    device.input("button", 1, at_ms)
    device.poll(at_ms + 3100)
    device.input("button", 0, at_ms + 3200)
    device.poll(at_ms + 3300)


def test_status_flags_say_what_is_going_on_and_asking_for_status_journals_nothing(tmp_path):
    """§8.6 flags (those test_core_machines does not already check), §6.2 uptime, §12: STATUS is
    not journaled."""
    device = make_device(tmp_path, roles=("panic", "door"))
    status = device.status(100000)
    assert (status.flags, status.uptime_s, status.journal_depth) == (0, 0, 0)
    device.open_pairing(101000)
    assert device.status(101000).flags == p.FLAG_PAIRING_WINDOW
    device.close_pairing(101500)
    device.input("tamper", 1, 102000)
    device.poll(102500)
    assert device.status(102500).flags == p.FLAG_TAMPERED
    for _ in range(device.battery.confirm):
        device.battery_reading(3300, 103000)
    status = device.status(104000)
    assert status.flags == p.FLAG_TAMPERED | p.FLAG_LOW_BATTERY and status.battery_mv == 3300
    assert status.uptime_s == 4 and status.journal_depth == 2  # tamper, battery: not the STATUS frames
    for _ in range(5):
        assert command(device, p.REQUEST_STATUS, 105000) == "OK"
        device.status(105000)
    assert device.journal.depth == 2


def test_the_pairing_window_closes_by_itself_after_pairing_window_ms(tmp_path):
    """§2.3: closed after `ble.pairing_window_ms` (or by the first new bond: the virtual-board tests)."""
    device = make_device(tmp_path, ble={"pairing_window_ms": 30000})
    device.open_pairing(100000)
    device.poll(129999)
    assert device.pairing_open and device.status(129999).flags & p.FLAG_PAIRING_WINDOW
    device.poll(130000)
    assert not device.pairing_open and not device.status(130000).flags & p.FLAG_PAIRING_WINDOW


def test_an_ack_is_idempotent_and_a_cancel_never_ends_a_newer_alarm(tmp_path):
    """§7: acking an event already trimmed is OK; acking an alarm journals alarm_acked once;
    CANCEL_ALARM cancels that alarm only, never one raised since; another epoch is BAD_FIELD."""
    device = make_device(tmp_path)
    hold(device, 110000)  # alarm_raised seq 1
    assert command(device, p.ACK, 114000, epoch=0x1234, seq=1) == "OK"
    assert command(device, p.ACK, 114100, 2, epoch=0x1234, seq=1) == "OK"  # again: still OK
    assert [p.decode(f).name for _, f in device.journal.pending()] == ["alarm_acked"]  # once
    hold(device, 115000)  # inside the cancel window: the device's own cancel, seq 3
    hold(device, 120000)  # a new alarm, seq 4
    assert device.status(124000).flags & p.FLAG_ALARM_ACTIVE
    assert command(device, p.CANCEL_ALARM, 124000, 3, epoch=0x1234, alarm_seq=1) == "WRONG_STATE"
    assert command(device, p.CANCEL_ALARM, 124000, 4, epoch=0x4321, alarm_seq=4) == "BAD_FIELD"
    assert device.status(124000).flags & p.FLAG_ALARM_ACTIVE  # the new alarm stands
    assert command(device, p.CANCEL_ALARM, 124000, 5, epoch=0x1234, alarm_seq=4) == "OK"
    assert not device.status(124000).flags & p.FLAG_ALARM_ACTIVE


def test_what_arm_silence_and_locate_answer_when_they_do_not_apply(tmp_path):
    """§7: ARM while armed is OK (nothing changes), ARM in an entry delay is WRONG_STATE; DISARM
    without the door role is NOT_SUPPORTED; SILENCE_SIREN with no alarm is WRONG_STATE; LOCATE
    during a silent alarm is WRONG_STATE (a chirp would give the alarm away)."""
    door = make_device(tmp_path / "door", roles=("door",), door={"exit_delay_ms": 0, "entry_delay_ms": 5000})
    assert command(door, p.ARM, 100000) == "OK"
    door.poll(100100)
    assert command(door, p.ARM, 100200) == "OK" and door.door.state == p.ARM_ARMED
    door.input("door", 1, 101000)
    door.poll(101500)
    assert door.door.state == p.ARM_ENTRY_DELAY
    assert command(door, p.ARM, 101600) == "WRONG_STATE"
    assert command(door, p.DISARM, 101700) == "OK" and door.door.state == p.ARM_DISARMED

    bell = make_device(tmp_path / "bell")
    assert command(bell, p.DISARM, 100000) == "NOT_SUPPORTED"
    assert command(bell, p.SILENCE_SIREN, 100000) == "WRONG_STATE"
    assert command(bell, p.LOCATE, 100000, seconds=1) == "OK"
    bell.panic.alarm.raise_alarm(p.MODE_SILENT, p.TRIGGER_TRIPLE_PRESS, 80, 102000)
    assert command(bell, p.LOCATE, 102100, seconds=5) == "WRONG_STATE"
    assert bell.output(102200) == (0, 0, False)  # not a sound, not a light


# -- §11, §12: the phone's side (the relay's central, CPython) -----------------------------------


class FakeLink:
    """One connection to a device, as the relay's central sees it: frames in, writes out."""

    def __init__(self, frames: list[bytes]) -> None:
        self.frames = list(frames)
        self.written: list[p.Message] = []

    async def next_frame(self) -> bytes | None:
        return self.frames.pop(0) if self.frames else None

    async def write(self, frame: bytes) -> None:
        self.written.append(p.decode(frame))

    async def close(self) -> None:
        pass


async def test_the_phone_acks_every_event_ignores_unknown_replies_and_resumes_above_a_replayed_counter(tmp_path):
    """§11: an unknown event is stored and acked, an unknown reply ignored, another major version
    logged with what to update; §12: every event received is acked, a duplicate too; §7.1: a
    phone that lost its counter learns the device's from REPLAYED and sends again above it."""
    from jikimi_host.relay.central import Central
    from jikimi_host.relay.config import DeviceEntry
    from jikimi_host.relay.keystore import SqliteKeyStore
    from jikimi_host.relay.radio_bumble import BumbleRadio

    stored: list[p.Message] = []
    reports: list[str] = []

    async def on_event(identity, name, message):
        stored.append(message)

    def report(kind, text, **fields):
        reports.append(text)

    keystore = SqliteKeyStore(tmp_path / "keys.sqlite")
    central = Central(BumbleRadio("tcp-client:127.0.0.1:1", keystore, report), keystore,
                      (DeviceEntry("bell", "493817"),), on_event, lambda identity, name: None, report)
    alarm = p.encode(p.Message(p.ALARM_RAISED, epoch=7, seq=1, time=0, mode=1, trigger=1, battery_pct=80))
    newer_event = bytes.fromhex("0130070002000000000000000a0b")  # type 0x30, seq 2: only a newer device knows it
    newer_reply = bytes.fromhex("0170ffff")  # type 0x70
    replayed = p.encode(p.result(p.SET_TIME, 1, p.E_REPLAYED, 41))  # the device had 41 from this phone
    link = FakeLink([replayed, alarm, alarm, newer_event, newer_reply, b"\x02\x41" + bytes(18)])
    await central._serve(link, "24:6F:28:00:00:01/P", "bell")

    assert [m.seq for m in stored] == [1, 1, 2]  # the store de-duplicates, not the link
    commands = [(m.name, m.counter) for m in link.written]
    assert commands[:2] == [("set_time", 1), ("set_time", 42)]  # first on every connection; resumed above 41
    acks = [(m.epoch, m.seq, m.counter) for m in link.written if m.type == p.ACK]
    assert acks == [(7, 1, 43), (7, 1, 44), (7, 2, 45)]  # nothing for the reply, nothing for version 2
    assert any("protocol version 2" in text and "update the relay" in text for text in reports), reports


def test_a_new_journal_picks_a_random_non_zero_epoch(tmp_path, monkeypatch):
    """§4: `epoch` is a random non-zero number picked when the journal is created."""
    from jikimi import journal

    draws = iter([b"\x00\x00", b"\x00\x00", b"\x2a\x00"])
    monkeypatch.setattr(journal.os, "urandom", lambda n: next(draws))
    assert journal.Journal(str(tmp_path / "j")).epoch == 0x2A  # 0 is drawn again
