"""Jikimi BLE protocol, version 1: the one codec that the device and the phone both run.

The specification is firmware/PROTOCOL.md; section numbers below (§) refer to it. This file is
written in the subset that MicroPython and CPython share: the host imports this very file.

Every frame fits the default ATT payload (20 bytes, §3). Decoding never raises anything but
ProtocolError and never allocates more than one small Message, whatever it is fed (§9).
"""

try:
    from micropython import const
except ImportError:  # CPython

    def const(value):
        return value


import struct

VERSION = const(1)
MAX_FRAME = const(20)

# GATT service and characteristics (§2.1): the part that tells their UUIDs apart (uuid())
UUID_SERVICE = const(0x0001)
UUID_EVENTS = const(0x0002)
UUID_COMMANDS = const(0x0003)
UUID_INFO = const(0x0004)


def uuid(part):
    """The 128-bit UUID text of a UUID_* part. Made when asked (a bell asks at boot and while it
    advertises for pairing), not kept as four module strings: 256 B of a .mpy bell's heap."""
    return "eb67%04x-ef64-4ea7-8de3-8e275b7c36fc" % part


# MicroPython gatts_register_services flags (bluetooth module docs)
_FLAG_READ = const(0x0002)
_FLAG_WRITE = const(0x0008)
_FLAG_NOTIFY = const(0x0010)
_FLAG_READ_ENCRYPTED = const(0x0200)
_FLAG_READ_AUTHENTICATED = const(0x0400)
_FLAG_WRITE_ENCRYPTED = const(0x1000)
_FLAG_WRITE_AUTHENTICATED = const(0x2000)

EVENTS_FLAGS = const(_FLAG_READ | _FLAG_NOTIFY | _FLAG_READ_ENCRYPTED | _FLAG_READ_AUTHENTICATED)
COMMANDS_FLAGS = const(_FLAG_WRITE | _FLAG_WRITE_ENCRYPTED | _FLAG_WRITE_AUTHENTICATED)
INFO_FLAGS = const(_FLAG_READ)

# Type-code classes (§4): the class of an unknown type still tells a peer how to handle it.
EVENT_FIRST = const(0x01)
EVENT_LAST = const(0x3F)
REPLY_FIRST = const(0x40)
REPLY_LAST = const(0x7F)
COMMAND_FIRST = const(0x80)
COMMAND_LAST = const(0xBF)

# Events, device -> phone, journaled, carry (epoch, seq, time) (§5)
ALARM_RAISED = const(0x01)
ALARM_CANCELLED = const(0x02)
ALARM_ACKED = const(0x03)
DOOR_OPENED = const(0x04)
DOOR_CLOSED = const(0x05)
ARMED = const(0x06)
DISARMED = const(0x07)
TAMPER = const(0x08)
BATTERY = const(0x09)
SIREN_SILENCED = const(0x0A)

# Replies and reads, device -> phone, not journaled (§6)
RESULT = const(0x40)
STATUS = const(0x41)
INFO = const(0x42)

# Commands, phone -> device, carry a counter (§7)
ACK = const(0x80)
CANCEL_ALARM = const(0x81)
ARM = const(0x82)
DISARM = const(0x83)
SILENCE_SIREN = const(0x84)
SET_TIME = const(0x85)
LOCATE = const(0x86)
REQUEST_STATUS = const(0x87)

# Field values (§8). Decoders pass unknown values through: a relay must still relay an alarm
# whose trigger a newer device knows and it does not.
MODE_LOUD = const(1)
MODE_SILENT = const(2)

TRIGGER_HOLD = const(1)
TRIGGER_TRIPLE_PRESS = const(2)
TRIGGER_PULL_PIN = const(3)
TRIGGER_DOOR_INTRUSION = const(4)
TRIGGER_TAMPER = const(5)

SOURCE_DEVICE = const(1)
SOURCE_PHONE = const(2)
SOURCE_TIMEOUT = const(3)
SOURCE_PULL_PIN = const(4)

ARM_DISARMED = const(0)
ARM_EXIT_DELAY = const(1)
ARM_ARMED = const(2)
ARM_ENTRY_DELAY = const(3)
ARM_ALARM = const(4)

ROLE_PANIC = const(0x01)
ROLE_DOOR = const(0x02)
ROLE_PULL_PIN = const(0x04)

FLAG_ALARM_ACTIVE = const(0x01)
FLAG_SIREN_ON = const(0x02)
FLAG_ARMED = const(0x04)
FLAG_LOW_BATTERY = const(0x08)
FLAG_CLOCK_SET = const(0x10)
FLAG_PAIRING_WINDOW = const(0x20)
FLAG_TAMPERED = const(0x40)

