"""Tiny encoders, tokenizers and topic texts built from configs (no downloads), for the test suite and
the reliability campaign (``benchmarks/crash_campaign.py``).

Everything here is seeded: the same call gives the same weights, vocabulary and texts.
"""

from __future__ import annotations

import csv
import random
from pathlib import Path

TOPICS = {
    "business": "market shares profit bank economy company growth sales investors stock price trade",
    "sport": "match team player goal season coach win league cup football tennis champion",
    "tech": "software computer phone internet users digital chip data online device network",
    "politics": "minister election party vote government parliament policy labour campaign law",
}
COMMON = "the a of to in and for on with said year new by at from it".split()


def make_texts(n_per_class: int = 30, seed: int = 0) -> list[tuple[str, str]]:
    """Synthetic but learnable topic texts: ``n_per_class`` (label, text) pairs per topic, shuffled."""
    rng = random.Random(seed)
    rows = []
    for label, words in TOPICS.items():
        w = words.split()
        for _ in range(n_per_class):
            toks = [rng.choice(w) if rng.random() < 0.5 else rng.choice(COMMON) for _ in range(rng.randint(8, 20))]
            rows.append((label, " ".join(toks)))
    rng.shuffle(rows)
    return rows


def _vocab() -> list[str]:
    words = sorted({w for t in TOPICS.values() for w in t.split()} | set(COMMON))
    letters = list("abcdefghijklmnopqrstuvwxyz")
    full = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + words + [f"##{c}" for c in letters] + letters
    return list(dict.fromkeys(full))


def build_tiny_model(folder: Path, kind: str = "bert", hidden: int = 32, layers: int = 2, vocab_variant: int = 0,
                     dropout: float = 0.1) -> Path:
    """A randomly initialised tiny encoder + WordPiece tokenizer saved as a HF folder (safetensors);
    ``dropout`` sets its hidden and attention dropout (and so its classification heads', see
    :func:`distill.modeling.head_dropout`)."""
    from transformers import BertConfig, BertModel, BertTokenizerFast, MPNetConfig, MPNetModel, MPNetTokenizerFast
    import torch

    torch.manual_seed(0)
    folder.mkdir(parents=True, exist_ok=True)
    vocab = _vocab()
    if vocab_variant:
        vocab = vocab[:5] + list(reversed(vocab[5:]))  # same words, different ids -> a different tokenizer
    if kind == "mpnet":
        vocab = ["<s>", "<pad>", "</s>", "[UNK]", "<mask>"] + vocab[5:]
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n")
    if kind == "bert":
        tok = BertTokenizerFast(vocab_file=str(folder / "vocab.txt"))
        cfg = BertConfig(vocab_size=len(vocab), hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=2,
                         intermediate_size=hidden * 2, max_position_embeddings=128, hidden_dropout_prob=dropout,
                         attention_probs_dropout_prob=dropout)
        model = BertModel(cfg)
    else:
        tok = MPNetTokenizerFast(vocab_file=str(folder / "vocab.txt"))
        cfg = MPNetConfig(vocab_size=len(vocab), hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=2,
                          intermediate_size=hidden * 2, max_position_embeddings=130, hidden_dropout_prob=dropout,
                          attention_probs_dropout_prob=dropout)
        model = MPNetModel(cfg)
    model.save_pretrained(str(folder), safe_serialization=True)
    tok.save_pretrained(str(folder))
    return folder


def write_tiny_csv(path: Path, n_per_class: int = 30, seed: int = 0) -> Path:
    """Write a CSV with a header (id, title, body, label) of ``4 * n_per_class`` topic texts; returns ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["id", "title", "body", "label"])
        for i, (lab, text) in enumerate(make_texts(n_per_class, seed)):
            w.writerow([f"n{i}", text.split()[0].title(), text, lab])
    return path


def tiny_run_args(out: Path, teachers: list[Path], data: Path, **extra) -> list[str]:
    """CLI args for a fast tiny `distill run`."""
    args = ["run", "--out", str(out), "--data", str(data), "--text-col", "title", "--text-col", "body",
            "--max-length", "32", "--teacher-epochs", "2", "--student-epochs", "2", "--teacher-train-layers", "0",
            "--teacher-lr", "1e-3", "--student-lr", "1e-3", "--teacher-batch-size", "8", "--student-batch-size", "8",
            "--threads", "1"]
    for t in teachers:
        args += ["--teacher", str(t)]
    for k, v in extra.items():
        args += [f"--{k.replace('_', '-')}", str(v)]
    return args
