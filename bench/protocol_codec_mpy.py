# Run under MicroPython by bench_protocol.py: time the codec and measure its RAM cost.
# Prints one JSON line. Usage: micropython protocol_codec_mpy.py VECTORS_JSON ROUNDS
import gc
import json
import sys
import time

gc.collect()
before_import = gc.mem_alloc()
from jikimi import protocol as p

gc.collect()
import_bytes = gc.mem_alloc() - before_import
from jikimi import protocol_json as pj  # the vectors' JSON form; not counted above

with open(sys.argv[1]) as f:
    vectors = json.load(f)["valid"]
rounds = int(sys.argv[2])
messages = [pj.from_dict(v["message"]) for v in vectors]
frames = [bytes.fromhex(v["hex"]) for v in vectors]
del vectors

start = time.ticks_us()
for _ in range(rounds):
    for m in messages:
        p.encode(m)
encode_us = time.ticks_diff(time.ticks_us(), start)

start = time.ticks_us()
for _ in range(rounds):
    for f in frames:
        p.decode(f)
decode_us = time.ticks_diff(time.ticks_us(), start)

# What a frame sent costs the heap (garbage, collected later): a Message built from its fields
# and encoded, as the host does, against the frame packed from its values, as a bell sends its
# STATUS and RESULT frames (p.pack).
names = [m.field_names() for m in messages]
values = [[getattr(m, n) for n in ns] for m, ns in zip(messages, names)]
kinds = [m.type for m in messages]


def allocated(send):
    gc.collect()
    gc.disable()
    before = gc.mem_alloc()
    for i in range(len(kinds)):
        send(i)
    spent = gc.mem_alloc() - before
    gc.enable()
    return spent / len(kinds)


def via_message(i):
    fields = {}
    for n, v in zip(names[i], values[i]):
        fields[n] = v
    p.encode(p.Message(kinds[i], **fields))


message_bytes = allocated(via_message)
packed_bytes = allocated(lambda i: p.pack(kinds[i], values[i]))

ops = rounds * len(frames)
print(json.dumps({"ops": ops, "encode_us": encode_us / ops, "decode_us": decode_us / ops,
                  "import_bytes": import_bytes, "message_bytes": message_bytes, "packed_bytes": packed_bytes}))
