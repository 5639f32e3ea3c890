"""Running the models for the export: PyTorch reference logits and the latency table (ms).

ONNX Runtime sessions, tokenize-and-pad and ONNX logits come from :mod:`serve.runtime` (one copy,
shared with the service, ``distill predict`` and the benchmarks).
"""

from __future__ import annotations

import os
import statistics
import time

import numpy as np

from .graph import OUTPUT_NAME


def predict_torch(model, batches, n: int) -> np.ndarray:
    """PyTorch logits (n, C) float32 over the batches of :func:`serve.runtime.padded_batches`."""
    import torch

    out = None
    with torch.inference_mode():
        for ids, mask, rows in batches:
            lg = model(torch.from_numpy(ids), torch.from_numpy(mask)).logits.float().numpy()
            if out is None:
                out = np.zeros((n, lg.shape[1]), np.float32)
            out[rows] = lg
    return out


def measure_latency(model, sessions: dict, vocab_size: int, threads: int = 2, runs: int = 20, seq_len: int = 128,
                    batch_sizes: tuple[int, ...] = (1, 32)) -> dict:
    """Median wall-clock latency in ms per call (after 2 warm-up calls) of PyTorch fp32 and each ONNX
    Runtime session, on random token ids (batch, ``seq_len``) below ``vocab_size`` with a full
    attention mask, ``threads`` threads.

    Returns:
        ``{"threads", "seq_len", "runs", "cpu_count", "load_avg_1min", "pytorch_fp32": {"batch_1": ms,
        "batch_32": ms}, "<session name>": {...}}``.
    """
    import torch

    rng = np.random.default_rng(0)
    res = {"threads": threads, "seq_len": seq_len, "runs": runs, "cpu_count": os.cpu_count(),
           "load_avg_1min": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None}
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        inputs = {b: (rng.integers(5, max(6, vocab_size), (b, seq_len)).astype(np.int64),
                      np.ones((b, seq_len), np.int64)) for b in batch_sizes}

        def med(fn) -> float:
            for _ in range(2):
                fn()
            ts = []
            for _ in range(runs):
                t0 = time.perf_counter()
                fn()
                ts.append(time.perf_counter() - t0)
            return round(1000.0 * statistics.median(ts), 3)

        with torch.inference_mode():
            res["pytorch_fp32"] = {f"batch_{b}": med(lambda i=torch.from_numpy(x), m=torch.from_numpy(y): model(i, m))
                                   for b, (x, y) in inputs.items()}
        for name, s in sessions.items():
            res[name] = {f"batch_{b}": med(lambda x=x, y=y: s.run([OUTPUT_NAME], {"input_ids": x, "attention_mask": y}))
                         for b, (x, y) in inputs.items()}
    finally:
        torch.set_num_threads(old)
    return res