# Error codes (§10): in RESULT frames and in ProtocolError.code
E_OK = const(0)
E_BAD_LENGTH = const(1)
E_BAD_VERSION = const(2)
E_UNKNOWN_TYPE = const(3)
E_BAD_FIELD = const(4)
E_NOT_AUTHENTICATED = const(5)
E_REPLAYED = const(6)
E_WRONG_STATE = const(7)
E_NOT_SUPPORTED = const(8)
E_INTERNAL = const(9)

# Built from a list, not written as a literal tuple, whose every string a .mpy file loads as a
# heap string: names of ten characters or fewer stay interned (CORE.md, "Heap").
ERROR_NAMES = tuple([
    "OK",
    "BAD_LENGTH",
    "BAD_VERSION",
    "UNKNOWN_TYPE",
    "BAD_FIELD",
    "NOT_AUTHENTICATED",
    "REPLAYED",
    "WRONG_STATE",
    "NOT_SUPPORTED",
    "INTERNAL",
])



def _spec(name, body, *fields):
    return (name, body) + fields


# type code -> (name, body struct format, body field name, ...): one flat tuple per type, not a
# tuple of names inside one (17 tuples fewer: about 400 B as .mpy). Built by calls, not written as
# literal tuples: from a .mpy file a literal tuple's strings are loaded as one heap string each
# (32 B or more), where a call's arguments are names interned once and shared with the
# attributes they become: 830 B less live heap as .mpy on stock MicroPython, 1.2 KB more in a
# frozen image, whose literal tuples would stay in flash (CORE.md, "Heap").
_TYPES = {
    ALARM_RAISED: _spec("alarm_raised", "<BBB", "mode", "trigger", "battery_pct"),
    ALARM_CANCELLED: _spec("alarm_cancelled", "<IB", "alarm_seq", "source"),
    ALARM_ACKED: _spec("alarm_acked", "<I", "alarm_seq"),
    DOOR_OPENED: _spec("door_opened", "<B", "arm_state"),
    DOOR_CLOSED: _spec("door_closed", "<B", "arm_state"),
    ARMED: _spec("armed", "<B", "source"),
    DISARMED: _spec("disarmed", "<B", "source"),
    TAMPER: _spec("tamper", "<B", "tampered"),
    BATTERY: _spec("battery", "<HBB", "battery_mv", "battery_pct", "low"),
    SIREN_SILENCED: _spec("siren_silenced", "<IB", "alarm_seq", "source"),
    RESULT: _spec("result", "<IBBI", "counter", "command", "code", "detail"),
    STATUS: _spec(
        "status", "<BBBBBBHIHHH",
        "fw_major", "fw_minor", "fw_patch", "roles", "flags", "battery_pct", "battery_mv",
        "uptime_s", "journal_depth", "epoch", "dropped",
    ),
    INFO: _spec("info", "<BBBB", "fw_major", "fw_minor", "fw_patch", "max_frame"),
    ACK: _spec("ack", "<HI", "epoch", "seq"),
    CANCEL_ALARM: _spec("cancel_alarm", "<HI", "epoch", "alarm_seq"),
    ARM: _spec("arm", "<"),
    DISARM: _spec("disarm", "<"),
    SILENCE_SIREN: _spec("silence_siren", "<"),
    SET_TIME: _spec("set_time", "<I", "time"),
    LOCATE: _spec("locate", "<B", "seconds"),
    REQUEST_STATUS: _spec("request_status", "<"),
}
del _spec
# Types that gained fields under §11: type -> the body an older peer still sends, whose missing
# trailing fields decode as 0 (STATUS gained `dropped`; 18-byte frames stay readable).
_OLDER_BODY = {STATUS: "<BBBBBBHIHH"}


# Unsigned ranges of the struct codes this protocol uses.
_LIMITS = {"B": 0xFF, "H": 0xFFFF, "I": 0xFFFFFFFF}


class ProtocolError(Exception):
    """The only exception the codec raises. `code` is one of the E_* error codes; `why` is a short
    key for the reason and `args` its values, which `text` (protocol_text.py) makes readable."""

    def __init__(self, code, why, *args):
        super().__init__(why, *args)
        self.code = code
        self.why = why

    @property
    def text(self):
        # Imported only here: a bell reads the code alone, so the formats stay out of its heap.
        from jikimi.protocol_text import text

        return text(self.why, self.args[1:])

    def __str__(self):
        return "%s: %s" % (error_name(self.code), self.text)


