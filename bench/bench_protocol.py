"""Protocol codec figures: .mpy size, RAM after import, and encode/decode time per frame.

Runs the same codec file under MicroPython (the device's runtime) and CPython (the relay's) in
the same run, over the golden vectors, and prints both side by side.

    .venv/bin/python bench/bench_protocol.py [--rounds N]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import timeit
from pathlib import Path

from jikimi import protocol as p
from jikimi import protocol_json as pj
from jikimi_host.toolchain.compiler import build
from jikimi_host.toolchain.interpreter import run_micropython
from jikimi_host.paths import FIRMWARE_DIR, PROTOCOL_VECTORS

HERE = Path(__file__).parent


def cpython_figures(rounds: int) -> dict[str, float]:
    vectors = json.loads(PROTOCOL_VECTORS.read_text())["valid"]
    messages = [pj.from_dict(v["message"]) for v in vectors]
    frames = [bytes.fromhex(v["hex"]) for v in vectors]
    ops = rounds * len(frames)
    encode_s = timeit.timeit(lambda: [p.encode(m) for m in messages], number=rounds)
    decode_s = timeit.timeit(lambda: [p.decode(f) for f in frames], number=rounds)
    return {"ops": ops, "encode_us": encode_s * 1e6 / ops, "decode_us": decode_s * 1e6 / ops}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=2000, help="passes over the vectors")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as out:
        sources = [FIRMWARE_DIR / "jikimi" / name for name in ("protocol.py", "protocol_json.py")]
        report = build(sources, out_dir=Path(out))
        assert report.ok, report.errors
        mpy_size = next(size for path, size in report.outputs.items() if path.endswith("protocol.mpy"))
        source_size = (FIRMWARE_DIR / "jikimi" / "protocol.py").stat().st_size
        mpy = json.loads(
            run_micropython(
                script=HERE / "protocol_codec_mpy.py",
                args=[str(PROTOCOL_VECTORS), str(args.rounds)],
                path=[Path(out) / "firmware"],  # the compiled .mpy, as on the device
                timeout_s=600,
            ).check().stdout
        )
    cpy = cpython_figures(args.rounds)

    print(f"protocol.py: {source_size} bytes of source -> {mpy_size} bytes of .mpy")
    print(f"MicroPython RAM taken by importing the codec: {mpy['import_bytes']} bytes")
    print(f"{'per frame (golden vectors)':<28}{'MicroPython':>14}{'CPython':>12}{'ratio':>8}")
    for key, label in (("encode_us", "encode"), ("decode_us", "decode")):
        print(f"{label:<28}{mpy[key]:>11.2f} us{cpy[key]:>9.2f} us{mpy[key] / cpy[key]:>7.1f}x")
    print(f"({mpy['ops']} frames each; Unix-port figures on this host, not ESP32 timings)")
    print(f"MicroPython heap allocated per frame sent: {mpy['packed_bytes']:.0f} bytes packed from its values "
          f"(p.pack), against {mpy['message_bytes']:.0f} bytes for a Message built from a dict of its fields "
          f"and encoded, as a bell sent them before (baseline); 64-bit port, about half on a chip")


if __name__ == "__main__":
    main()
