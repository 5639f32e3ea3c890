"""The transfer set (unlabelled texts the teachers label): readers, losses on unlabelled rows, the
duplicate check and a tiny `distill run` with ``--unlabeled`` and ``--unlabeled-from-train``."""

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from typer.testing import CliRunner

from conftest import make_texts, tiny_run_args
from distill import losses
from distill.cli import app
from distill.data import load_table
from distill.split import stratified_split
from distill.errors import DistillError
from distill.augment import MAX_NGRAM, build_augmented
from distill.data import TextDataset
from distill.transfer import build_transfer, gold_copies, masked_labels, normalize, read_texts

runner = CliRunner()


def test_read_texts_any_format_labels_optional(tmp_path):
    (tmp_path / "a.txt").write_text("first text\n\n  second text  \n")
    ds = read_texts(tmp_path / "a.txt")
    assert ds.texts == ["first text", "second text"] and ds.ids == ["1", "3"] and ds.labels == [-1, -1]
    (tmp_path / "b.csv").write_text("text,label\nhello world,sport\nmore news,tech\n")
    assert read_texts(tmp_path / "b.csv").labels == [-1, -1]  # label ignored unless asked for
    kept = read_texts(tmp_path / "b.csv", label_col="label")
    assert kept.label_names == ["sport", "tech"] and kept.labels == [0, 1]
    (tmp_path / "c.jsonl").write_text('{"body": "x y"}\n{"body": "z"}\n')
    assert read_texts(tmp_path / "c.jsonl", text_cols=["body"]).texts == ["x y", "z"]
    (tmp_path / "d.csv").write_text("text\nok\n\"\"\n")
    with pytest.raises(DistillError, match="with an empty text: row 3"):
        read_texts(tmp_path / "d.csv")
    with pytest.raises(DistillError, match="unknown column 'title'"):
        read_texts(tmp_path / "b.csv", text_cols=["title"])
    bbc = read_texts("bbc")  # a built-in dataset by name, e.g. BBC articles as a news transfer set
    assert len(bbc) == 2225 and set(bbc.labels) == {-1} and bbc.label_names == []
    with pytest.raises(DistillError, match="file not found.*built-in dataset"):
        read_texts(tmp_path / "bbc")


def test_task_loss_ignores_unlabelled_rows_and_pseudo_labels():
    torch.manual_seed(0)
    z = torch.randn(4, 3, requires_grad=True)
    y = torch.tensor([0, -1, 2, -1])
    assert torch.allclose(losses.task_loss(z, y), F.cross_entropy(z[[0, 2]], y[[0, 2]]))
    none = losses.task_loss(z, torch.full((4,), -1))
    none.backward()
    assert float(none.detach()) == 0.0 and z.grad is not None
    t = torch.tensor([[[5.0, 0, 0]] * 4, [[0, 0, 1.0]] * 4])  # (N=2, B=4, C=3): the ensemble says class 0
    assert losses.pseudo_labels(t, y).tolist() == [0, 0, 2, 0]
    ce = losses.teacher_gold_ce(t, y)
    assert torch.allclose(ce[:, 1], losses.teacher_gold_ce(t, torch.tensor([0, 0, 2, 0]))[:, 1])


def _dataset(tmp_path):
    p = tmp_path / "news.csv"
    p.write_text("text,label\n" + "".join(f"{t},{lab}\n" for lab, t in make_texts(20)))
    ds = load_table(p)
    return ds, stratified_split(ds.labels, ds.label_names, 13, 0.1, 0.2, train_cap=30)


