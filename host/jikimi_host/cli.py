"""The `jikimi` command."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from jikimi_host.argtypes import number_in
from jikimi_host.paths import BUILD_DIR

# `jikimi relay` with a database it must not use (damaged, emptied, unwritable): a person has to
# look, so a supervisor should not restart it in a loop (systemd: RestartPreventExitStatus=3).
STORE_EXIT = 3


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
        print(protocol.encode(protocol.from_dict(data)).hex())
    except (ValueError, protocol.ProtocolError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    import asyncio

    from jikimi_host.demo import run
    from jikimi_host.micropython import MicroPythonNotFound

    try:
        return asyncio.run(run(args.cancel_window_s, args.json, args.svg))
    except MicroPythonNotFound as err:
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
    from jikimi import config as cfg

    if (args.labgrid_place is None) != (args.labgrid_exporter is None):
        print("error: --labgrid-place and --labgrid-exporter go together: the place's name and the file "
              "to write labgrid-exporter's config to", file=sys.stderr)
        return 2
    if args.config is not None and args.passkey is not None:
        print("error: --config and --passkey both give the board's config.json: pass one", file=sys.stderr)
        return 2
    bell_config = None
    if args.config is not None:
        try:
            bell_config = cfg.read(str(args.config))
        except cfg.ConfigError as err:
            print(f"error: the device config {err.errors[0]}", file=sys.stderr)
            return 2
    configs = []
    for config in (bell_config,
                   None if args.passkey is None else {"passkey": args.passkey, "board": "sim", "roles": args.roles.split(",")},
                   None if args.door is None else {"passkey": args.door, "board": "sim", "roles": ["door"]}):
        if config is not None:
            _, errors = cfg.validate(config) if isinstance(config, dict) else (None, ["the config must be a JSON object"])
            if errors:
                for error in errors:
                    print(f"error: {error}", file=sys.stderr)
                return 2
        configs.append(config)
    try:
        return asyncio.run(run_sim(args.script, args.args, args.flash, not args.quiet, configs[0] or configs[1],
                                   configs[2], args.labgrid_place, args.labgrid_exporter))
    except (MicroPythonNotFound, BoardError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1


def cmd_battery_life(args: argparse.Namespace) -> int:
    import json

    from jikimi import config as device_config
    from jikimi_host.battery_life import BatteryLifeError, Usage, estimate

    config = None
    if args.config is not None:
        try:
            config = device_config.load(str(args.config))
        except OSError as err:
            print(f"error: cannot read {args.config}: {err.strerror}", file=sys.stderr)
            return 2
        except device_config.ConfigError as err:
            for message in err.errors:
                # load()'s own messages (cannot read, not JSON, not UTF-8) name the file already
                where = "" if message.startswith(f"{args.config}: ") else f"{args.config}: "
                print(f"error: {where}{message}", file=sys.stderr)
            return 2
    usage = Usage(presses_per_day=args.presses_per_day, alarms_per_month=args.alarms_per_month)
    try:
        result = estimate(args.board, args.capacity_mah, config, usage)
    except BatteryLifeError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(result.as_dict()))
        return 0
    print(f"{result.board}, {result.capacity_mah:g} mAh: about {result.days:.0f} days "
          f"({result.days / 30.4:.1f} months) at an average {result.average_ua:.0f} uA")
    for label, value in (("deep sleep (or always awake)", result.sleep_ua),
                         ("heartbeat wake-ups", result.heartbeat_ua),
                         ("button presses", result.presses_ua), ("alarms", result.alarms_ua),
                         ("self-discharge", result.self_discharge_ua)):
        print(f"  {label:<30} {value:9.1f} uA")
    print("Assumptions: firmware/POWER.md")
    return 0


def cmd_relay(args: argparse.Namespace) -> int:
    import asyncio

    from jikimi_host.relay.central import TransportNameError
    from jikimi_host.relay.config import RelayConfigError, load
    from jikimi_host.relay.dbfile import StoreError
    from jikimi_host.relay.service import Relay, SimTelephony, restore_keys
    from jikimi_host.relay.telephony import ModemTelephony, TelephonyError

    try:
        config = load(args.config)
    except RelayConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    transport = args.transport or config.transport
    if transport == "virtual":
        print("error: transport 'virtual' is the virtual radio of a rig or `jikimi sim`: pass the HCI "
              "transport it prints, e.g. --transport tcp-client:127.0.0.1:40123, or a Bumble transport "
              "for a real controller (usb:0, serial:/dev/ttyUSB0,1000000), or os for the computer's own "
              "Bluetooth stack", file=sys.stderr)
        return 2
    if config.backend == "modem":
        assert config.modem is not None
        try:
            telephony = ModemTelephony(config.modem.port, real_modem_opt_in=args.real_modem,
                                       allow_emergency=args.allow_emergency or config.modem.allow_emergency,
                                       baudrate=config.modem.baudrate)
        except TelephonyError as err:
            print(f"error: {err.message}", file=sys.stderr)
            return 2
    else:
        telephony = SimTelephony()
    try:
        if args.restore_keys:
            moved, backup = restore_keys(config.database)
            print(f"restored {len(backup.bonds)} bond(s) and {len(backup.paired)} paired device(s) from the backup "
                  f"of {time.strftime('%Y-%m-%d %H:%M', time.localtime(backup.written_at))} into a new "
                  f"{config.database}" + (f"; the old file is now {moved}" if moved else ""), file=sys.stderr)
        relay = Relay(config, transport, telephony, as_json=args.json)
    except StoreError as err:
        print(f"error: {err}", file=sys.stderr)
        return STORE_EXIT
    except ValueError as err:
        print(f"error: {args.config}: {err}", file=sys.stderr)
        return 2
    try:
        asyncio.run(relay.run())
    except KeyboardInterrupt:
        return 0
    except TransportNameError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except StoreError as err:
        print(f"error: {err}", file=sys.stderr)
        return STORE_EXIT
    except OSError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


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
    sim.add_argument("--door", metavar="PASSKEY",
                     help="also start a virtual door alarm with this passkey, on the same radio")
    sim.add_argument("--config", type=Path, help="the board's config.json (validated as the device would)")
    sim.add_argument("--labgrid-place", metavar="NAME",
                     help="offer the board as a labgrid place NAME: serves its power switch (simplerest) and "
                          "writes the exporter config (needs --labgrid-exporter)")
    sim.add_argument("--labgrid-exporter", type=Path, metavar="FILE",
                     help="where to write labgrid-exporter's config for --labgrid-place")
    sim.add_argument("args", nargs="*", help="arguments for the script (sys.argv[1:])")
    sim.set_defaults(run=cmd_sim)

    relay = sub.add_parser("relay", help="the phone relay: BLE central → SMS to guardians, 112 report and call")
    relay.add_argument("--config", type=Path, required=True, help="the relay's TOML config (relay/example-relay.toml)")
    relay.add_argument("--transport", help="a Bumble HCI transport (tcp-client:HOST:PORT, usb:0, serial:PORT,BAUD), "
                       "or os for the OS Bluetooth stack via adafruit_ble (default: the config's transport)")
    relay.add_argument("--json", action="store_true", help="one JSON object per line instead of readable lines")
    relay.add_argument("--real-modem", action="store_true",
                       help="allow the modem backend to send real SMS and place real calls")
    relay.add_argument("--allow-emergency", action="store_true",
                       help="allow texting and calling the emergency number on a real modem")
    relay.add_argument("--restore-keys", action="store_true",
                       help="start a new database from the backup of the bonds and counters beside it, moving a "
                       "damaged one aside (what the relay says to do when its database is damaged)")
    relay.set_defaults(run=cmd_relay)

    life = sub.add_parser("battery-life", help="estimate days per charge for a board and config")
    life.add_argument("--board", default="esp32_devkitc", help="board folder (default: esp32_devkitc)")
    life.add_argument("--capacity-mah", type=number_in(0, 1e6, above=True), default=1000.0,
                      help="battery capacity (default: 1000)")
    life.add_argument("--config", type=Path, help="the device's config.json (default: the defaults)")
    life.add_argument("--presses-per-day", type=number_in(0, 86400), default=5.0,
                      help="non-alarm presses (default: 5)")
    life.add_argument("--alarms-per-month", type=number_in(0, 10000), default=1.0, help="alarms (default: 1)")
    life.add_argument("--json", action="store_true", help="print the estimate as JSON")
    life.set_defaults(run=cmd_battery_life)

    from jikimi_host.device_cli import add_device_commands

    add_device_commands(sub)

    demo = sub.add_parser("demo", help="the whole incident: virtual bell + door alarm, a relay, a timeline")
    demo.add_argument("--json", action="store_true", help="print the timeline and figures as JSON")
    demo.add_argument("--svg", type=Path, default=Path("build/demo-timeline.svg"),
                      help="where to draw the timeline (default: build/demo-timeline.svg)")
    demo.add_argument("--cancel-window-s", type=int, default=20, choices=range(5, 61), metavar="5..60",
                      help="the cancel window before 112 is told (default: 20, the product's)")
    demo.set_defaults(run=cmd_demo)
    return top


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    return int(args.run(args))


if __name__ == "__main__":
    sys.exit(main())
