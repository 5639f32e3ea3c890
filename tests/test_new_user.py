"""Defects found when the tool was tried as a new user would (reliability campaign, point 4): one test each."""

from __future__ import annotations

import logging
import os
import stat

from typer.testing import CliRunner

from distill.cli import app
from distill.data import load_table
from distill.testing import make_texts, tiny_run_args, write_tiny_csv
from distill.tokens import progress

runner = CliRunner()


def test_headerless_csv_addressed_by_index_keeps_its_first_row(tmp_path, caplog):
    rows = [(lab, t) for lab, t in make_texts(5)]
    p = tmp_path / "noheader.csv"
    p.write_text("".join(f"{lab},{t}\n" for lab, t in rows))
    with caplog.at_level(logging.WARNING, logger="distill"):
        ds = load_table(p, text_cols=("1",), label_col="0")
    assert len(ds) == len(rows) and ds.texts[0] == rows[0][1]
    assert "the first row looks like data, not a header: it is read as data (row 1)" in caplog.text
    # a real header is still taken as one, also when the columns are given by index
    q = tmp_path / "header.csv"
    q.write_text("label,text\n" + "".join(f"{lab},{t}\n" for lab, t in rows))
    assert len(load_table(q, text_cols=("1",), label_col="0")) == len(rows)


def test_encoding_option_reads_a_cp1252_export(tmp_path):
    p = tmp_path / "excel.csv"
    p.write_bytes("text,label\ncafé prices soar,business\nthe team won,sport\n".encode("cp1252"))
    ds = load_table(p, encoding="cp1252")
    assert ds.texts[0] == "café prices soar"


def test_failed_prepare_leaves_nothing_and_the_corrected_rerun_runs(tmp_path, tiny_teachers, tiny_csv):
    out = tmp_path / "run"
    args = tiny_run_args(out, tiny_teachers, tiny_csv, teacher_store=tmp_path / "store", student_epochs=1,
                         teacher_epochs=1)
    bad = runner.invoke(app, args + ["--label-col", "title"])  # a wrong label column: many 1-example labels
    assert bad.exit_code == 2 and not out.exists(), bad.output
    good = runner.invoke(app, args)
    assert good.exit_code == 0, good.output


def test_out_under_a_file_is_a_clear_error(tmp_path, tiny_teachers, tiny_csv):
    blocker = tmp_path / "afile"
    blocker.write_text("x")
    res = runner.invoke(app, tiny_run_args(blocker / "run", tiny_teachers, tiny_csv, teacher_store=tmp_path / "s"))
    assert res.exit_code == 2 and "is not writable" in res.output and "Choose another --out" in " ".join(res.output.split())
    assert "Traceback" not in res.output


def test_run_files_follow_the_umask(tiny_run):
    mask = os.umask(0)
    os.umask(mask)
    for f in ("config.json", "report.json", "state.json", "student/model.safetensors", "student/checksums.json"):
        assert stat.S_IMODE((tiny_run / f).stat().st_mode) == 0o666 & ~mask, f
    assert stat.S_IMODE((tiny_run / "student").stat().st_mode) == 0o777 & ~mask


def test_progress_is_log_lines_when_stderr_is_not_a_terminal(caplog):
    with caplog.at_level(logging.INFO, logger="distill"):
        items = list(progress(range(3), "eval dev", every_s=0.0))
    assert items == [0, 1, 2]
    assert [r.getMessage().split(",")[0] for r in caplog.records] == ["eval dev: 1/3 (33%)", "eval dev: 2/3 (67%)",
                                                                      "eval dev: 3/3 (100%)"]
    assert not any("\r" in r.getMessage() for r in caplog.records)


def test_write_tiny_csv_is_a_valid_run_input(tmp_path):
    p = write_tiny_csv(tmp_path / "d.csv", 3)
    assert len(load_table(p, text_cols=("title", "body"))) == 12
