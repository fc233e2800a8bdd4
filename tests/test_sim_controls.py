"""`jikimi sim` with controls (issue 18): a person pokes the virtual bell the way they would poke
a real one, by typing commands (or a script writing them to the control socket), and each command
is answered with what the device did. The last test is the README's walkthrough: start `jikimi
sim`, start `jikimi relay` against its HCI transport, pair, raise an alarm, see the guardians'
texts."""

from __future__ import annotations

import asyncio
import contextlib
import json
from pathlib import Path

import pytest

from jikimi_host.relay.config import write_config
from jikimi_host.rig.firmware import CONFIG, firmware_board
from jikimi_host.rig.relay import RelayProcess
from jikimi_host.rig.sim_process import SimProcess
from jikimi_host.sim.controls import Bench, BenchBoard
from jikimi_host.wait import until

pytestmark = pytest.mark.micropython

GUARDIAN = "+821000000001"  # the fictional 010-0000 block


@contextlib.asynccontextmanager
async def bench_with_a_bell(tmp_path: Path, radio):
    async for bell in firmware_board(tmp_path / "bell", radio, CONFIG):
        await bell.start()
        await until(lambda: any('"ready"' in line for _, line in bell.console.lines), 30, "the app ready",
                    log=bell.console.tail)
        yield Bench([BenchBoard("bell", bell, bell.start)]), bell


async def test_a_hold_is_answered_with_the_alarm_and_the_siren(tmp_path, radio):
    async with bench_with_a_bell(tmp_path, radio) as (bench, bell):
        answer = await bench.run("hold 1.3")  # the test config's hold is 1 s
        assert answer.ok, answer.error
        assert any(line.startswith("gesture hold") for line in answer.did), answer.did
        assert any(line.startswith("event alarm_raised") for line in answer.did), answer.did
        assert any(line.startswith("siren on") for line in answer.did), answer.did
        status = await bench.run("status")
        assert status.did[0] == "running" and status.did[1].startswith("siren on at ")


async def test_bad_commands_are_answered_with_what_they_take_and_change_nothing(tmp_path, radio):
    async with bench_with_a_bell(tmp_path, radio) as (bench, bell):
        outputs = len(bell.outputs)
        for line, says in (("jump", "unknown command 'jump'"), ("hold", "usage: hold S"),
                           ("hold soon", "hold: seconds: must be a number, got 'soon'"),
                           ("hold 1e9", "hold: seconds: must be 0.02 to 600"),
                           ("battery nan", "battery MV: must be a number"), ("press nose", "no input 'nose'"),
                           ("boot", "bell is running"), ("bell", "and then what?")):
            answer = await bench.run(line)
            assert not answer.ok and says in answer.error, (line, answer.error)
            assert answer.text().startswith("error: ")
        assert len(bell.outputs) == outputs and bell.running
        help_text = (await bench.run("help")).did[0]
        assert "pairing" in help_text and "power-cut" in help_text


async def test_a_power_cut_then_boot_is_told(tmp_path, radio):
    async with bench_with_a_bell(tmp_path, radio) as (bench, bell):
        assert (await bench.run("power-cut")).ok and not bell.running
        refused = await bench.run("press")
        assert not refused.ok and "bell is off" in refused.error
        booted = await bench.run("boot")
        assert booted.ok and bell.running
        assert any(line.startswith("boot") or line == "ready" for line in booted.did), booted.did


async def send(socket: Path, line: str, timeout_s: float = 60) -> dict:
    reader, writer = await asyncio.open_unix_connection(str(socket))
    try:
        writer.write(line.encode() + b"\n")
        await writer.drain()
        return json.loads(await asyncio.wait_for(reader.readline(), timeout_s))
    finally:
        writer.close()


async def test_the_readme_walkthrough_pair_raise_an_alarm_and_see_the_guardians_texts(tmp_path):
    # jikimi sim --passkey 123456 (a shorter hold and pairing hold, as the rig's config has them)
    config = dict(CONFIG, passkey="123456")
    (tmp_path / "bell.json").write_text(json.dumps(config))
    async with SimProcess("--quiet", "--flash", str(tmp_path / "bell"), "--config", str(tmp_path / "bell.json"),
                          stdin=asyncio.subprocess.PIPE) as sim:
        relay_toml = write_config(tmp_path / "relay.toml", {
            "owner": "김지은", "database": tmp_path / "relay.sqlite", "cancel_window_s": 5,
            "guardians": [{"name": "어머니", "number": GUARDIAN}],
            "devices": [{"name": "비상벨", "passkey": "123456"}]})
        relay = await RelayProcess(relay_toml, sim.facts["hci"]).start()
        try:
            await relay.expect(lambda r: r["kind"] == "ready", what="the relay starting")
            await sim.command("pairing")  # typed on the sim's standard input, as a person would
            await relay.expect(lambda r: r["kind"] == "link" and r["text"].startswith("connected to 비상벨"),
                               timeout_s=90, what="the bell paired and connected")
            # raise an alarm: through the control socket, as a script would
            answer = await send(Path(sim.facts["control"]), "hold 1.3")
            assert answer["ok"] and any(line.startswith("siren on") for line in answer["did"]), answer
            text = await relay.expect(lambda r: r["kind"] == "sms" and r["to"] == GUARDIAN, timeout_s=60,
                                      what="the guardian's text")
            assert "김지은" in text["message"]
        finally:
            await relay.stop()
    assert sim.returncode == 0
