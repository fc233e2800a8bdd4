"""`jikimi relay`: the phone relay (BLE central → SQLite → SMS to guardians, the 112 report and call)."""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path

from jikimi_host.errors import JikimiError, UsageError


def cmd_relay(args: argparse.Namespace) -> int:
    """The relay's own errors carry their exit codes (jikimi_host.errors): a bad config or
    transport name 2, a database it must not use 3 (STORE_EXIT)."""
    from jikimi_host.relay.config import load
    from jikimi_host.relay.service import Relay, SimTelephony, restore_keys
    from jikimi_host.relay.telephony import ModemTelephony

    config = load(args.config)
    transport = args.transport or config.transport
    if transport == "virtual":
        raise UsageError("transport 'virtual' is the virtual radio of a rig or `jikimi sim`: pass the HCI "
                         "transport it prints, e.g. --transport tcp-client:127.0.0.1:40123, or a Bumble transport "
                         "for a real controller (usb:0, serial:/dev/ttyUSB0,1000000), or os for the computer's own "
                         "Bluetooth stack")
    if config.backend == "modem":
        if config.modem is None:  # load() refuses this already; an error, not an assert (python -O drops those)
            raise UsageError(f'{args.config}: backend = "modem" needs a [modem] table with port')
        telephony = ModemTelephony(config.modem.port, real_modem_opt_in=args.real_modem,
                                   allow_emergency=args.allow_emergency or config.modem.allow_emergency,
                                   baudrate=config.modem.baudrate)
    else:
        telephony = SimTelephony()
    if args.restore_keys:
        moved, backup = restore_keys(config.database)
        print(f"restored {len(backup.bonds)} bond(s) and {len(backup.paired)} paired device(s) from the backup "
              f"of {time.strftime('%Y-%m-%d %H:%M', time.localtime(backup.written_at))} into a new "
              f"{config.database}" + (f"; the old file is now {moved}" if moved else ""), file=sys.stderr)
    try:
        relay = Relay(config, transport, telephony, as_json=args.json)
    except JikimiError:
        raise
    except ValueError as err:  # what the config lacks for a relay to run (no devices, no address)
        raise UsageError(f"{args.config}: {err}") from None
    try:
        asyncio.run(relay.run())
    except KeyboardInterrupt:
        return 0
    except OSError as err:  # a transport that does not answer: it may be there after a restart
        raise JikimiError(str(err)) from None
    return 0


def add_commands(sub: argparse._SubParsersAction) -> None:
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