def test_transfer_from_train_uses_rows_left_out_by_the_cap(tmp_path):
    ds, split = _dataset(tmp_path)
    assert len(split.spare) == 80 - 16 - 8 - 30 and not set(split.spare) & set(split.train + split.dev + split.test)
    ds2, ts = build_transfer(ds, split, [], 10, ["text"], 13)
    assert ds2 is ds and ts.from_train == 10 and set(ts.rows) <= set(split.spare)
    assert build_transfer(ds, split, [], 10, ["text"], 13)[1].rows == ts.rows  # seeded
    labels = masked_labels(ds, ts)
    assert all(labels[r] == -1 for r in ts.rows) and all(labels[r] == ds.labels[r] for r in split.train)
    _, every = build_transfer(ds, split, [], -1, ["text"], 13)
    assert every.from_train + every.skipped_held_out == len(split.spare)
    with pytest.raises(DistillError, match="--unlabeled-from-train 99: --train-cap 30 leaves"):
        build_transfer(ds, split, [], 99, ["text"], 13)
    uncapped = stratified_split(ds.labels, ds.label_names, 13, 0.1, 0.2)
    with pytest.raises(DistillError, match="without --train-cap"):
        build_transfer(ds, uncapped, [], 5, ["text"], 13)


def test_transfer_file_is_appended_and_dev_test_duplicates_refused(tmp_path):
    ds, split = _dataset(tmp_path)
    f = tmp_path / "unl.txt"
    f.write_text("a brand new text about markets\nanother fresh one\n")
    ds2, ts = build_transfer(ds, split, [str(f)], 0, ["text"], 13)
    assert len(ds2) == len(ds) + 2 and ts.rows == [len(ds), len(ds) + 1] and ds2.labels[-2:] == [-1, -1]
    assert ds2.ids[-1] == "unlabeled:2" and ts.describe()["from_file"] == 2
    g = tmp_path / "more.txt"
    g.write_text("a third text\n")
    ds3, ts3 = build_transfer(ds, split, [str(f), str(g)], 0, ["text"], 13)  # several files, in order
    assert ds3.ids[-3:] == ["unlabeled:1", "unlabeled:2", "unlabeled2:1"] and ds3.texts[-1] == "a third text"
    assert ts3.files == {str(f): 2, str(g): 1} and ts3.from_file == 3 and ts3.labelled_rows(ds3) == len(ds)
    with pytest.raises(DistillError, match="given twice"):
        build_transfer(ds, split, [str(f), str(f)], 0, ["text"], 13)
    leak = ds.texts[split.test[3]]
    f.write_text(f"fine text\n  {leak}  \n")
    with pytest.raises(DistillError, match=r"1 text\(s\) also appear in the test part .*row '2'"):
        build_transfer(ds, split, [str(f)], 0, ["text"], 13)


def test_augment_appends_seeded_unlabelled_copies_of_labelled_and_transfer_texts(tmp_path):
    ds, split = _dataset(tmp_path)
    ds2, ts = build_transfer(ds, split, [], 10, ["text"], 13, augment=2)
    base = build_transfer(ds, split, [], 10, ["text"], 13)[1]
    assert ts.rows[:10] == base.rows and ts.from_train == 10 and ts.labelled_rows(ds2) == len(ds)
    aug = ts.rows[10:]
    assert aug == list(range(len(ds), len(ds2))) and 0.9 * 2 * 40 <= ts.augmented == len(aug) <= 2 * 40
    assert all(ds2.labels[r] == -1 for r in aug) and ts.describe()["augmented"] == ts.augmented
    sources = {ds.ids[r] for r in split.train + base.rows}
    assert {ds2.ids[r].split(":")[1] for r in aug} <= sources and all(ds2.ids[r].startswith("augmented:") for r in aug)
    held = {normalize(ds.texts[r]) for r in split.dev + split.test}
    texts = [ds2.texts[r] for r in aug]
    assert len(set(texts)) == len(texts) and not set(texts) & (held | {normalize(t) for t in ds.texts})
    again = build_transfer(ds, split, [], 10, ["text"], 13, augment=2)[0]
    assert again.texts == ds2.texts  # seeded: a --resume builds the same copies
    assert build_transfer(ds, split, [], 10, ["text"], 14, augment=2)[0].texts[len(ds):] != texts


