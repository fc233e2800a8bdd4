"""`jikimi sim` and `jikimi demo`: the firmware on virtual boards, alone or through the whole
incident with a relay."""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path

from jikimi_host.cli.argtypes import number_in
from jikimi_host.errors import UsageError


def board_configs(args: argparse.Namespace) -> tuple[dict | None, dict | None]:
    """The bell's config.json and the door alarm's (None: none), validated as the device would."""
    from jikimi import config as cfg

    if args.config is not None and args.passkey is not None:
        raise UsageError("--config and --passkey both give the board's config.json: pass one")
    bell_config = None
    if args.config is not None:
        try:
            bell_config = cfg.read(str(args.config))
        except cfg.ConfigError as err:
            raise UsageError(f"the device config {err.errors[0]}") from None
    configs = []
    for config in (bell_config,
                   None if args.passkey is None else {"passkey": args.passkey, "board": "sim", "roles": args.roles.split(",")},
                   None if args.door is None else {"passkey": args.door, "board": "sim", "roles": ["door"]}):
        if config is not None:
            _, errors = cfg.validate(config) if isinstance(config, dict) else (None, ["the config must be a JSON object"])
            if errors:
                raise UsageError("\n".join(errors))
        configs.append(config)
    return configs[0] or configs[1], configs[2]


def cmd_sim(args: argparse.Namespace) -> int:
    from jikimi_host.sim.run import SimOptions, run_sim

    if args.script is not None and not args.script.is_file():
        raise UsageError(f"no such script: {args.script}")
    if (args.labgrid_place is None) != (args.labgrid_exporter is None):
        raise UsageError("--labgrid-place and --labgrid-exporter go together: the place's name and the file "
                         "to write labgrid-exporter's config to")
    bell_config, door_config = board_configs(args)
    if args.relay is not None:
        from jikimi_host.relay.config import load

        load(args.relay)  # a bad relay config: named now (exit 2), before any board starts
    if args.pairing and args.script is not None:
        raise UsageError("--pairing holds the firmware's button at power-up: it does not go with --script")
    return asyncio.run(run_sim(SimOptions(
        script=args.script, args=args.args, flash=args.flash, echo=not args.quiet, config=bell_config,
        door_config=door_config, labgrid_place=args.labgrid_place, labgrid_exporter=args.labgrid_exporter,
        pairing=args.pairing, control=args.control, commands=not args.no_commands, relay_config=args.relay,
        ui=args.ui, ui_port=int(args.ui_port))))


def cmd_demo(args: argparse.Namespace) -> int:
    from jikimi_host.demo import run

    return asyncio.run(run(args.cancel_window_s, args.json, args.svg, args.ui))


def add_commands(sub: argparse._SubParsersAction) -> None:
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
    sim.add_argument("--pairing", action="store_true",
                     help="power the bell up with its button held until its pairing window opens")
    sim.add_argument("--control", type=Path, metavar="SOCKET",
                     help="where to put the control socket (default: beside the flash folder)")
    sim.add_argument("--no-commands", action="store_true", help="do not read commands on standard input")
    sim.add_argument("--relay", type=Path, metavar="CONFIG",
                     help="also run `jikimi relay` with this config on the boards' radio (sim telephony as configured)")
    sim.add_argument("--ui", action="store_true", help="serve the bench page on loopback (prints its ui: address)")
    sim.add_argument("--ui-port", type=number_in(0, 65535), default=0, metavar="PORT",
                     help="the page's port (default: a free one)")
    sim.add_argument("args", nargs="*", help="arguments for the script (sys.argv[1:])")
    sim.set_defaults(run=cmd_sim)

    demo = sub.add_parser("demo", help="the whole incident: virtual bell + door alarm, a relay, a timeline")
    demo.add_argument("--json", action="store_true", help="print the timeline and figures as JSON")
    demo.add_argument("--svg", type=Path, default=Path("build/demo-timeline.svg"),
                      help="where to draw the timeline (default: build/demo-timeline.svg)")
    demo.add_argument("--cancel-window-s", type=int, default=20, choices=range(5, 61), metavar="5..60",
                      help="the cancel window before 112 is told (default: 20, the product's)")
    demo.add_argument("--ui", action="store_true",
                      help="watch it in the bench page on loopback (prints its ui: address; waits up to 30 s for it)")
    demo.set_defaults(run=cmd_demo)
