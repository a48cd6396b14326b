"""The lab finds its own processes, not a neighbour lab's."""

import subprocess
import sys
import time

from saltext.vmcluster.lab import leftover_processes


def test_leftover_processes_of_a_lab_do_not_include_a_neighbour_lab_s(tmp_path):
    mine, neighbour = tmp_path / "lab", tmp_path / "lab2"
    sleeper = [sys.executable, "-c", "import time; time.sleep(30)"]
    procs = [subprocess.Popen([*sleeper, str(mine / "x")]), subprocess.Popen([*sleeper, str(neighbour / "x")])]
    try:
        time.sleep(0.3)
        assert leftover_processes(mine) == [procs[0].pid]
        assert leftover_processes(neighbour) == [procs[1].pid]
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()
    assert leftover_processes(mine) == []
