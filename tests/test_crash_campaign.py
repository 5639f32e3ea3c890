"""The fast variant of the crash campaign (``benchmarks/crash_campaign.py``): real processes killed with
SIGKILL during co-finetuning, a student phase and the export, resumed, compared with an uninterrupted run."""

from __future__ import annotations

import json

import pytest

from benchmarks.crash_campaign import main


@pytest.mark.slow
def test_kill_resume_gives_the_uninterrupted_metrics_and_no_partial_file(tmp_path, capsys):
    rc = main(["--work", str(tmp_path), "--kills", "3", "--targets", "teachers,student/mtbert/seed13,export",
               "--seed", "1"])
    out = capsys.readouterr().out
    assert rc == 0, out
    kills = json.loads((tmp_path / "campaign.json").read_text())["kills"]
    assert len(kills) == 3 and all(k["resumed"] and k["identical"] and k["clean"] for k in kills), out
    assert sum(k["killed"] for k in kills) >= 2, out  # most signals land part-way (a phase may finish first)


@pytest.mark.slow
def test_a_chain_of_kills_in_one_run_resumes_to_the_uninterrupted_metrics(tmp_path, capsys):
    """``--chain`` (how the default job is campaigned): one run killed in one phase, resumed, killed again
    in a later phase, resumed to the end."""
    rc = main(["--work", str(tmp_path), "--chain", "--kills", "0", "--no-export",
               "--targets", "teacher_outputs,student/nokd/seed14", "--seed", "2"])
    out = capsys.readouterr().out
    assert rc == 0, out
    kills = json.loads((tmp_path / "campaign.json").read_text())["kills"]
    assert [k["target"] for k in kills] == ["teacher_outputs", "student/nokd/seed14"], out
    assert all(k["resumed"] and k["identical"] and k["clean"] for k in kills), out
    assert "chain of 2 kills: resumed True, identical True, clean True" in out
