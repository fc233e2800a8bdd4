# Run under MicroPython: apply the codec to every golden vector and print what it produced as
# JSON, for the CPython side of the test to compare with the file.
import json
import sys

from jikimi import protocol as p
from jikimi import protocol_json as pj


def decoded(hex_text):
    try:
        return pj.to_dict(p.decode(bytes.fromhex(hex_text)))
    except p.ProtocolError as err:
        return {"error": p.error_name(err.code)}


with open(sys.argv[1]) as f:
    vectors = json.load(f)

out = {"valid": [], "decode_only": [], "invalid": []}
for v in vectors["valid"]:
    try:
        encoded = p.encode(pj.from_dict(v["message"])).hex()
    except p.ProtocolError as err:
        encoded = "error " + str(err)
    out["valid"].append({"hex": encoded, "decoded": decoded(v["hex"])})
for v in vectors["decode_only"]:
    out["decode_only"].append(decoded(v["hex"]))
for v in vectors["invalid"]:
    out["invalid"].append(decoded(v["hex"]))
print(json.dumps(out))
