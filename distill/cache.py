"""The teacher-output cache: one pass of the frozen teachers, stored once, reused across seeds and runs.

What is stored (schema version :data:`SCHEMA_VERSION`), per teacher ``i``:

* ``t{i}.dev.logits`` / ``t{i}.test.logits``: (n_part, C) float32 (teacher and ensemble metrics);
* ``t{i}.train.logits``: (n, C) float32 over the training split followed by the transfer set
  (:mod:`distill.transfer`; its texts' fingerprint is part of the file name);
* ``t{i}.train.pooled``: (n, d_c) float32, the pooled head feature (the prediction layer's input);
* ``t{i}.train.layer{k}``, k = 0..K-1 (only when a strategy needs mapped-layer states): the states of
  teacher layer ``layer_map[k]``, (n, max_length, d_i) float16 token states when the teacher's
  tokenization equals the student's, else (n, d_i) float32 masked-mean pooled states.

The file is safetensors (no pickle) in the teacher store, named by a fingerprint of the schema
version, the student depth, layer maps, tokenizer rule and split; its metadata records the schema.
A file holding layer states also serves runs that need none. The size is estimated before the pass;
above ``--cache-max-mb`` the teachers run at every step instead (:class:`TeacherProvider` online
mode: the same signals, slower).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch

from . import distributed as D
from .device import autocast_ctx
from .modeling import masked_mean
from .integrity import tensor_digest
from .runio import atomic_path, fingerprint
from .strategies.base import TeacherSignals
from .tokens import Tokenized, length_sorted_batches, progress

log = logging.getLogger("distill")

#: Bump when what the cache stores (or how) changes; older files are then recomputed, never misread.
SCHEMA_VERSION = 2


@torch.no_grad()
def teacher_outputs(teacher, tok: Tokenized, rows: list[int], layer_ids: list[int] | None, token_level: bool,
                    device: str, batch_size: int, precision: str, desc: str) -> dict:
    """One inference pass of a frozen teacher (:class:`~distill.modeling.EncoderClassifier`) over ``rows``.

    Returns:
        ``{"logits": (n, C) float32, "pooled": (n, d_c) float32, "layers": [K tensors]}``; each
        layer tensor is (n, max_length, d_i) float16 token states (``token_level``) or (n, d_i)
        float32 masked-mean pooled states; ``layers`` is empty when ``layer_ids`` is None.

    Under a launcher the ranks compute the batches in turn and gather them (every rank calls this and
    gets all rows; each batch is the one a single process computes, so the values are the same).
    """
    teacher.eval()
    n, C = len(rows), teacher.head.classifier.out_features
    logits = torch.zeros((n, C), dtype=torch.float32)
    pooled = torch.zeros((n, teacher.head.classifier.in_features), dtype=torch.float32)
    layers = []
    for _ in layer_ids or []:
        d = teacher.hidden_size
        layers.append(torch.zeros((n, tok.max_length, d), dtype=torch.float16) if token_level
                      else torch.zeros((n, d), dtype=torch.float32))
    batches = length_sorted_batches(tok.lengths(rows), batch_size)
    mine = {}
    for k, b in progress(D.my_batches(batches), desc):
        ids, mask = tok.batch([rows[i] for i in b], device)
        with autocast_ctx(device, precision):
            out = teacher(ids, mask, output_hidden_states=bool(layer_ids))
        states = [out.hidden_states[lj] for lj in layer_ids or []]
        mine[k] = (out.logits.float().cpu(), out.pooled.float().cpu(),
                   [h.to(torch.float16).cpu() if token_level else masked_mean(h.float(), mask).cpu() for h in states])
    for b, (lg, pl, hs) in zip(batches, D.gather_batches(mine, len(batches))):
        idx = torch.tensor(b)
        logits[idx], pooled[idx] = lg, pl
        for k, h in enumerate(hs):  # token-level (B, L_batch, d) into (n, max_length, d); pooled (B, d)
            layers[k][idx, : h.shape[1]] = h
    return {"logits": logits, "pooled": pooled, "layers": layers}


def estimate_cache_mb(n: int, hidden_sizes: list[int], pooled_size: int, K: int, token_level: list[bool],
                      max_length: int, num_labels: int, needs_layers: bool) -> float:
    """Training-split cache size in MB (10^6 bytes) for ``n`` examples:
    ``n * sum_i [C*4 + d_c*4 + (K * (L*d_i*2 | d_i*4) if layers)]``."""
    total = 0
    for d, tl in zip(hidden_sizes, token_level):
        total += n * (num_labels + pooled_size) * 4
        if needs_layers:
            total += n * K * (max_length * d * 2 if tl else d * 4)
    return total / 1e6


class TeacherProvider:
    """Gives :class:`~distill.strategies.base.TeacherSignals` for a batch of training rows, from the
    cache or by running the frozen teachers (``online``).

    Args:
        train_rows: the training rows (cache row k = ``train_rows[k]``).
        cached: per teacher, the dict of :func:`teacher_outputs` over ``train_rows`` (cache mode), or None.
        teachers, toks, layer_maps, token_level: used in online mode.
        needs_layers: also return the mapped-layer states.
    """

    def __init__(self, train_rows, cached=None, teachers=None, toks=None, layer_maps=None, token_level=None,
                 needs_layers=False, device="cpu", precision="fp32"):
        self.pos = {r: k for k, r in enumerate(train_rows)}
        self.cached, self.teachers, self.toks = cached, teachers, toks
        self.layer_maps, self.token_level = layer_maps, token_level
        self.needs_layers, self.device, self.precision = needs_layers, device, precision

    @property
    def mode(self) -> str:
        """``cache`` or ``online``."""
        return "cache" if self.cached is not None else "online"

    @torch.no_grad()
    def __call__(self, rows: list[int], seq_len: int) -> TeacherSignals:
        """Signals for dataset ``rows``; token-level states are cut to the student batch length ``seq_len``."""
        if self.cached is not None:
            idx = torch.tensor([self.pos[r] for r in rows])
            logits = torch.stack([c["logits"][idx] for c in self.cached]).to(self.device)
            pooled = torch.stack([c["pooled"][idx] for c in self.cached]).to(self.device)
            layers = None
            if self.needs_layers:
                layers = [[(h[idx, :seq_len].float() if tl else h[idx]).to(self.device) for h in c["layers"]]
                          for c, tl in zip(self.cached, self.token_level)]
            return TeacherSignals(logits, layers, pooled)
        all_logits, all_pooled, layers = [], [], [] if self.needs_layers else None
        for t, tk, lm, tl in zip(self.teachers, self.toks, self.layer_maps, self.token_level):
            ids, mask = tk.batch(rows, self.device)
            with autocast_ctx(self.device, self.precision):
                out = t(ids, mask, output_hidden_states=self.needs_layers)
            all_logits.append(out.logits.float())
            all_pooled.append(out.pooled.float())
            if self.needs_layers:
                layers.append([out.hidden_states[j].float() if tl else masked_mean(out.hidden_states[j].float(), mask)
                               for j in lm])
        return TeacherSignals(torch.stack(all_logits), layers, torch.stack(all_pooled))


def _key(K, token_level, layer_maps, layers: bool, cache: bool, dev, test, transfer: str | None,
         legacy: bool = False) -> str:
    """File fingerprint. The student's depth and layer map only matter to a file that holds layer
    states, so a layer-free file serves every student (a TextCNN, a K-layer encoder); ``legacy`` gives
    the key of layer-free files written before that rule (still read)."""
    key = {"schema": SCHEMA_VERSION, "layers": layers, "cache": cache, "dev": dev, "test": test}
    if layers or legacy:
        key.update({"K": K, "token_level": token_level, "layer_maps": layer_maps})
    if transfer and cache:  # a transfer set only changes what the training-split cache holds
        key["transfer"] = transfer
    return fingerprint(key)


def _read(path: Path) -> dict | None:
    """A cache file's tensors, or None when it is missing, of another schema version, or damaged (cut short,
    or tensors that no longer match the digest written with them): the caller recomputes it."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    if not path.is_file():
        return None
    try:
        with safe_open(str(path), "pt") as fh:
            meta = fh.metadata() or {}
        if meta.get("schema") != str(SCHEMA_VERSION):
            log.info("teacher-output cache %s has schema %s (need %d): recomputing", path.name, meta.get("schema"),
                     SCHEMA_VERSION)
            return None
        flat = load_file(str(path))
    except Exception as e:  # noqa: BLE001 - safetensors raises its own error types for a damaged file
        log.warning("teacher-output cache %s does not load (%s); recomputing it", path, str(e)[:120])
        return None
    if "digest" in meta and tensor_digest(flat) != meta["digest"]:
        log.warning("teacher-output cache %s: tensors differ from the digest written with them (altered); "
                    "recomputing it", path)
        return None
    return flat


