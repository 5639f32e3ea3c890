"""Model building blocks: attentive pooling, the shared MT-BERT head, teacher and student classifiers.

A *classifier folder* (teacher or student) holds:

* the Hugging Face encoder (``config.json`` + ``model.safetensors``; ``AutoModel.from_pretrained``
  loads it on its own) and its tokenizer files;
* ``head.safetensors``: the projection into the head space (teachers whose hidden size differs
  from the shared head's), the attentive pooling and the prediction layer;
* ``classifier.json``: label names, head dimensions, max length, pooling type, source model.

Heterogeneous teachers (MT-BERT §2.1 assumes equal hidden sizes; its footnote 4 leaves
heterogeneous teachers to future work): every teacher whose hidden size ``d_i`` differs from the
head size ``d_c`` gets its own linear projection ``R^{d_i} -> R^{d_c}`` applied to each token's
top-layer hidden state before the ONE shared attentive pooling layer and the ONE shared prediction
layer. ``d_c`` defaults to the smallest teacher hidden size, which is the student's hidden size
when the student is cut from the smallest teacher, so the student can start from the shared head.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from .errors import DistillError
from .integrity import verify_checksums, write_checksums

HEAD_FILE = "head.safetensors"
POOLINGS = ("attentive", "mean", "cls", "cnn")
META_FILE = "classifier.json"


class AttentivePooling(nn.Module):
    """Attentive pooling (MT-BERT §2.1): ``a_t = q^T tanh(W h_t + b)``, ``alpha = softmax(a)``
    over non-padding tokens, ``e = sum_t alpha_t h_t``.

    Args:
        dim: hidden size ``d`` of the token states.
        query_dim: attention query size (200 in the paper).

    Shapes: ``h`` (B, L, d), ``mask`` (B, L) with 1 for real tokens -> (B, d).
    """

    def __init__(self, dim: int, query_dim: int = 200):
        super().__init__()
        self.proj = nn.Linear(dim, query_dim)
        self.query = nn.Linear(query_dim, 1, bias=False)

    def forward(self, h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        scores = self.query(torch.tanh(self.proj(h))).squeeze(-1)  # (B, L)
        scores = scores.masked_fill(mask == 0, torch.finfo(scores.dtype).min)
        alpha = torch.softmax(scores.float(), dim=-1).to(h.dtype)
        return torch.bmm(alpha.unsqueeze(1), h).squeeze(1)


def head_dropout(config) -> float:
    """Dropout probability of a classification head on an encoder with this config: the encoder's own
    ``hidden_dropout_prob`` (0.1 for BERT, MiniLM, MPNet, RoBERTa), so a model configured without dropout
    (e.g. for a determinism test) has none anywhere; 0.1 when the config has no such field."""
    p = getattr(config, "hidden_dropout_prob", None)
    return 0.1 if p is None else float(p)


class ClassificationHead(nn.Module):
    """Pooling + dropout + linear prediction layer; shared by all teachers in co-finetuning.

    ``pooling``: ``attentive`` (MT-BERT), ``mean``, ``cls``, or ``cnn``: the TextCNN feature head of
    paper 003's BERT-CNN teacher (:class:`distill.textcnn.ConvFeatures`, kernels 2/3/4 x 256 filters
    over the token states), whose pooled feature the TextCNN student's hint loss matches (eqs. (8)-(10)).

    Shapes: ``h`` (B, L, dim), ``mask`` (B, L) -> logits (B, num_labels), pooled (B, dim), or
    (B, 768) for ``cnn``.
    """

    def __init__(self, dim: int, num_labels: int, query_dim: int = 200, dropout: float = 0.1,
                 pooling: str = "attentive"):
        super().__init__()
        if pooling not in POOLINGS:
            raise DistillError(f"--pooling must be one of {', '.join(POOLINGS)}, not {pooling!r}")
        self.pooling = pooling
        self.pool = None
        if pooling == "attentive":
            self.pool = AttentivePooling(dim, query_dim)
        elif pooling == "cnn":
            from .textcnn import ConvFeatures

            self.pool = ConvFeatures(dim)
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(self.pool.out_features if pooling == "cnn" else dim, num_labels)

    @property
    def feature_size(self) -> int:
        """Size of the pooled feature fed to the prediction layer."""
        return self.classifier.in_features

    def forward(self, h: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.pool is not None:
            e = self.pool(h, mask)
        elif self.pooling == "mean":
            e = masked_mean(h, mask)
        else:
            e = h[:, 0]
        return self.classifier(self.dropout(e)), e


def masked_mean(h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of token states over real tokens: (B, L, d), (B, L) -> (B, d)."""
    m = mask.unsqueeze(-1).to(h.dtype)
    return (h * m).sum(1) / m.sum(1).clamp_min(1.0)


