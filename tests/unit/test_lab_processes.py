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


def test_the_processes_that_run_us_are_not_leftovers(tmp_path):
    lab = tmp_path / "lab"
    script = f"from saltext.vmcluster.lab import leftover_processes; print(leftover_processes({str(lab)!r}))"
    # the child's parent (this sh) names the lab dir in its arguments, as `timeout ... --dir LAB demo` would
    out = subprocess.run(["sh", "-c", f'{sys.executable} -c "{script}"; true', "sh", str(lab)],
                         capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
