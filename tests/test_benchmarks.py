"""Every benchmark in bench/ runs to the end and prints its figures (with tiny counts here: the
figures themselves come from `make bench`). A benchmark that no longer matches the code it
measures fails here instead of on the day someone wants the numbers."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from jikimi_host.processes import stop_group

BENCH = Path(__file__).parent.parent / "bench"
SMALL_RUNS = {
    "bench_protocol.py": ["--rounds", "5"],
    "bench_core.py": ["--hours", "1"],
    "bench_sim.py": ["--notifications", "20"],
    "bench_app.py": ["--alarms", "2", "--boots", "2", "--round-trips", "3", "--pairings", "1"],
    "bench_relay.py": ["--alarms", "5"],
    "bench_radios.py": ["--round-trips", "3"],
    "bench_attacks.py": ["--alarms", "1", "--lockout-ms", "1000", "--strangers", "1"],
    "bench_heap.py": ["--alarms", "1", "--reconnects", "1", "--hours", "1", "--step", "224"],
    "bench_modem_faults.py": ["--rounds", "1", "--boot-s", "0.3", "--replug-s", "0.2"],
    "bench_location.py": ["--calls", "20000", "--fixes", "3", "--updates", "5"],
    "bench_labgrid.py": ["--round-trips", "5", "--suite-k", "low_battery", "--places", "1"],
    "bench_ui.py": ["--holds", "1"],
}


def test_every_benchmark_in_the_makefile_is_run_here():
    makefile = (BENCH.parent / "Makefile").read_text()
    assert set(re.findall(r"bench/(bench_\w+\.py)", makefile)) == set(SMALL_RUNS)


@pytest.mark.micropython
@pytest.mark.parametrize("script", sorted(SMALL_RUNS))
def test_the_benchmark_runs_and_prints_its_figures(script, tmp_path):
    # A session of its own, stopped with all it started (boards, ser2net, labgrid's coordinator
    # and exporter) even when the run is cut off: a killed benchmark used to leave those running
    # beside the rest of the suite, slowing every test after it.
    bench = subprocess.Popen([sys.executable, str(BENCH / script), *SMALL_RUNS[script]], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, cwd=tmp_path, start_new_session=True)
    try:
        stdout, stderr = bench.communicate(timeout=240)
    finally:
        assert stop_group(bench) == [], "processes of the benchmark outlived it"
    assert bench.returncode == 0, stdout[-2000:] + stderr[-3000:]
    assert re.search(r"\d+(\.\d+)? ?(ms|us|bytes|B|messages/s)\b", stdout), stdout
