# Run under MicroPython: decode a seeded batch of random and mutated frames; every one must
# decode or raise ProtocolError, and no decode may allocate more than a small bounded amount.
# Prints a JSON summary; exits 1 on the first frame that raised anything else.
# Usage: micropython protocol_fuzz.py VECTORS_JSON SEED COUNT
import gc
import json
import random
import sys

from jikimi import protocol as p

vectors_path, seed, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
random.seed(seed)
with open(vectors_path) as f:
    vectors = json.load(f)
seeds = [bytes.fromhex(v["hex"]) for v in vectors["valid"] + vectors["decode_only"]]
del vectors


def byte():
    return random.getrandbits(8)


def random_frame():
    return bytes([byte() for _ in range(random.getrandbits(5))])


def mutated_frame():
    frame = bytearray(seeds[random.getrandbits(16) % len(seeds)])
    for _ in range(1 + random.getrandbits(2)):
        edit = random.getrandbits(3)
        at = random.getrandbits(5) % (len(frame) + 1)
        if edit < 3 and frame:
            frame[at % len(frame)] ^= 1 + random.getrandbits(8) % 255
        elif edit == 3:
            frame = frame[:at] + bytearray([byte()]) + frame[at:]
        elif edit == 4 and frame:
            frame = frame[: at % len(frame)] + frame[at % len(frame) + 1 :]
        elif edit == 5:
            frame = frame[:at]
        else:
            frame.extend(bytes([byte() for _ in range(1 + random.getrandbits(3))]))
    return bytes(frame)


decoded = rejected = max_alloc = 0
huge = b"\x01" * 100000
for i in range(count):
    frame = huge if i == 0 else (random_frame() if i % 2 else mutated_frame())
    gc.collect()
    gc.disable()
    before = gc.mem_alloc()
    try:
        p.decode(frame)
        decoded += 1
    except p.ProtocolError:
        rejected += 1
    except Exception as err:
        print(json.dumps({"frame": frame.hex(), "raised": repr(err)}))
        sys.exit(1)
    max_alloc = max(max_alloc, gc.mem_alloc() - before)
    gc.enable()
# A bell only reads a rejected frame's code: the readable texts are loaded by whoever asks for one.
texts_loaded = "jikimi.protocol_text" in sys.modules
print(json.dumps({"frames": count, "decoded": decoded, "rejected": rejected, "max_alloc": max_alloc,
                  "texts_loaded": texts_loaded}))
