"""Round trips and encoder checks for every message type, and the command admission rules."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from jikimi import protocol as p
from jikimi import protocol_json as pj
from strategies import messages_of, unknown_messages

REQUIRED_MESSAGES = {
    # events (device -> phone)
    "alarm_raised", "alarm_cancelled", "alarm_acked", "door_opened", "door_closed", "armed",
    "disarmed", "tamper", "battery", "status",
    # commands (phone -> device)
    "ack", "cancel_alarm", "arm", "disarm", "silence_siren", "set_time", "locate", "request_status",
}


def test_the_protocol_has_every_required_message():
    assert REQUIRED_MESSAGES <= {p.type_name(code) for code in pj.known_types()}


def test_every_event_has_a_32_bit_sequence_number_and_every_command_a_counter():
    for code in pj.known_types():
        fields = dict(p.fields_of(code))
        if p.type_class(code) == "event":
            assert fields["seq"] == 2**32 - 1
        if p.type_class(code) == "command":
            assert fields["counter"] == 2**32 - 1


@pytest.mark.parametrize("code", pj.known_types(), ids=p.type_name)
@given(data=st.data())
def test_round_trip(code, data):
    message = data.draw(messages_of(code))
    frame = p.encode(message)
    assert 2 <= len(frame) <= p.MAX_FRAME
    assert p.decode(frame) == message
    assert p.decode(bytearray(frame)) == message
    assert p.decode(memoryview(frame)) == message


@pytest.mark.parametrize("code", pj.known_types(), ids=p.type_name)
@given(data=st.data())
def test_a_frame_packed_from_its_values_is_the_messages_frame(code, data):
    # p.pack: what a bell sends often (STATUS, RESULT), with no Message built on the way
    message = data.draw(messages_of(code))
    assert p.pack(code, [getattr(message, name) for name, _ in p.fields_of(code)]) == p.encode(message)


def test_packing_checks_the_values_as_encoding_does():
    values = [0] * len(p.fields_of(p.STATUS))
    assert p.decode(p.pack(p.STATUS, values)).fields() == dict.fromkeys(p.Message(p.STATUS).field_names(), 0)
    for at, bad, reason in ((0, None, "status: missing field 'fw_major'"),
                            (4, "1", "status.flags: not an integer: '1'"),
                            (6, 0x10000, "status.battery_mv: 65536 is outside 0..65535")):
        with pytest.raises(p.ProtocolError, match=reason) as caught:
            p.pack(p.STATUS, values[:at] + [bad] + values[at + 1:])
        assert caught.value.code == p.E_BAD_FIELD
    with pytest.raises(p.ProtocolError, match="status takes 11 field values, got 10") as caught:
        p.pack(p.STATUS, values[1:])
    assert caught.value.code == p.E_BAD_FIELD
    with pytest.raises(p.ProtocolError, match="type 0xbe is not one this codec knows") as caught:
        p.pack(0xBE, [1])
    assert caught.value.code == p.E_UNKNOWN_TYPE


@given(message=unknown_messages())
def test_unknown_types_round_trip_with_their_raw_body(message):
    frame = p.encode(message)
    decoded = p.decode(frame)
    assert not decoded.known
    assert decoded == message
    assert p.encode(decoded) == frame


# Types whose frame leaves room to append a field (§11); STATUS fills all 20 bytes.
ROOMY_TYPES = [code for code in pj.known_types()
               if len(p.encode(p.Message(code, **{name: 0 for name, _ in p.fields_of(code)}))) < p.MAX_FRAME]


@pytest.mark.parametrize("code", ROOMY_TYPES, ids=p.type_name)
@given(data=st.data())
def test_appended_bytes_are_ignored(code, data):
    message = data.draw(messages_of(code))
    frame = p.encode(message)
    extra = data.draw(st.binary(min_size=1, max_size=p.MAX_FRAME - len(frame)))
    assert p.decode(frame + extra) == message


def test_a_status_frame_fills_the_frame_and_nothing_can_be_appended():
    status = p.Message(p.STATUS, **{name: 0 for name, _ in p.fields_of(p.STATUS)})
    frame = p.encode(status)
    assert len(frame) == p.MAX_FRAME and p.STATUS not in ROOMY_TYPES
    with pytest.raises(p.ProtocolError) as caught:
        p.decode(frame + b"\x00")
    assert caught.value.code == p.E_BAD_LENGTH


@given(status=messages_of(p.STATUS))
def test_an_older_devices_status_without_the_appended_field_still_decodes(status):
    """A relay updated before the bell's firmware: the 18-byte STATUS from before `dropped` was
    appended (PROTOCOL.md §11) reads with dropped = 0; a frame shorter than that is still broken."""
    older = p.encode(status)[:18]
    decoded = p.decode(older)
    assert decoded.dropped == 0
    assert all(getattr(decoded, name) == getattr(status, name) for name, _ in p.fields_of(p.STATUS) if name != "dropped")
    with pytest.raises(p.ProtocolError) as caught:
        p.decode(older[:17])
    assert caught.value.code == p.E_BAD_LENGTH


@pytest.mark.parametrize("code", pj.known_types(), ids=p.type_name)
def test_encoder_rejects_out_of_range_missing_and_unknown_fields(code):
    valid = {name: 0 for name, _ in p.fields_of(code)}
    p.encode(p.Message(code, **valid))
    for name, limit in p.fields_of(code):
        for bad in (limit + 1, -1, "1", 1.5):
            with pytest.raises(p.ProtocolError, match=name) as caught:
                p.encode(p.Message(code, **dict(valid, **{name: bad})))
            assert caught.value.code == p.E_BAD_FIELD
        missing = dict(valid)
        del missing[name]
        with pytest.raises(p.ProtocolError, match=f"missing field '{name}'"):
            p.encode(p.Message(code, **missing))
    with pytest.raises(p.ProtocolError, match="unknown field 'colour'"):
        p.Message(code, colour=1, **valid)


def test_message_names_and_dicts_round_trip():
    for code in pj.known_types():
        values = {name: limit for name, limit in p.fields_of(code)}
        message = p.Message(p.type_name(code), **values)
        assert message.type == code
        assert pj.from_dict(pj.to_dict(message)) == message


def test_unknown_name_is_a_protocol_error():
    with pytest.raises(p.ProtocolError, match="no message type named 'alarm_rasied'"):
        p.Message("alarm_rasied")


# Admission (PROTOCOL.md §7.1)

commands = st.sampled_from([c for c in pj.known_types() if p.type_class(c) == "command"])


@given(code=commands, counter=st.integers(0, 2**32 - 1), last=st.integers(0, 2**32 - 1))
def test_an_unauthenticated_link_gets_nothing_done(code, counter, last):
    command = p.Message(code, counter=counter, **{n: 0 for n, _ in p.fields_of(code)[1:]})
    assert p.admit(command, False, last) == p.E_NOT_AUTHENTICATED


@given(counters=st.lists(st.integers(0, 50), max_size=40))
def test_only_a_strictly_increasing_counter_is_admitted(counters):
    last = 0
    for counter in counters:
        code = p.admit(p.Message(p.ARM, counter=counter), True, last)
        if counter > last:
            assert code == p.E_OK
            last = counter
        else:
            assert code == p.E_REPLAYED


def test_a_replayed_frame_is_rejected_after_the_original_was_accepted():
    frame = p.encode(p.Message(p.DISARM, counter=7))
    assert p.admit(p.decode(frame), True, 6) == p.E_OK
    assert p.admit(p.decode(frame), True, 7) == p.E_REPLAYED


def test_unknown_commands_and_non_commands_are_not_admitted():
    newer = p.Message(0xBE, counter=9, body=b"\x01")
    assert p.admit(newer, True, 8) == p.E_UNKNOWN_TYPE
    assert p.admit(newer, True, 9) == p.E_REPLAYED
    event = p.Message(p.ALARM_RAISED, epoch=1, seq=1, time=0, mode=1, trigger=1, battery_pct=1)
    assert p.admit(event, True, 0) == p.E_UNKNOWN_TYPE


def test_results_carry_the_command_counter_and_code():
    reply = p.decode(p.encode(p.result(p.ARM, 12, p.E_REPLAYED, 15)))
    assert (reply.counter, reply.command, reply.code, reply.detail) == (12, p.ARM, p.E_REPLAYED, 15)
    assert str(p.ProtocolError(p.E_REPLAYED, "x")) == "REPLAYED: x"
    # the reason is a key and its values; the text is made where it is read (protocol_text.py)
    error = p.ProtocolError(p.E_BAD_LENGTH, "runt", 1)
    assert (error.why, error.args[1:], error.text) == ("runt", (1,), "a 1-byte frame is shorter than any message")
    assert p.error_name(200) == "E200"
