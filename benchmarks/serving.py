"""Serving benchmark: the real BentoML service (``serve.service:NewsClassifier``) on 127.0.0.1 at a
free port, serving the run's exported model files, with 1, 4 and 16 concurrent clients.

The server is started and stopped with :class:`serve.launcher.Server`; the clients are
:func:`benchmarks.serve_latency.burst` (each client posts one title per request, back to back,
for a fixed time). Titles are the first line of the run's test texts (the BBC headline).
"""

from __future__ import annotations

import logging
from pathlib import Path

log = logging.getLogger("distill.bench")


def titles_from_texts(texts: list[str], limit: int = 500, max_chars: int = 300) -> list[str]:
    """First non-empty line of each text (a news headline), at most ``max_chars`` characters."""
    out = []
    for t in texts[:limit]:
        line = next((ln.strip() for ln in t.splitlines() if ln.strip()), t.strip())
        out.append(line[:max_chars])
    return out


def run_serving(run_dir: Path, export_dir: Path | None, titles: list[str], clients=(1, 4, 16),
                duration_s: float = 8.0, model: str = "int8", ready_timeout_s: float = 180.0) -> dict:
    """Measure the service at each client count.

    Returns:
        ``{"skipped": False, "model", "levels": [{clients, requests, errors, throughput_rps,
        p50_ms, p99_ms, mean_batch_size, seconds}], "metadata", "startup_s"}`` (ms, requests/s),
        or ``{"skipped": True, "reason"}`` when the service, the client or the export is missing,
        or the server does not start.
    """
    import time

    if export_dir is None or not (Path(export_dir) / "manifest.json").is_file():
        return {"skipped": True, "reason": f"no export of {run_dir} (run `distill export {run_dir}`)"}
    try:
        import importlib.util

        import httpx

        from serve.launcher import Server

        from .serve_latency import burst, single_client

        if importlib.util.find_spec("serve.service") is None:
            raise ImportError("serve/service.py does not exist yet")
    except Exception as e:  # ImportError (component not written yet) or an import-time failure
        return {"skipped": True, "reason": f"serving components not available: {type(e).__name__}: {e}"}
    res = {"skipped": False, "model": model, "export_dir": str(export_dir), "duration_s_per_level": duration_s, "host": "127.0.0.1",
           "payload": '{"texts": [<one title>]}', "titles": len(titles), "levels": []}
    t0 = time.perf_counter()
    try:
        srv = Server(export_dir, env={"DISTILL_MODEL": model}, ready_timeout_s=ready_timeout_s).start()
    except Exception as e:
        return {"skipped": True, "reason": f"server did not start: {type(e).__name__}: {str(e)[-1500:]}"}
    try:
        res["startup_s"] = time.perf_counter() - t0
        try:
            meta = httpx.get(srv.url + "/metadata", timeout=10).json()
            res["metadata"] = {k: meta.get(k) for k in ("model", "model_file", "export_id", "providers",
                                                          "intra_op_threads", "workers", "batching") if k in meta}
        except Exception as e:  # informative only
            res["metadata"] = {"error": str(e)}
        res["warmup"] = single_client(srv.url, titles[0], 20, 30)
        for c in clients:
            r = burst(srv.url, titles, c, duration_s)
            res["levels"].append(r)
            log.info("serving %d clients: %.1f req/s, p50 %.1f ms, p99 %.1f ms, %d errors", c,
                     r["throughput_rps"], r["p50_ms"], r["p99_ms"], r["errors"])
        res["server_alive_at_end"] = srv.alive()
    finally:
        srv.stop()
    return res