@dataclass
class ClassifierOutput:
    """Output of :class:`EncoderClassifier`.

    Attributes:
        logits: (B, C).
        hidden_states: tuple of (B, L, d) tensors, index 0 = embeddings, j = layer j; ``None`` unless asked.
        pooled: (B, d_c) pooled representation fed to the prediction layer.
    """

    logits: torch.Tensor
    hidden_states: tuple | None
    pooled: torch.Tensor


class EncoderClassifier(nn.Module):
    """A Hugging Face encoder + optional projection + classification head.

    Args:
        encoder: any ``transformers`` encoder returning ``last_hidden_state`` / ``hidden_states``.
        head: the (possibly shared) :class:`ClassificationHead`.
        head_dim: ``d_c``; a ``Linear(d_i, d_c)`` projection is added when the encoder's hidden size differs.
    """

    def __init__(self, encoder: nn.Module, head: ClassificationHead, head_dim: int):
        super().__init__()
        self.encoder = encoder
        d = encoder.config.hidden_size
        self.proj = nn.Linear(d, head_dim) if d != head_dim else nn.Identity()
        self.head = head

    @property
    def hidden_size(self) -> int:
        return self.encoder.config.hidden_size

    @property
    def num_layers(self) -> int:
        return self.encoder.config.num_hidden_layers

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                output_hidden_states: bool = False) -> ClassifierOutput:
        out = self.encoder(input_ids=input_ids, attention_mask=attention_mask,
                           output_hidden_states=output_hidden_states, return_dict=True)
        logits, pooled = self.head(self.proj(out.last_hidden_state), attention_mask)
        return ClassifierOutput(logits, out.hidden_states if output_hidden_states else None, pooled)

    def head_state(self) -> dict[str, torch.Tensor]:
        """Parameters outside the HF encoder (projection + head), for ``head.safetensors``."""
        return {k: v for k, v in self.state_dict().items() if not k.startswith("encoder.")}


def count_params(module: nn.Module) -> int:
    """Number of distinct parameters (shared tensors counted once)."""
    seen, n = set(), 0
    for p in module.parameters():
        if id(p) not in seen:
            seen.add(id(p))
            n += p.numel()
    return n


def load_encoder(path: str | Path, num_layers: int | None = None, trust_remote_code: bool = False) -> nn.Module:
    """Load an HF encoder from a local folder (safetensors only), optionally its first ``num_layers``.

    Raises:
        DistillError: unsupported model or missing weights.
    """
    from transformers import AutoConfig, AutoModel

    kw = {"use_safetensors": True, "trust_remote_code": trust_remote_code}
    if num_layers is not None:
        kw["num_hidden_layers"] = num_layers
    try:
        try:
            model = AutoModel.from_pretrained(str(path), add_pooling_layer=False, **kw)
        except TypeError:
            model = AutoModel.from_pretrained(str(path), **kw)
    except (OSError, ValueError) as e:
        cfg = None
        try:
            cfg = AutoConfig.from_pretrained(str(path), trust_remote_code=trust_remote_code)
        except Exception:
            pass
        raise DistillError(f"cannot load encoder from {path}"
                           f"{' (model_type ' + cfg.model_type + ')' if cfg else ''}: {e}") from None
    if not hasattr(model.config, "num_hidden_layers") or not hasattr(model.config, "hidden_size"):
        raise DistillError(f"{path}: not a Transformer encoder with num_hidden_layers/hidden_size.")
    return model


def encoder_from_config(config_path: str | Path) -> nn.Module:
    """A randomly initialised encoder from a ``config.json`` (for a student of any architecture)."""
    from transformers import AutoConfig, AutoModel

    cfg = AutoConfig.from_pretrained(str(config_path))
    try:
        return AutoModel.from_config(cfg, add_pooling_layer=False)
    except TypeError:
        return AutoModel.from_config(cfg)


def layer_map(student_layers: int, teacher_layers: int) -> list[int]:
    """Teacher layer matched to each student layer ``j = 1..K`` (MT-BERT eq. (1)).

    Uniform mapping ``round(j * L_i / K)``; for ``L_i = T * K`` it is the paper's ``T * j``.
    Returns 1-based teacher layer indices (index into ``hidden_states``), length ``K``.
    """
    K, L = student_layers, teacher_layers
    return [max(1, min(L, round(j * L / K))) for j in range(1, K + 1)]


