"""Twenty-odd bad jobs (reliability campaign, point 3): each bad configuration or dataset is refused
before any training, through the CLI a user types, with a message that names what is wrong and the fix,
no traceback, and nothing left behind in --out."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
from typer.testing import CliRunner

from distill.cli import app
from distill.testing import make_texts, tiny_run_args

runner = CliRunner()


def _csv(path: Path, rows: list[list[str]], header=("id", "title", "body", "label")) -> Path:
    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        if header:
            w.writerow(header)
        w.writerows(rows)
    return path


def _good_rows(n_per_class: int = 30) -> list[list[str]]:
    return [[f"n{i}", t.split()[0], t, lab] for i, (lab, t) in enumerate(make_texts(n_per_class))]


def _write(path: Path, data: bytes | str) -> Path:
    path.write_bytes(data if isinstance(data, bytes) else data.encode())
    return path


def _gpt2(folder: Path) -> Path:
    from transformers import GPT2Config, GPT2Model

    GPT2Model(GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=64, n_positions=64)).save_pretrained(str(folder))
    return folder


# (case id, how to make the data file (tmp_path -> path) or None for the good file, extra CLI args,
#  substrings the message must hold: what is wrong, and the fix)
CASES = [
    ("missing text column", None, ["--text-col", "headline"],
     ["unknown column 'headline' given to --text-col", "the file has columns ['id', 'title', 'body', 'label']"]),
    ("missing label column", None, ["--label-col", "topic"], ["unknown column 'topic' given to --label-col"]),
    ("one class", lambda d: _csv(d / "one.csv", [[f"n{i}", "x", t, "sport"] for i, (_, t) in enumerate(make_texts(10))]),
     [], ["every row has the label 'sport'", "needs at least 2 classes. Check --label-col"]),
    ("a label with one example", lambda d: _csv(d / "rare.csv", _good_rows() + [["z1", "x", "a rare topic text", "rare"]]),
     [], ["label(s) 'rare' (1 rows) have fewer than 3 examples", "Add examples, merge the label into another"]),
    ("empty file", lambda d: _write(d / "empty.csv", ""), [], ["the file has no rows"]),
    ("non-UTF-8 bytes", lambda d: _write(d / "cp.csv",
        b"id,title,body,label\n" + "".join(f"n{i},x,{t},{lab}\n" for i, (lab, t) in enumerate(make_texts(10))).encode()
        + b"n99,x,caf\xe9 prices soar,business\n"), [],
     ["not valid utf-8 at line 42, byte offset", "(byte 0xe9)", "--encoding cp1252"]),
    ("ragged rows", lambda d: _csv(d / "ragged.csv", _good_rows() + [["r1", "x", "a text", "sport", "extra"],
                                                                     ["r2", "x", "b text", "tech", "more", "x"]]),
     [], ["2 row(s) with another number of fields than the header (4): row 122 (5 fields), row 123 (6 fields)",
          "Quote fields that contain the delimiter"]),
    ("empty texts", lambda d: _csv(d / "blank.csv", _good_rows() + [[f"e{i}", "", " ", "sport"] for i in range(25)]),
     [], ["25 row(s) with an empty text: row 122 (id '122')", "and 5 more", "choose other text columns"]),
    ("duplicate ids", lambda d: _csv(d / "dup.csv", _good_rows() + [["n3", "x", "again", "sport"]]), ["--id-col", "id"],
     ["1 row(s) with an id used before: row 122 (id 'n3', first at row 5)", "Ids must be unique"]),
    ("ten rows", lambda d: _csv(d / "ten.csv", _good_rows()[:10]), [],
     ["fewer than 3 examples, too few for a train/dev/test split"]),
    ("missing data file", lambda d: d / "nope.csv", [], ["does not exist", "Give a CSV/TSV/JSONL file"]),
    ("bad JSONL line", lambda d: _write(d / "x.jsonl", '{"text": "a", "label": "b"}\n{oops\n'),
     [], ["line 2 is not valid JSON"]),
    ("unknown encoding", None, ["--encoding", "klingon"], ["--encoding 'klingon': unknown encoding", "cp1252"]),
    ("negative student epochs", None, ["--student-epochs", "-1"], ["--student-epochs -1: out of range; give an integer >= 1"]),
    ("zero teacher lr", None, ["--teacher-lr", "0"], ["--teacher-lr 0.0: out of range; give a number > 0"]),
    ("negative cache size", None, ["--cache-max-mb", "-1"], ["--cache-max-mb -1.0: out of range; give a number of MB >= 0"]),
    ("max length 4", None, ["--max-length", "4"], ["--max-length 4: out of range; give an integer >= 8"]),
    ("train cap 1", None, ["--train-cap", "1"], ["--train-cap 1: out of range; give an integer >= 2"]),
    ("temperature 0", None, ["--set", "mtbert.temperature=0"], ["--set mtbert.temperature=0", "greater than 0"]),
    ("unknown setting", None, ["--set", "mtbert.tempreature=2"], ["mtbert has no setting 'tempreature'", "temperature"]),
    ("unknown strategy", None, ["--strategy", "magic"], ["unknown strategy 'magic'", "distill strategies"]),
    ("student deeper than its teacher", None, ["--student-layers", "9"],
     ["--student-layers 9: deeper than the teacher it is cut from"]),
    ("student-from out of range", None, ["--student-from", "5"], ["--student-from 5: out of range, there are 2 teachers"]),
    ("teacher mode", None, ["--teacher-mode", "solo"], ["--teacher-mode must be 'joint'"]),
    ("student init", None, ["--student-init", "finetuned"], ["--student-init 'finetuned': give 'pretrained'", "'teacher'"]),
    ("augment negative", None, ["--augment", "-1"], ["--augment -1", "an integer >= 0 (copies per training text"]),
    ("nokd augmented without copies", None, ["--baselines", "nokd", "--set", "nokd.augmented=true"],
     ["--set nokd.augmented=true: the run makes no augmented copies", "add --augment N"]),
    ("teacher is not an encoder", None, ["TEACHER_GPT2"], ["gpt2 is not a Transformer encoder", "Pass an encoder with --teacher"]),
    ("missing teacher folder", None, ["TEACHER_MISSING"], ["nowhere' was not found", "pass a local model folder"]),
    ("one teacher twice, joint heads", None, ["TEACHER_TWICE"],
     ["is given more than once with --teacher-mode joint", "Use --teacher-mode independent"]),
    ("metadistil quiz set as large as the training part", None,
     ["--strategy", "metadistil", "--set", "metadistil.quiz_size=500"],
     ["--set metadistil.quiz_size=500: the training part has only", "Give a smaller --set metadistil.quiz_size"]),
    ("metadistil teacher out of range", None, ["--strategy", "metadistil", "--set", "metadistil.teacher=3", "--set", "metadistil.quiz_size=12"],
     ["--set metadistil.teacher=3: out of range (0..1)"]),
]


@pytest.mark.parametrize("case, make, extra, needles", CASES, ids=[c[0] for c in CASES])
def test_bad_job_is_refused_before_training_with_the_fix(case, make, extra, needles, tmp_path, tiny_teachers, tiny_csv):
    data = make(tmp_path) if make else tiny_csv
    teachers = list(tiny_teachers)
    if extra == ["TEACHER_GPT2"]:
        teachers, extra = [_gpt2(tmp_path / "gpt2")], []
    elif extra == ["TEACHER_MISSING"]:
        teachers, extra = [tmp_path / "nowhere"], []
    elif extra == ["TEACHER_TWICE"]:
        teachers, extra = [teachers[0], teachers[0]], []
    out = tmp_path / "run"
    args = tiny_run_args(out, teachers, data, teacher_store=tmp_path / "store")
    res = runner.invoke(app, args + extra)
    msg = " ".join(res.output.split())
    assert res.exit_code == 2, f"{case}: exit {res.exit_code}\n{res.output}"
    for needle in needles:
        assert needle in msg, f"{case}: {needle!r} not in {msg!r}"
    assert "Traceback" not in res.output
    assert "epoch 1/" not in msg  # refused before any training
    assert not out.exists(), f"{case}: a refused job left {sorted(p.name for p in out.iterdir())}"


def test_at_least_twenty_cases():
    assert len(CASES) >= 20
