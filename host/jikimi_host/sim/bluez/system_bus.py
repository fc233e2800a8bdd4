"""A private D-Bus system bus (`dbus-daemon`) for the fake BlueZ and its clients, so that CI
needs neither root nor the machine's own bus."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from jikimi_host.processes import stop_process

STARTUP_TIMEOUT_S = 10.0

BUS_CONFIG = """<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-BUS Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>system</type>
  <listen>unix:path={socket}</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow user="*"/>
    <allow own="org.bluez"/>
    <allow send_destination="*"/>
    <allow receive_sender="*"/>
  </policy>
</busconfig>
"""


async def start_system_bus(folder: Path) -> tuple[asyncio.subprocess.Process, str]:
    """A private `dbus-daemon` listening on a unix socket in `folder`; (process, bus address).
    Stop it with `jikimi_host.processes.stop_process`."""
    folder.mkdir(parents=True, exist_ok=True)
    socket = folder / "system_bus_socket"
    if len(str(socket)) > 100:  # sun_path holds 108 bytes
        raise ValueError(f"the socket path {socket} is too long for a unix socket")
    config = folder / "system-bus.conf"
    config.write_text(BUS_CONFIG.format(socket=socket))
    log = os.open(folder / "dbus-daemon.log", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        process = await asyncio.create_subprocess_exec(
            "dbus-daemon", "--nofork", "--print-address", f"--config-file={config}",
            stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=log)
    except FileNotFoundError:
        raise RuntimeError("dbus-daemon is not installed; the OS-stack tests run a private system bus with it "
                           "(Debian/Ubuntu: apt-get install dbus-daemon; .ci/run installs it)") from None
    finally:
        os.close(log)
    try:
        assert process.stdout is not None
        line = await asyncio.wait_for(process.stdout.readline(), STARTUP_TIMEOUT_S)
        if not line:
            raise RuntimeError(f"dbus-daemon exited: {(folder / 'dbus-daemon.log').read_text()}")
    except BaseException:
        await stop_process(process)
        raise
    return process, line.decode().strip()
