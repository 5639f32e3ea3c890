"""The TextCNN student of paper 003 (Kim-style CNN text classifier) and the CNN feature head of its
BERT-CNN teachers.

Architecture (paper 003 §3, METHODS.md §3): token embeddings (300-d), parallel 1-D convolutions with
kernel sizes 2, 3, 4 and 256 filters each, ReLU, max-over-time pooling, dropout 0.5, a linear
classifier. The pooled feature (B, len(kernels) * filters) = (B, 768) by default is what the hint
loss of the isomorphic case (eqs. (8)-(10)) compares with a BERT-CNN teacher's.

Choices the paper leaves open, as taken here:

* **Tokenizer**: the WordPiece (or other subword) tokenizer of the teacher it is built beside
  (``--student-from``, default the smallest teacher). Reasons: (1) the export and the BentoML service
  ship a ``tokenizer.json`` and a graph taking ``input_ids``/``attention_mask``, so the TextCNN is
  served unchanged; (2) its embeddings can start from the teacher's token embeddings; (3) subwords
  have no out-of-vocabulary words on news text, unlike a word vocabulary of 3,000 training texts.
* **Vocabulary**: only the tokenizer ids seen in the student's training texts (labelled + transfer
  set) get an embedding row, most frequent first, at most ``vocab_size``; every other id maps to
  the unknown row. The map (tokenizer id -> row) is a buffer of the model, so it travels in the
  safetensors file and the ONNX graph (one extra Gather), and the tokenizer stays untouched.
* **Embedding initialisation** (``embedding_init="teacher"``): the teacher's input token embeddings of
  the kept ids, centred and reduced to ``embed_dim`` by PCA (truncated SVD), scaled to unit variance
  (the scale of ``nn.Embedding``'s default N(0, 1) init); ``"random"`` keeps N(0, 1). The paper's
  300-d word vectors play this role.
* **Padding**: masked tokens take the zero padding row of the embedding table, each convolution's
  input is right-padded with k - 1 zeros (one window per position, so a 1-token text fits every
  kernel) and the outputs of windows that start on padding are masked out before the max (exact
  after the ReLU, whose outputs are >= 0): logits do not depend on how much padding a batch has, so
  batch 1 and batch 32, PyTorch and ONNX give the same answer. A row with no real token gives a zero
  feature.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Annotated, Literal

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from .errors import DistillError

#: Kernel sizes and filters of the CNN feature head of BERT-CNN teachers (``--pooling cnn``), paper 003.
CNN_HEAD_KERNELS = (2, 3, 4)
CNN_HEAD_FILTERS = 256
WEIGHTS_FILE = "model.safetensors"


class TextCNNSettings(BaseModel):
    """Settings of the TextCNN student (``--set textcnn.FIELD=VALUE`` or ``settings: {textcnn: ...}``)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    embed_dim: int = Field(300, ge=8, le=4096, description="token embedding size (paper 003: 300)")
    kernel_sizes: list[Annotated[int, Field(ge=1, le=64)]] = Field(
        [2, 3, 4], min_length=1, description="1-D convolution widths, each 1-64 (paper 003: 2, 3, 4)")
    filters: int = Field(256, ge=1, le=4096, description="filters per kernel size (paper 003: 256)")
    dropout: float = Field(0.5, ge=0, lt=1, description="dropout before the classifier (paper 003: 0.5)")
    vocab_size: int = Field(30000, ge=16, description="most embedding rows: the most frequent tokenizer ids of the "
                                                      "training texts (others map to [UNK])")
    embedding_init: Literal["teacher", "random"] = Field("teacher", description="teacher = PCA of the tokenizer teacher's token embeddings; random = N(0,1)")
    lr: float = Field(1e-3, gt=0, description="AdamW learning rate of every TextCNN parameter (replaces --student-lr)")
    epochs: int = Field(10, ge=1, description="training epochs (replaces --student-epochs; paper 003: 5 on 180k texts)")

    @property
    def feature_size(self) -> int:
        """Size of the pooled feature: ``len(kernel_sizes) * filters``."""
        return len(self.kernel_sizes) * self.filters


def textcnn_settings(values: dict | None) -> TextCNNSettings:
    """Validate ``--set textcnn.*`` values.

    Raises:
        DistillError: unknown field or value out of range (naming ``--set textcnn.FIELD``).
    """
    from .strategies.base import validate_settings

    return validate_settings(TextCNNSettings, "textcnn", values)


