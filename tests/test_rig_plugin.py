"""The rig's pytest plugin (jikimi_host/rig/pytest_plugin.py) beyond its fixtures."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

from jikimi_host.wait import until_blocking

# A test whose fixture starts a process in a session of its own, as GpsFake does with gpsfake,
# and stops it in its `finally`; the test then waits to be killed.
STARTS_AND_WAITS = textwrap.dedent("""
    import subprocess, time
    from pathlib import Path
    import pytest

    @pytest.fixture
    def helper(tmp_path):
        process = subprocess.Popen(["sleep", "300"], start_new_session=True)
        Path({pid_file!r}).write_text(str(process.pid))
        try:
            yield process
        finally:
            process.kill()
            process.wait()

    def test_waits(helper):
        time.sleep(300)
""")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_a_run_ended_by_sigterm_still_stops_what_its_fixtures_started(tmp_path):
    pid_file = tmp_path / "helper.pid"
    (tmp_path / "test_waits.py").write_text(STARTS_AND_WAITS.format(pid_file=str(pid_file)))
    run = subprocess.Popen([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tmp_path)],
                           cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    helper = 0
    try:
        helper = until_blocking(lambda: pid_file.exists() and pid_file.read_text() and int(pid_file.read_text()),
                                60, "the fixture's helper process")
        run.send_signal(signal.SIGTERM)  # as `kill` or a CI job's timeout does
        output, _ = run.communicate(timeout=60)
        assert "KeyboardInterrupt" in output, output
        until_blocking(lambda: not _alive(helper), 10, "the helper stopped by the fixture's teardown")
    finally:
        run.kill()
        run.wait()
        if helper and _alive(helper):
            os.kill(helper, signal.SIGKILL)