def test_gold_copies_label_the_copies_of_labelled_texts_only(tmp_path):
    ds, split = _dataset(tmp_path)
    ds2, ts = build_transfer(ds, split, [], 10, ["text"], 13, augment=1)
    labels = masked_labels(ds2, ts)
    rows, gold = gold_copies(ts, labels, split.train)
    assert rows and all(ts.copy_source[r] in split.train for r in rows)
    assert len(rows) == sum(s in set(split.train) for s in ts.copy_source.values())  # not the transfer texts' copies
    assert all(gold[r] == ds.labels[ts.copy_source[r]] for r in rows)
    assert [g for k, g in enumerate(gold) if k not in set(rows)] == [g for k, g in enumerate(labels) if k not in set(rows)]


def test_run_nokd_control_trains_on_gold_labelled_copies(tmp_path, tiny_teachers, tiny_csv):
    out = tmp_path / "run"
    res = runner.invoke(app, tiny_run_args(out, tiny_teachers, tiny_csv, baselines="nokd", train_cap=60, augment=1)
                        + ["--set", "nokd.augmented=true"])
    assert res.exit_code == 0, res.output
    r = json.loads((out / "report.json").read_text())
    tr = json.loads((out / "split.json").read_text())["transfer"]
    mt, nokd = r["runs"]["mtbert"][0], r["runs"]["nokd"][0]
    assert tr["texts"] == tr["augmented"] and 54 <= tr["augmented"] <= 60  # one copy per labelled text
    assert mt["train_texts"] == {"labelled": 60, "transfer": tr["augmented"]}
    assert nokd["train_texts"] == {"labelled": 60, "transfer": 0, "gold_labelled_copies": tr["augmented"]}
    assert "augmented copies with gold labels" in nokd["description"]


def test_augment_never_copies_a_held_out_or_existing_text_and_follows_tang_et_al_rates():
    ds = TextDataset(ids=["a", "b"], texts=["alpha beta", "beta"], labels=[0, 1], label_names=["x", "y"], source="t")
    # every possible copy: "", "alpha", "beta", "alpha beta", "beta beta", "alpha alpha", "beta alpha"
    out, rows, src = build_augmented(ds, [0, 1], {"alpha", "alpha alpha"}, copies=20, seed=1)
    assert {out.texts[r] for r in rows} <= {"beta beta", "beta alpha"} and len(rows) <= 2 and set(src) <= {0}
    with pytest.raises(DistillError, match="--augment 0: give the number of augmented copies"):
        build_augmented(ds, [0], set(), copies=0, seed=1)
    words = [f"w{i}" for i in range(200)]
    long = TextDataset(ids=["s"], texts=[" ".join(words)], labels=[0], label_names=["x"], source="t")
    out, rows, _ = build_augmented(long, [0], set(), copies=2000, seed=3)
    copies = [out.texts[r].split() for r in rows]
    cuts = [c for c in copies if len(c) <= MAX_NGRAM]
    assert 0.22 < len(cuts) / len(copies) < 0.28  # p_ng = 0.25
    whole = [c for c in copies if len(c) > MAX_NGRAM]
    kept = sum(len(c) for c in whole) / (len(whole) * len(words))
    replaced = sum(sum(w not in c for w in words) - (len(words) - len(c)) for c in whole) / (len(whole) * len(words))
    assert 0.88 < kept < 0.92 and 0.08 < replaced < 0.12  # p_mask (dropped) = p_pos (replaced) = 0.1


