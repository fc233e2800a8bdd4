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

ops = rounds * len(frames)
print(json.dumps({"ops": ops, "encode_us": encode_us / ops, "decode_us": decode_us / ops,
                  "import_bytes": import_bytes}))