class ConvFeatures(nn.Module):
    """Parallel 1-D convolutions + ReLU + masked max-over-time pooling (Kim 2014; paper 003).

    Shapes: ``x`` (B, L, d) token vectors, ``mask`` (B, L) 1 for real tokens -> (B, len(kernels) * filters).
    """

    def __init__(self, dim: int, kernel_sizes=CNN_HEAD_KERNELS, filters: int = CNN_HEAD_FILTERS):
        super().__init__()
        self.kernel_sizes = tuple(int(k) for k in kernel_sizes)
        self.convs = nn.ModuleList(nn.Conv1d(dim, filters, k) for k in self.kernel_sizes)

    @property
    def out_features(self) -> int:
        return len(self.kernel_sizes) * self.convs[0].out_channels

    def forward(self, x: torch.Tensor, mask: torch.Tensor, zeroed: bool = False) -> torch.Tensor:
        """``zeroed``: the caller already zeroed the padding vectors (the TextCNN's padding embedding row
        is zero), so the input multiply is skipped (one node fewer in the exported graph)."""
        m = mask.to(x.dtype).unsqueeze(1)  # (B, 1, L)
        x = x.transpose(1, 2)  # (B, d, L)
        if not zeroed:
            x = x * m
        # right-pad each kernel by k - 1 zeros: one window per position t < L, so even a 1-token text
        # fits every kernel; windows starting on padding are then masked out (exact after the ReLU)
        return torch.cat([(torch.relu(conv(F.pad(x, (0, k - 1)))) * m).amax(-1)
                          for k, conv in zip(self.kernel_sizes, self.convs)], -1)


class TextCNN(nn.Module):
    """TextCNN classifier: embeddings -> :class:`ConvFeatures` -> dropout -> linear (paper 003).

    Args:
        id_map: (V_tok,) int64, embedding row of every tokenizer id (0 = padding, 1 = unknown).
        num_labels: number of classes ``C``.
        settings: :class:`TextCNNSettings`.

    ``forward(input_ids (B, L) int64, attention_mask (B, L)) -> ClassifierOutput`` with logits (B, C),
    ``pooled`` (B, len(kernels) * filters) and no hidden states (a TextCNN has no Transformer layers).
    """

    architecture = "textcnn"

    def __init__(self, id_map: torch.Tensor, num_labels: int, settings: TextCNNSettings):
        super().__init__()
        self.settings = settings
        self.register_buffer("id_map", id_map.to(torch.long).clone())
        rows = int(id_map.max()) + 1 if id_map.numel() else 2
        self.embed = nn.Embedding(max(rows, 2), settings.embed_dim, padding_idx=0)
        self.features = ConvFeatures(settings.embed_dim, settings.kernel_sizes, settings.filters)
        self.dropout = nn.Dropout(settings.dropout)
        self.classifier = nn.Linear(self.features.out_features, num_labels)

    @property
    def hidden_size(self) -> int:
        """Size of the pooled feature (the input of the classifier)."""
        return self.features.out_features

    @property
    def num_layers(self) -> int:
        return 0

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, output_hidden_states: bool = False):
        from .modeling import ClassifierOutput

        rows = self.id_map[input_ids] * attention_mask.to(torch.long)  # masked tokens -> the zero row 0
        pooled = self.features(self.embed(rows), attention_mask, zeroed=True)
        return ClassifierOutput(self.classifier(self.dropout(pooled)), None, pooled)


def build_vocab(token_ids: list[list[int]], special_ids: list[int], pad_id: int, unk_id: int | None,
                tokenizer_size: int, max_rows: int) -> tuple[torch.Tensor, list[int]]:
    """The embedding vocabulary: tokenizer ids of the training texts, most frequent first.

    Args:
        token_ids: tokenised training texts (lists of tokenizer ids).
        special_ids: ids that always get a row (e.g. [CLS], [SEP]).
        pad_id / unk_id: the tokenizer's padding and unknown ids (row 0 and row 1).
        tokenizer_size: ``len(tokenizer)``; ids >= it are an error.
        max_rows: at most this many rows (``vocab_size``), padding and unknown included.

    Returns:
        ``(id_map (tokenizer_size,) int64, kept ids in row order from row 2)``.
    """
    counts = Counter(i for seq in token_ids for i in seq)
    counts.pop(pad_id, None)
    if unk_id is not None:
        counts.pop(unk_id, None)
    for s in special_ids:
        if s not in (pad_id, unk_id):
            counts[s] += 10**9  # specials first
    kept = [i for i, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))][: max(0, max_rows - 2)]
    id_map = torch.ones(tokenizer_size, dtype=torch.long)
    id_map[pad_id] = 0
    for row, i in enumerate(kept, start=2):
        if i >= tokenizer_size:
            raise DistillError(f"token id {i} is outside the tokenizer ({tokenizer_size} ids).")
        id_map[i] = row
    return id_map, kept