def error_name(code):
    if 0 <= code < len(ERROR_NAMES):
        return ERROR_NAMES[code]
    return "E%d" % code


def type_class(type_code):
    """'event', 'reply' or 'command' for a type code, or None if the code is reserved."""
    if EVENT_FIRST <= type_code <= EVENT_LAST:
        return "event"
    if REPLY_FIRST <= type_code <= REPLY_LAST:
        return "reply"
    if COMMAND_FIRST <= type_code <= COMMAND_LAST:
        return "command"
    return None


def _header(klass):
    """The header of a class (§4): its struct format and the fields it carries after (version,
    type). Written here, not as module globals, whose names a .mpy file interns in RAM."""
    if klass == "event":
        return "<BBHII", ("epoch", "seq", "time")
    if klass == "command":
        return "<BBI", ("counter",)
    return "<BB", ()


def type_code(name):
    """The type code for a message name such as 'alarm_raised'."""
    for code in _TYPES:
        if _TYPES[code][0] == name:
            return code
    raise ProtocolError(E_UNKNOWN_TYPE, "no_name", name)


def type_name(code):
    """The name of a known type code; 'unknown_<class>' for an unknown one."""
    spec = _TYPES.get(code)
    if spec is not None:
        return spec[0]
    klass = type_class(code)
    if klass is None:
        return "reserved"
    return "unknown_" + klass


def fields_of(code):
    """((field name, largest value), ...) for a known type: header fields, then body fields."""
    header_fmt, header_names = _header(type_class(code))
    spec = _TYPES[code]
    out = []
    for i in range(len(header_names)):
        out.append((header_names[i], _LIMITS[header_fmt[3 + i]]))
    for i in range(2, len(spec)):  # body field i - 2 has the body format's code i - 1
        out.append((spec[i], _LIMITS[spec[1][i - 1]]))
    return tuple(out)


class Message:
    """One decoded or to-be-encoded frame: `type` (a code) plus its fields as attributes.

    A message of an unknown type (from a newer peer) keeps its header fields and its raw
    `body` bytes, so a phone can still acknowledge an event it does not understand.
    """

    def __init__(self, kind, **fields):
        if isinstance(kind, str):
            kind = type_code(kind)
        self.type = kind
        if type_class(kind) is not None:
            expected = self.field_names()
            for key in fields:
                if key not in expected:
                    raise ProtocolError(E_BAD_FIELD, "field", self.name, key)
        for key in fields:
            setattr(self, key, fields[key])

    @property
    def name(self):
        return type_name(self.type)

    @property
    def known(self):
        return self.type in _TYPES

    @property
    def klass(self):
        return type_class(self.type)

    def field_names(self):
        """Header fields, then body fields, in frame order."""
        header = _header(self.klass)[1]
        spec = _TYPES.get(self.type)
        if spec is None:
            return header + ("body",)
        return header + spec[2:]

    def fields(self):
        out = {}
        for key in self.field_names():
            out[key] = getattr(self, key, None)
        return out

    def __eq__(self, other):
        return (
            isinstance(other, Message)
            and self.type == other.type
            and self.fields() == other.fields()
        )

    def __ne__(self, other):
        return not self.__eq__(other)

    def __repr__(self):
        parts = []
        for key in self.field_names():
            parts.append("%s=%r" % (key, getattr(self, key, None)))
        return "Message(%s, %s)" % (self.name, ", ".join(parts))


def _frame(code, fmt, values):
    """struct.pack(fmt, VERSION, code, *values), each value range-checked against its struct code
    in fmt: MicroPython's struct.pack truncates out-of-range values silently."""
    if len(values) != len(fmt) - 3:
        raise ProtocolError(E_BAD_FIELD, "values", type_name(code), len(fmt) - 3, len(values))
    for i in range(len(values)):
        value = values[i]
        # bool is an int subclass; a flag given as True/False is fine on the wire.
        if value is None or not isinstance(value, int) or value < 0 or value > _LIMITS[fmt[3 + i]]:
            name = Message(code).field_names()[i]  # the error's text only: none on the way
            if value is None:
                raise ProtocolError(E_BAD_FIELD, "missing", type_name(code), name)
            if not isinstance(value, int):
                raise ProtocolError(E_BAD_FIELD, "not_int", type_name(code), name, value)
            raise ProtocolError(E_BAD_FIELD, "range", type_name(code), name, value, _LIMITS[fmt[3 + i]])
    frame = struct.pack(fmt, VERSION, code, *values)
    if len(frame) > MAX_FRAME:
        raise ProtocolError(E_BAD_LENGTH, "too_long", type_name(code), len(frame), MAX_FRAME)
    return frame


