"""The rig as a labgrid citizen (README, "A shared bench with labgrid"): a real labgrid-coordinator
and labgrid-exporter on loopback, virtual boards offered as places by `jikimi sim
--labgrid-place` (console through the exporter's ser2net, power through labgrid's simplerest
power driver, the radio as a BumbleHCITransport), and the scenario suite run through
`--jikimi-target labgrid:bench=jikimi`: two pytest workers each reserve and lock a place of
their own, and a third job that wants one waits until one is free. What goes wrong says which
place, and nothing waits for ever."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from jikimi_host.rig.labgrid import LabgridError, LabgridPlace, find_labgrid_client
from jikimi_host.rig.labgrid_bench import LabgridBench
from jikimi_host.rig.targets import LabgridTarget
from jikimi_host.device.testconsole import TestConsoleError

pytestmark = pytest.mark.micropython
REPO = Path(__file__).resolve().parents[1]
# Four of the scenario suite's eight (tests/test_hil_scenarios.py runs them all on the virtual
# target), two per place: the power cut among them (the place's power driver), and enough for
# both workers to hold their place at once. The suite's time is bench/bench_labgrid.py's.
SCENARIOS_K = "power_cut or low_battery or after_a_reboot or phone_is_away"
SCENARIOS = 4


@pytest.fixture(autouse=True)
def labgrid_and_ser2net():
    try:
        find_labgrid_client()
    except LabgridError as err:
        pytest.fail(str(err))
    if not (shutil.which("ser2net") or os.path.exists("/usr/sbin/ser2net")):
        pytest.fail("ser2net is not installed (Debian package ser2net; .ci/run installs it): labgrid's exporter "
                    "serves the consoles with it")


def holder(bench: LabgridBench, place: str) -> str | None:
    """Who has locked `place` ("host/user"), or None."""
    found = re.search(r"^  acquired: (\S+)", bench.client("show", place=place), re.M)
    return None if found is None or found.group(1) == "None" else found.group(1)


def as_user(bench: LabgridBench, user: str) -> dict[str, str]:
    return dict(bench.env, LG_USERNAME=user)


def place_for(bench: LabgridBench, spec: str, user: str, wait_s: float = 300) -> LabgridPlace:
    os.environ.update(bench.env)  # LG_COORDINATOR, as a CI job's environment has it
    return LabgridPlace(spec, identity=user, wait_s=wait_s)


@pytest.fixture
def coordinator_env():
    saved = os.environ.get("LG_COORDINATOR")
    yield
    if saved is None:
        os.environ.pop("LG_COORDINATOR", None)
    else:
        os.environ["LG_COORDINATOR"] = saved


@pytest.mark.timeout(900)  # the locking (240 s at most) and the workers' scenarios (600 s at most)
def test_two_pytest_workers_run_scenarios_on_two_places_and_a_third_job_waits_for_one(tmp_path, coordinator_env):
    with LabgridBench(tmp_path, ["jikimi-1", "jikimi-2"]) as bench:
        suite = subprocess.Popen(
            [sys.executable, "-m", "pytest", str(REPO / "tests" / "test_hil_scenarios.py"), "-q", "-p",
             "no:cacheprovider", "-n", "2", "--jikimi-target", "labgrid:bench=jikimi", "-rs", "-k", SCENARIOS_K,
             "-W", "ignore::DeprecationWarning"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=bench.env, cwd=REPO)
        try:
            # Generous: the two workers start their own pytest, xdist and labgrid sessions, and on
            # CI's two cores shared with the whole suite that took over 120 s once (38 s alone).
            deadline = time.monotonic() + 240
            while not all(holder(bench, name) for name in bench.places):
                assert suite.poll() is None, suite.communicate()[0][-4000:]
                assert time.monotonic() < deadline, "the two workers did not lock both places"
                time.sleep(0.5)
            # A third job now: every place is locked, so it waits (labgrid's reservation queue).
            third = place_for(bench, "bench=jikimi", "third-job", wait_s=240)
            got: list[object] = []
            waiting = threading.Thread(target=lambda: got.append(_acquire(third)), daemon=True)
            waiting.start()
            time.sleep(3)
            assert not got, "the third job got a place while both were locked"
            out, _ = suite.communicate(timeout=600)
        finally:
            if suite.poll() is None:
                suite.kill()
                suite.communicate()
        assert suite.returncode == 0, out[-6000:]
        assert re.search(rf"\b{SCENARIOS} passed\b", out), out[-3000:]
        assert "skipped" not in out  # the power cut ran: the place has a power driver
        waiting.join(60)
        try:
            assert got == [None], got
            assert third.name in ("jikimi-1", "jikimi-2")
            assert holder(bench, third.name).endswith("/third-job")
        finally:
            third.release()


def _acquire(place: LabgridPlace) -> object:
    try:
        place.acquire()
    except LabgridError as err:
        return err
    return None


def test_a_place_locked_by_someone_else_is_refused_at_once_naming_the_place_and_who_has_it(tmp_path, coordinator_env):
    with LabgridBench(tmp_path, ["jikimi-1"]) as bench:
        subprocess.run([str(bench.bin / "labgrid-client"), "-p", "jikimi-1", "lock"], env=as_user(bench, "alice"),
                       check=True, capture_output=True, timeout=30)
        started = time.monotonic()
        with pytest.raises(LabgridError) as refused:
            place_for(bench, "jikimi-1", "bob").acquire()
        assert time.monotonic() - started < 30
        assert "labgrid place jikimi-1" in str(refused.value) and "alice" in str(refused.value)


def test_an_exporter_that_is_gone_is_named_not_waited_for(tmp_path, coordinator_env):
    with LabgridBench(tmp_path, ["jikimi-1"]) as bench:
        place = place_for(bench, "jikimi-1", "bob")
        place.acquire()
        try:
            assert place.resources().console_url.startswith("rfc2217://127.0.0.1:")
            bench.stop_exporter()
            deadline = time.monotonic() + 60
            while True:  # the coordinator notices the exporter's stream closing
                try:
                    place.resources()
                except LabgridError as err:
                    message = str(err)
                    break
                assert time.monotonic() < deadline, "the coordinator still offers a gone exporter's resources"
                time.sleep(0.5)
            assert "labgrid place jikimi-1" in message and ("gone" in message or "not available" in message), message
        finally:
            place.release()


async def test_a_console_that_does_not_answer_names_the_place_and_gives_up(tmp_path, coordinator_env):
    with LabgridBench(tmp_path, ["jikimi-1"]) as bench:
        place = place_for(bench, "jikimi-1", "bob")
        place.acquire()
        target = None
        try:
            place.power(False)  # the board is there, but dead
            target = LabgridTarget(place)
            target._powered_off = False  # as if the rig did not know: it talks to a console that is silent
            started = time.monotonic()
            with pytest.raises(TestConsoleError) as silent:
                await target.boot()
            assert time.monotonic() - started < 60
            assert "labgrid place jikimi-1" in str(silent.value)
        finally:
            if target is not None:
                await target.close()
            place.release()


def test_no_coordinator_is_a_clear_error_naming_the_place(tmp_path, monkeypatch):
    from jikimi_host.rig.labgrid_bench import free_port

    monkeypatch.setenv("LG_COORDINATOR", f"127.0.0.1:{free_port()}")
    started = time.monotonic()
    with pytest.raises(LabgridError) as failed:
        LabgridPlace("jikimi-1", identity="bob").acquire()
    assert time.monotonic() - started < 60
    assert "labgrid place jikimi-1" in str(failed.value)


def test_jikimi_sim_wants_both_labgrid_options(tmp_path):
    done = subprocess.run([sys.executable, "-m", "jikimi_host.cli", "sim", "--labgrid-place", "jikimi-1"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "--labgrid-exporter" in done.stderr


def test_jikimi_sim_offers_a_bell_and_its_door_alarm_as_two_places_with_working_power_switches(tmp_path):
    import urllib.error
    import urllib.request

    import yaml

    exporter = tmp_path / "exporter.yaml"
    sim = subprocess.Popen([sys.executable, "-m", "jikimi_host.cli", "sim", "--quiet", "--flash", str(tmp_path / "flash"),
                            "--passkey", "493817", "--door", "271828", "--labgrid-place", "bench-7",
                            "--labgrid-exporter", str(exporter)], stdout=subprocess.PIPE, text=True)
    try:
        lines = []
        while not lines or not lines[-1].startswith("running"):
            line = sim.stdout.readline()
            assert line, f"jikimi sim ended: {lines}"
            lines.append(line)
        groups = yaml.safe_load(exporter.read_text())
        assert list(groups) == ["bench-7", "bench-7-door"]
        for resources in groups.values():
            assert resources["RawSerialPort"]["port"].startswith("/dev/pts/")
            assert resources["NetworkPowerPort"]["model"] == "simplerest"
            assert resources["BumbleHCITransport"]["transport"].startswith("tcp-client:127.0.0.1:")
        url = groups["bench-7-door"]["NetworkPowerPort"]["host"]

        def get(value: str) -> str:  # what labgrid's simplerest backend sends
            with urllib.request.urlopen(url.format(value=value).rstrip("/"), timeout=30) as answer:
                return answer.read().decode()

        assert get("") == "1"
        assert get("0") == "0" and get("") == "0"  # the door alarm's power is cut
        assert get("1") == "1" and get("") == "1"  # and it boots again
        with pytest.raises(urllib.error.HTTPError) as bad:
            get("2")
        assert bad.value.code == 400
    finally:
        sim.terminate()
        sim.wait(30)