def pca_embeddings(teacher_emb: torch.Tensor, kept: list[int], unk_id: int | None, dim: int) -> torch.Tensor:
    """Initial embedding table (2 + len(kept), dim) from a teacher's token embeddings (V_tok, d_t).

    Rows of the kept ids (and [UNK] for row 1) are centred and projected on their top ``dim``
    principal directions (truncated SVD; zero columns when ``dim`` > rank), then scaled to unit
    variance; row 0 (padding) is zero.
    """
    ids = [unk_id if unk_id is not None else 0] + kept
    X = teacher_emb[ids].detach().float()
    X = X - X.mean(0, keepdim=True)
    U, S, _ = torch.linalg.svd(X, full_matrices=False)
    k = min(dim, S.numel())
    Z = torch.zeros(len(ids), dim)
    Z[:, :k] = U[:, :k] * S[:k]
    Z = Z / Z[:, :k].std().clamp_min(1e-8)
    return torch.cat([torch.zeros(1, dim), Z])


def build_textcnn(settings: TextCNNSettings, tok, train_ids: list[list[int]], num_labels: int,
                  teacher_embeddings: torch.Tensor | None) -> TextCNN:
    """A TextCNN over ``tok``'s ids with the vocabulary of ``train_ids`` (see the module docstring).

    Args:
        teacher_embeddings: (V_tok, d_t) token embeddings of the tokenizer's teacher, used when
            ``settings.embedding_init == "teacher"``.
    """
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    specials = [i for i in (tok.cls_token_id, tok.sep_token_id, tok.bos_token_id, tok.eos_token_id) if i is not None]
    id_map, kept = build_vocab(train_ids, specials, pad, tok.unk_token_id, len(tok), settings.vocab_size)
    model = TextCNN(id_map, num_labels, settings)
    if settings.embedding_init == "teacher" and teacher_embeddings is not None:
        with torch.no_grad():
            model.embed.weight.copy_(pca_embeddings(teacher_embeddings, kept, tok.unk_token_id, settings.embed_dim))
    return model


def save_textcnn(model: TextCNN, folder: Path) -> dict:
    """Write ``model.safetensors`` (weights + id map); returns the ``classifier.json`` fields."""
    from safetensors.torch import save_file

    save_file({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}, str(folder / WEIGHTS_FILE))
    return {"architecture": TextCNN.architecture, "textcnn": model.settings.model_dump(),
            "vocab_rows": model.embed.num_embeddings, "tokenizer_size": int(model.id_map.numel()),
            "hidden_size": model.hidden_size, "num_layers": 0,
            "num_labels": model.classifier.out_features}


def load_textcnn(folder: Path, meta: dict) -> TextCNN:
    """Rebuild a saved TextCNN from ``classifier.json`` fields and ``model.safetensors``.

    Raises:
        DistillError: weights that do not match the recorded settings.
    """
    from safetensors.torch import load_file

    state = load_file(str(folder / WEIGHTS_FILE))
    settings = TextCNNSettings(**meta["textcnn"])
    model = TextCNN(torch.zeros(int(meta["tokenizer_size"]), dtype=torch.long), int(meta["num_labels"]), settings)
    model.embed = nn.Embedding(int(meta["vocab_rows"]), settings.embed_dim, padding_idx=0)
    try:
        model.load_state_dict(state)
    except RuntimeError as e:
        raise DistillError(f"{folder / WEIGHTS_FILE}: weights do not match classifier.json ({str(e)[:200]}).") from None
    return model


def describe(settings: TextCNNSettings) -> str:
    """One line for the report."""
    return (f"TextCNN (paper 003): {settings.embed_dim}-d embeddings ({settings.embedding_init} init), kernels "
            f"{settings.kernel_sizes} x {settings.filters} filters, dropout {settings.dropout}; "
            f"AdamW lr {settings.lr}, {settings.epochs} epochs")