def pack(code, values):
    """The frame of the known type `code` whose fields, header first and in frame order (as
    `fields_of` lists them), have `values`: encode() without a Message, for what a bell sends
    after every change (STATUS), with no object or keyword dict built on the way. Raises
    ProtocolError as encode() does."""
    spec = _TYPES.get(code)
    if spec is None:
        raise ProtocolError(E_UNKNOWN_TYPE, "unknown", code)
    # '<' packs without padding, so the header's format and the body's join into the frame's
    return _frame(code, _header(type_class(code))[0] + spec[1][1:], values)


def encode(msg):
    """The frame bytes for `msg`. Raises ProtocolError on a missing, extra or out-of-range field."""
    klass = msg.klass
    if klass is None:
        raise ProtocolError(E_UNKNOWN_TYPE, "reserved", msg.type)
    values = []
    for name in msg.field_names():
        values.append(getattr(msg, name, None))
    if msg.known:
        return pack(msg.type, values)
    body = values.pop()  # a newer peer's type: its header fields, then its raw body
    header = _frame(msg.type, _header(klass)[0], values)
    if not isinstance(body, (bytes, bytearray)):
        raise ProtocolError(E_BAD_FIELD, "body", msg.name)
    frame = header + bytes(body)
    if len(frame) > MAX_FRAME:
        raise ProtocolError(E_BAD_LENGTH, "too_long", msg.name, len(frame), MAX_FRAME)
    return frame


def decode(frame):
    """The Message in `frame` (bytes, bytearray or memoryview).

    Raises ProtocolError, and nothing else, for anything that is not a valid frame. Bytes after
    the known fields are ignored: that is how a newer peer appends fields (§11).
    """
    if not isinstance(frame, (bytes, bytearray, memoryview)):
        raise ProtocolError(E_BAD_LENGTH, "not_bytes")
    length = len(frame)
    if length < 2:
        raise ProtocolError(E_BAD_LENGTH, "runt", length)
    if length > MAX_FRAME:
        raise ProtocolError(E_BAD_LENGTH, "oversize", length, MAX_FRAME)
    version = frame[0]
    code = frame[1]
    if version != VERSION:
        raise ProtocolError(E_BAD_VERSION, "version", version, VERSION)
    klass = type_class(code)
    if klass is None:
        raise ProtocolError(E_UNKNOWN_TYPE, "reserved", code)
    header_fmt, header_names = _header(klass)
    header_size = struct.calcsize(header_fmt)
    spec = _TYPES.get(code)
    body_fmt = None if spec is None else spec[1]
    body_size = 0 if spec is None else struct.calcsize(body_fmt)
    if length < header_size + body_size and code in _OLDER_BODY:
        older = _OLDER_BODY[code]  # an older peer's frame, without the appended fields
        if length >= header_size + struct.calcsize(older):
            body_fmt, body_size = older, struct.calcsize(older)
    if length < header_size + body_size:
        raise ProtocolError(E_BAD_LENGTH, "short", type_name(code), header_size + body_size, length)
    msg = Message(code)
    values = struct.unpack_from(header_fmt, frame, 0)
    for i in range(len(header_names)):
        setattr(msg, header_names[i], values[i + 2])
    if spec is None:
        msg.body = bytes(frame[header_size:length])
    elif body_size:
        values = struct.unpack_from(body_fmt, frame, header_size)
        for i in range(2, len(spec)):  # an older body's missing trailing fields are 0
            setattr(msg, spec[i], values[i - 2] if i - 2 < len(values) else 0)
    return msg


def admit(command, authenticated, last_counter):
    """E_OK if the device may act on a decoded `command`, else the error code to reply (§7.1).

    `authenticated` is the link's state (encrypted with an authenticated, MITM-protected key);
    `last_counter` is the highest counter accepted so far from this bonded peer (0 at first).
    """
    if command.klass != "command":
        return E_UNKNOWN_TYPE
    if not authenticated:
        return E_NOT_AUTHENTICATED
    if command.counter <= last_counter:
        return E_REPLAYED
    if not command.known:
        return E_UNKNOWN_TYPE
    return E_OK


def result(command_type, counter, code, detail=0):
    """The RESULT reply to a command (§6.1)."""
    return Message(RESULT, counter=counter, command=command_type, code=code, detail=detail)
