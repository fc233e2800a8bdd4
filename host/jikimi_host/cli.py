"""The `jikimi` command."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from jikimi_host.paths import BUILD_DIR


def cmd_build(args: argparse.Namespace) -> int:
    from jikimi_host.build import build, device_sources, mpy_cross_version

    missing = [path for path in args.sources if not path.exists()]
    if missing:
        print(f"error: no such file or folder: {', '.join(map(str, missing))}", file=sys.stderr)
        return 2
    files = [p for p in args.sources if p.is_file()]
    sources = files + device_sources([p for p in args.sources if p.is_dir()]) if args.sources else None
    report = build(sources, out_dir=args.out)
    for error in report.errors:
        print(f"error: {error}", file=sys.stderr)
    if not report.ok:
        print(f"build failed: {len(report.errors)} file(s) MicroPython cannot compile", file=sys.stderr)
        return 1
    if args.verbose:
        for name, size in sorted(report.outputs.items()):
            print(f"{size:8d}  {name}")
    print(
        f"built {len(report.outputs)} file(s), {report.total_bytes} bytes, into {report.out_dir} "
        f"({mpy_cross_version()})"
    )
    return 0


def cmd_decode(args: argparse.Namespace) -> int:
    from jikimi import protocol

    status = 0
    for text in args.frames:
        try:
            frame = bytes.fromhex(text)
        except ValueError:
            print(f"error: {text!r} is not hex", file=sys.stderr)
            status = 1
            continue
        try:
            print(json.dumps(protocol.decode(frame).to_dict()))
        except protocol.ProtocolError as err:
            print(f"error: {text}: {err}", file=sys.stderr)
            status = 1
    return status


def cmd_encode(args: argparse.Namespace) -> int:
    from jikimi import protocol

    try:
        data = json.loads(args.message)
        if not isinstance(data, dict) or "type" not in data:
            raise ValueError('expected a JSON object with a "type", e.g. {"type": "arm", "counter": 1}')
        print(protocol.encode(protocol.from_dict(data)).hex())
    except (ValueError, protocol.ProtocolError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from jikimi_host.micropython import MicroPythonNotFound
    from jikimi_host.protocol_demo import DemoError, main

    try:
        return main(as_json=args.json)
    except (MicroPythonNotFound, DemoError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1


def cmd_sim(args: argparse.Namespace) -> int:
    import asyncio

    from jikimi_host.micropython import MicroPythonNotFound
    from jikimi_host.sim.board import BoardError
    from jikimi_host.sim.run import run_sim

    if args.script is not None and not args.script.is_file():
        print(f"error: no such script: {args.script}", file=sys.stderr)
        return 2
    config = None
    if args.passkey is not None:
        from jikimi import config as cfg

        config = {"passkey": args.passkey, "board": "sim", "roles": args.roles.split(",")}
        _, errors = cfg.validate(config)
        if errors:
            for error in errors:
                print(f"error: {error}", file=sys.stderr)
            return 2
    try:
        return asyncio.run(run_sim(args.script, args.args, args.flash, not args.quiet, config))
    except (MicroPythonNotFound, BoardError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="jikimi", description="Jikimi firmware and relay tools")
    sub = top.add_subparsers(dest="command", required=True)

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

    sim = sub.add_parser("sim", help="run a virtual board; prints its pty and HCI transport")
    sim.add_argument("--script", type=Path, help="run this file as main.py (default: the firmware's)")
    sim.add_argument("--flash", type=Path, help="flash folder to use and keep (default: a temporary one)")
    sim.add_argument("--quiet", action="store_true", help="do not echo the device console")
    sim.add_argument("--passkey", help="write a config.json with this 6-digit passkey (board sim)")
    sim.add_argument("--roles", default="panic", help="roles for that config.json (default: panic)")
    sim.add_argument("args", nargs="*", help="arguments for the script (sys.argv[1:])")
    sim.set_defaults(run=cmd_sim)

    demo = sub.add_parser("demo", help="protocol walk-through: device on MicroPython, phone here")
    demo.add_argument("--json", action="store_true", help="print the timeline as JSON")
    demo.set_defaults(run=cmd_demo)
    return top


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    return int(args.run(args))


if __name__ == "__main__":
    sys.exit(main())
