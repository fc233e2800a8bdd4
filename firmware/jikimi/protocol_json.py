"""The protocol's messages as JSON-ready dicts: the golden vectors (tests/vectors), the CLI's
`decode` and `encode`, the relay's store. Host code and tests only: the device never imports it
(a `.mpy` module's code and names would take the bell's heap), so it costs a bell flash alone.
"""

from jikimi import protocol as p


def known_types():
    """Every known type code, in ascending order."""
    return sorted(p._TYPES)  # the protocol's own table, not a Message built per code


def to_dict(msg):
    """A JSON-ready dict: {'type': name, field: value, ...}; bytes become hex. An unknown type
    keeps its code (`type_code`) and its raw `body`."""
    out = {"type": msg.name}
    if not msg.known:
        out["type_code"] = msg.type
    fields = msg.fields()
    for key in fields:
        value = fields[key]
        if isinstance(value, (bytes, bytearray)):
            value = bytes(value).hex()
        out[key] = value
    return out


def from_dict(data):
    """The inverse of to_dict: the Message a dict describes (ProtocolError for an unknown type
    name or field)."""
    fields = {}
    for key in data:
        if key not in ("type", "type_code"):
            fields[key] = data[key]
    if "type_code" in data:
        code = data["type_code"]
    else:
        code = p.type_code(data["type"])
    if "body" in fields and isinstance(fields["body"], str):
        fields["body"] = bytes.fromhex(fields["body"])
    return p.Message(code, **fields)
