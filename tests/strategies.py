"""Hypothesis strategies for protocol messages and frames, derived from the codec's own tables."""

from hypothesis import strategies as st

from jikimi import protocol as p
from jikimi import protocol_json as pj

CLASS_RANGES = {
    "event": (p.EVENT_FIRST, p.EVENT_LAST),
    "reply": (p.REPLY_FIRST, p.REPLY_LAST),
    "command": (p.COMMAND_FIRST, p.COMMAND_LAST),
}
HEADER_SIZES = {"event": 12, "reply": 2, "command": 6}


def messages_of(code: int) -> st.SearchStrategy[p.Message]:
    fields = {name: st.integers(0, limit) for name, limit in p.fields_of(code)}
    return st.fixed_dictionaries(fields).map(lambda values: p.Message(code, **values))


any_message = st.sampled_from(pj.known_types()).flatmap(messages_of)


@st.composite
def unknown_messages(draw) -> p.Message:
    """A message of a type this codec does not know, as a newer peer would send it."""
    klass = draw(st.sampled_from(sorted(CLASS_RANGES)))
    first, last = CLASS_RANGES[klass]
    code = draw(st.integers(first, last).filter(lambda c: c not in pj.known_types()))
    fields = {}
    if klass == "event":
        fields = {"epoch": draw(st.integers(0, 0xFFFF)), "seq": draw(st.integers(0, 2**32 - 1)),
                  "time": draw(st.integers(0, 2**32 - 1))}
    elif klass == "command":
        fields = {"counter": draw(st.integers(0, 2**32 - 1))}
    body = draw(st.binary(max_size=p.MAX_FRAME - HEADER_SIZES[klass]))
    return p.Message(code, body=body, **fields)


@st.composite
def mutated_frames(draw) -> bytes:
    """A valid frame with a few random edits: flipped, inserted, deleted bytes, cut or extended."""
    frame = bytearray(p.encode(draw(st.one_of(any_message, unknown_messages()))))
    for _ in range(draw(st.integers(1, 3))):
        edit = draw(st.sampled_from(["flip", "insert", "delete", "truncate", "extend"]))
        position = draw(st.integers(0, len(frame)))
        if edit == "flip" and frame:
            frame[position % len(frame)] ^= draw(st.integers(1, 255))
        elif edit == "insert":
            frame.insert(position, draw(st.integers(0, 255)))
        elif edit == "delete" and frame:
            del frame[position % len(frame)]
        elif edit == "truncate":
            del frame[position:]
        elif edit == "extend":
            frame.extend(draw(st.binary(min_size=1, max_size=8)))
    return bytes(frame)


any_frame = st.one_of(st.binary(max_size=32), mutated_frames())
