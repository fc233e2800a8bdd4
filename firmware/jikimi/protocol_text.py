"""The readable reasons of the codec's errors (ProtocolError.text). Host code and tests read
them; a bell logs only the error code's name, so it never imports this module: as constants of
protocol.py these formats would take a `.mpy` bell about 700 B of heap for good.
"""

# ProtocolError's `why` key -> the format its arguments fill
_FORMATS = {
    "no_name": "no message type named %r",
    "field": "%s: unknown field %r",
    "missing": "%s: missing field %r",
    "not_int": "%s.%s: not an integer: %r",
    "range": "%s.%s: %d is outside 0..%d",
    "reserved": "type 0x%02x is reserved",
    "unknown": "type 0x%02x is not one this codec knows the fields of",
    "values": "%s takes %d field values, got %d",
    "body": "%s: body must be bytes",
    "too_long": "%s: %d bytes exceed the %d-byte frame",
    "not_bytes": "not a byte buffer",
    "runt": "a %d-byte frame is shorter than any message",
    "oversize": "%d bytes exceed the %d-byte frame",
    "version": "protocol version %d, this peer speaks %d",
    "short": "%s needs %d bytes, got %d",
}


def text(why, args):
    """The reason `why` filled with `args`; a `why` with no format here is its own text."""
    fmt = _FORMATS.get(why)
    if fmt is None:
        return why if not args else "%s %r" % (why, args)
    return fmt % args