def load_or_build(store: Path, teachers, toks, split, K: int, layer_maps, token_level, *, needs_layers: bool,
                  use_cache: bool, device: str, batch_size: int, precision: str, transfer_rows: list[int] = (),
                  transfer_key: str | None = None) -> tuple[list[dict], dict]:
    """Teacher logits on dev/test and the training-split cache, from ``store`` or by one teacher pass.

    Args:
        split: an object with ``train``/``dev``/``test`` row lists.
        use_cache: False = only dev/test logits (teachers will run online during training).
        transfer_rows: transfer-set rows (:mod:`distill.transfer`) cached after the training rows
            (cache row k = ``(split.train + transfer_rows)[k]``); ``transfer_key`` fingerprints their texts.

    Returns:
        ``(per teacher {"dev", "test": (n, C) numpy; cache mode: "logits", "pooled", "layers"}, info)``
        where info has ``reused`` and ``file_mb``. The file is written atomically.
    """
    from safetensors.torch import save_file

    args = (K, token_level, layer_maps)
    cache_rows = list(split.train) + list(transfer_rows)
    candidates = [_key(*args, True, True, split.dev, split.test, transfer_key)] if use_cache else []
    if not (use_cache and needs_layers):
        candidates += [_key(*args, False, use_cache, split.dev, split.test, transfer_key, legacy=legacy)
                       for legacy in (False, True)]
    flat, path = None, store / f"outputs-{candidates[0]}.safetensors"
    for key in candidates:
        flat = _read(store / f"outputs-{key}.safetensors")
        if flat is not None:
            path = store / f"outputs-{key}.safetensors"
            log.info("loading cached teacher outputs from %s", path.name)
            break
    if D.world().size > 1:  # rank 0 decides; a rank that cannot see its file (another node) gets its tensors
        missing = D.all_gather(flat is None)
        if missing[0]:
            flat = None
        elif any(missing):
            flat = D.broadcast(flat)
        path = D.broadcast(path)
    reused = flat is not None
    if flat is None:
        key = _key(*args, needs_layers and use_cache, use_cache, split.dev, split.test, transfer_key)
        path = store / f"outputs-{key}.safetensors"
        flat = {}
        for i, (t, tk) in enumerate(zip(teachers, toks)):
            for part in ("dev", "test"):
                flat[f"t{i}.{part}.logits"] = teacher_outputs(t, tk, getattr(split, part), None, False, device,
                                                              batch_size, precision, f"teacher {i} {part}")["logits"]
            if use_cache:
                o = teacher_outputs(t, tk, cache_rows, layer_maps[i] if needs_layers else None, token_level[i],
                                    device, batch_size, precision, f"teacher {i} cache")
                flat[f"t{i}.train.logits"] = o["logits"]
                flat[f"t{i}.train.pooled"] = o["pooled"]
                for k, h in enumerate(o["layers"]):
                    flat[f"t{i}.train.layer{k}"] = h.contiguous()
            log.info("teacher %d outputs computed", i)
        if D.world().main:  # every rank holds the gathered outputs; one writes them
            with atomic_path(path) as tmp:
                save_file(flat, str(tmp), metadata={"schema": str(SCHEMA_VERSION), "format": "distill-teacher-outputs",
                                                    "teachers": json.dumps(len(teachers)), "digest": tensor_digest(flat)})
        D.barrier()
    per = []
    for i in range(len(teachers)):
        d = {part: flat[f"t{i}.{part}.logits"].numpy() for part in ("dev", "test")}
        if use_cache:
            d["logits"], d["pooled"] = flat[f"t{i}.train.logits"], flat[f"t{i}.train.pooled"]
            d["layers"] = [flat[f"t{i}.train.layer{k}"] for k in range(K) if f"t{i}.train.layer{k}" in flat]
        per.append(d)
    size = path.stat().st_size if path.is_file() else sum(t.numel() * t.element_size() for t in flat.values())
    return per, {"reused": reused, "file_mb": round(size / 1e6, 1), "schema": SCHEMA_VERSION, "file": path.name}
