"""vmcluster-plan command line."""

import pytest

from saltext.vmcluster.planner import cli

from .ganeti_tools import CORPUS_FILES, run_hinfo


def test_info_prints_hinfo_table(capsys, tmp_path):
    path = next(f for f in CORPUS_FILES if f.name == "hbal-forth.data")
    assert cli.main(["info", "-t", str(path)]) == 0
    out = capsys.readouterr().out
    ref, _ = run_hinfo(path, tmp_path)
    assert f"Cluster score: {ref[1]:.8f}" in out
    for name, value in ref[0].items():
        assert any(line.split()[:2] == [name, f"{value:.8f}"] for line in out.splitlines())


def test_malformed_file_exits_2_with_message(capsys, tmp_path):
    bad = tmp_path / "bad.data"
    bad.write_text("g|u|preferred||\n\nn1|x|0|0|0|0|1|N|u\n\n\n")
    assert cli.main(["info", "-t", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "line 3" in err and "total_mem" in err


def test_missing_file_exits_2(capsys, tmp_path):
    assert cli.main(["info", "-t", str(tmp_path / "absent.data")]) == 2
    assert "absent.data" in capsys.readouterr().err


def test_bad_usage_exits_2():
    with pytest.raises(SystemExit) as exc:
        cli.main(["info"])
    assert exc.value.code == 2