def save_classifier(model: EncoderClassifier, tokenizer, folder: Path, meta: dict) -> None:
    """Write a classifier folder (encoder via ``save_pretrained`` in safetensors, tokenizer,
    ``head.safetensors``, ``classifier.json``, and last ``checksums.json``, see :mod:`distill.integrity`).
    The caller makes it atomic (see ``runio``)."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    if getattr(model, "architecture", "transformer") == "textcnn":
        from .textcnn import save_textcnn

        tokenizer.save_pretrained(str(folder))
        full = dict(meta, **save_textcnn(model, folder), format="distill-classifier/1")
        (folder / META_FILE).write_text(json.dumps(full, indent=2))
        write_checksums(folder)
        return
    model.encoder.save_pretrained(str(folder), safe_serialization=True)
    tokenizer.save_pretrained(str(folder))
    save_file({k: v.detach().cpu().contiguous() for k, v in model.head_state().items()}, str(folder / HEAD_FILE))
    full = dict(meta)
    full.update({"hidden_size": model.hidden_size, "num_layers": model.num_layers,
                 "head_dim": model.proj.out_features if isinstance(model.proj, nn.Linear) else model.hidden_size,
                 "num_labels": model.head.classifier.out_features,
                 "pooling": model.head.pooling,
                 "query_dim": model.head.pool.proj.out_features if model.head.pooling == "attentive" else None,
                 "projection": not isinstance(model.proj, nn.Identity),
                 "format": "distill-classifier/1"})
    (folder / META_FILE).write_text(json.dumps(full, indent=2))
    write_checksums(folder)


def load_classifier(folder: str | Path, device: str = "cpu") -> tuple[EncoderClassifier, object, dict]:
    """Load a classifier folder written by :func:`save_classifier`.

    Returns:
        ``(model in eval mode, tokenizer, meta dict)``.

    Raises:
        CorruptArtifact: a file differs from ``checksums.json`` (cut short, altered, missing).
        DistillError: missing files, or (folders without checksums) a weights file that does not load.
    """
    from safetensors.torch import load_file
    from transformers import AutoTokenizer

    folder = Path(folder)
    if not verify_checksums(folder, "Restore the folder from a copy or rebuild it (a run's student: `distill run "
                                    "--out RUN --resume` retrains a damaged seed; the teacher store rebuilds itself)."):
        for f in folder.glob("*.safetensors"):  # older folders have no checksums: at least the headers must open
            _check_safetensors(f)
    meta = json.loads((folder / META_FILE).read_text()) if (folder / META_FILE).is_file() else {}
    textcnn = meta.get("architecture") == "textcnn"
    need = ("model.safetensors", META_FILE) if textcnn else ("config.json", "model.safetensors", HEAD_FILE, META_FILE)
    for f in need:
        if not (folder / f).is_file():
            raise DistillError(f"{folder}: missing {f}; this is not a complete classifier folder "
                               "(was the run interrupted? rerun `distill run --resume`).")
    if textcnn:
        from .textcnn import load_textcnn

        return load_textcnn(folder, meta).to(device).eval(), AutoTokenizer.from_pretrained(str(folder)), meta
    enc = load_encoder(folder)
    head = ClassificationHead(meta["head_dim"], meta["num_labels"], meta.get("query_dim") or 200,
                              pooling=meta.get("pooling", "attentive"))
    model = EncoderClassifier(enc, head, meta["head_dim"])
    missing, unexpected = model.load_state_dict(load_file(str(folder / HEAD_FILE)), strict=False)
    bad = [k for k in missing if not k.startswith("encoder.")] + list(unexpected)
    if bad:
        raise DistillError(f"{folder / HEAD_FILE}: parameters do not match classifier.json ({bad[:3]}).")
    tok = AutoTokenizer.from_pretrained(str(folder))
    return model.to(device).eval(), tok, meta


def _check_safetensors(path: Path) -> None:
    """Open a safetensors header; a cut-short or foreign file raises :class:`DistillError` naming it."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), "pt") as fh:
            fh.keys()
    except Exception as e:  # noqa: BLE001 - safetensors raises its own error types for every failure
        raise DistillError(f"{path}: not a readable safetensors file ({str(e)[:120]}); the file is cut short or "
                           "altered. Restore or rebuild the folder.") from None


def weights_size_mb(folder: str | Path) -> float:
    """Size of a model folder's weight files (``*.safetensors``) in MB (10^6 bytes)."""
    return sum(f.stat().st_size for f in Path(folder).glob("*.safetensors")) / 1e6