def test_run_with_a_transfer_set(tmp_path, tiny_teachers, tiny_csv):
    unl = tmp_path / "unlabeled.jsonl"
    unl.write_text("".join(json.dumps({"title": "News", "body": t}) + "\n" for _, t in make_texts(3, seed=7)))
    unl2 = tmp_path / "more.txt"
    unl2.write_text("markets rally on rate hopes\nstriker signs for a record fee\n")
    out = tmp_path / "run"
    res = runner.invoke(app, tiny_run_args(out, tiny_teachers, tiny_csv, baselines="nokd", train_cap=60,
                                           unlabeled_from_train=-1, unlabeled=unl) + ["--unlabeled", str(unl2),
                                                                                      "--augment", "1"])
    assert res.exit_code == 0, res.output
    split = json.loads((out / "split.json").read_text())
    tr = split["transfer"]
    assert tr["files"] == {str(unl): 12, str(unl2): 2}
    assert json.loads((out / "config.json").read_text())["unlabeled"] == [str(unl), str(unl2)]
    assert tr["from_file"] == 14 and tr["from_train"] + tr["skipped_held_out_duplicates"] == 84 - 60
    # one augmented copy of each labelled and transfer text, unless every draw repeated a text
    assert 0.9 * (60 + tr["from_train"] + 14) <= tr["augmented"] <= 60 + tr["from_train"] + 14
    assert len(tr["ids"]) == tr["texts"] == tr["from_train"] + 14 + tr["augmented"]
    assert sum(i.startswith("augmented:") for i in tr["ids"]) == tr["augmented"]
    assert not set(tr["ids"]) & set(split["ids"]["train"] + split["ids"]["dev"] + split["ids"]["test"])
    r = json.loads((out / "report.json").read_text())
    mt, nokd = r["runs"]["mtbert"][0], r["runs"]["nokd"][0]
    assert mt["train_texts"] == {"labelled": 60, "transfer": tr["texts"]}
    assert nokd["train_texts"] == {"labelled": 60, "transfer": 0}  # no teachers, nothing to learn from them
    assert mt["teacher_weights"]["texts"] == 60 + tr["texts"]
    assert r["data"]["rows"] == 120  # the labelled file's rows; the transfer file's texts are counted apart
    assert "120 labelled rows" in (md := (out / "report.md").read_text()) and "Transfer set:" in md
    assert f"12 from `{unl}` + 2 from `{unl2}` + {tr['augmented']} augmented copies" in md
    from safetensors import safe_open

    cache = next(Path(r["teacher_store"]).rglob(f"outputs-{r['cache']['file'].split('-', 1)[1]}"))
    with safe_open(str(cache), "pt") as fh:
        assert fh.get_slice("t0.train.logits").get_shape()[0] == 60 + tr["texts"]


def test_run_refuses_a_transfer_file_with_test_texts(tmp_path, tiny_teachers, tiny_csv, tiny_run):
    split = json.loads((tiny_run / "split.json").read_text())
    rows = list(__import__("csv").DictReader(tiny_csv.open()))
    leak = rows[int(split["ids"]["test"][0]) - 2]  # ids are file line numbers (header = line 1)
    unl = tmp_path / "unl.csv"
    unl.write_text(f"title,body\nNew,fresh words here\n{leak['title']},{leak['body']}\n")
    res = runner.invoke(app, tiny_run_args(tmp_path / "r", tiny_teachers, tiny_csv, unlabeled=unl))
    assert res.exit_code == 2 and "also appear in the test part" in res.output
    assert not (tmp_path / "r" / "teachers").exists()


def test_report_warns_about_a_teacher_worse_than_the_student_alone():
    from distill.guards import teacher_warnings

    teachers = [{"name": "weak", "dev": {"macro_f1": 40.0}}, {"name": "strong", "dev": {"macro_f1": 60.0}}]
    summary = {"nokd": {"dev": {"macro_f1": {"mean": 48.0}}}}
    w = teacher_warnings(teachers, summary)
    assert len(w) == 1 and w[0].startswith("teacher weak scores below the no-KD student on dev macro-F1 (40.00 < 48.00)")
    assert teacher_warnings(teachers, {"mtbert": summary["nokd"]}) == []
