"""HTTP latency/throughput of the BentoML service (a script, not a test).

Starts the real server (``bentoml serve serve.service:NewsClassifier``) on 127.0.0.1 at a free port
with the given export, waits for ``/readyz``, then measures, with one news title per request:

1. single client: ``--single`` sequential requests -> p50/p99 (ms);
2. burst: ``--clients`` concurrent clients for ``--duration`` s -> throughput (req/s), p50/p99 (ms),
   errors, mean model batch size (from the responses' ``batch_size``);
3. single client again after the burst (the adaptive batcher must not stay slow).

Titles: AG News test titles (``../shared/data/ag_news/test.csv`` column 2) when present, else a
built-in list of BBC-style titles. Every loop is bounded in count and time; the server is always
stopped at the end.

Usage::

    python benchmarks/serve_latency.py runs/bbc                      # run dir or export folder
    python benchmarks/serve_latency.py runs/bbc --json out.json --threads 2
    python benchmarks/serve_latency.py EXPORT --env DISTILL_BATCH_WAIT_MS=off   # BentoML's own wait
    python benchmarks/serve_latency.py --url http://127.0.0.1:3000  # an already running server
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

AG_NEWS = ROOT.parent / "shared" / "data" / "ag_news" / "test.csv"
BBC_TITLES = [
    "Ad sales boost Time Warner profit", "Dollar gains on Greenspan speech", "Yukos unit buyer faces loan claim",
    "Highbury tunnel players in clear", "Blair prepares to name poll date", "Ink helps drive democracy in Asia",
    "Gallery unveils interactive tree", "Jarre joins fairytale celebration", "Mobile gig aims to rock 2005",
    "Kenyon denies Robben Barca return", "Howard hits back at mongrel jibe", "Consumers drive French economy",
    "Games maker fights for survival", "Safin slumps to shock Dubai loss", "Parmalat boasts doubled profits",
]


def load_titles(limit: int = 2000) -> list[str]:
    """Up to ``limit`` news titles (AG News test titles if available, else BBC titles)."""
    if AG_NEWS.is_file():
        titles = []
        with AG_NEWS.open(newline="", encoding="utf-8") as fh:
            for row in csv.reader(fh):
                if len(row) >= 2 and row[1].strip():
                    titles.append(row[1].strip())
                if len(titles) >= limit:
                    break
        if titles:
            return titles
    return list(BBC_TITLES)


def pct(xs: list[float], q: float) -> float:
    """The ``q``-quantile (0..1, nearest rank) of ``xs``; NaN when empty."""
    if not xs:
        return float("nan")
    s = sorted(xs)
    return s[min(len(s) - 1, max(0, int(round(q * (len(s) - 1)))))]


def single_client(url: str, text: str, n: int, max_s: float) -> dict:
    """``n`` sequential one-text requests (stops after ``max_s`` s): latency p50/p99 in ms."""
    import httpx

    lat, errors = [], 0
    t_end = time.monotonic() + max_s
    with httpx.Client(base_url=url, timeout=10.0) as c:
        for _ in range(n):
            if time.monotonic() > t_end:
                break
            t0 = time.perf_counter()
            try:
                r = c.post("/classify", json={"texts": [text]})
                ok = r.status_code == 200
            except httpx.HTTPError:
                ok = False
            dt = (time.perf_counter() - t0) * 1000
            if ok:
                lat.append(dt)
            else:
                errors += 1
    return {"requests": len(lat) + errors, "errors": errors, "p50_ms": pct(lat, 0.5), "p99_ms": pct(lat, 0.99),
            "mean_ms": sum(lat) / len(lat) if lat else float("nan")}


def burst(url: str, titles: list[str], clients: int, duration_s: float, max_requests: int = 200_000) -> dict:
    """``clients`` threads posting one title each, back to back, for ``duration_s`` s (and at most
    ``max_requests`` in all): throughput (req/s), p50/p99 (ms), errors, mean model batch size."""
    import httpx

    lock = threading.Lock()
    lat: list[float] = []
    batch_sizes: list[int] = []
    errors = [0]
    count = [0]
    status: dict[int, int] = {}
    t_start = time.monotonic()
    t_end = t_start + duration_s

    def worker(k: int) -> None:
        i = k
        with httpx.Client(base_url=url, timeout=10.0) as c:
            while time.monotonic() < t_end:
                with lock:
                    if count[0] >= max_requests:
                        return
                    count[0] += 1
                text = titles[i % len(titles)]
                i += clients
                t0 = time.perf_counter()
                try:
                    r = c.post("/classify", json={"texts": [text]})
                    code = r.status_code
                    bs = r.json()[0].get("batch_size", 0) if code == 200 else 0
                except (httpx.HTTPError, ValueError, KeyError, IndexError):
                    code, bs = -1, 0
                dt = (time.perf_counter() - t0) * 1000
                with lock:
                    status[code] = status.get(code, 0) + 1
                    if code == 200:
                        lat.append(dt)
                        batch_sizes.append(bs)
                    else:
                        errors[0] += 1

    threads = [threading.Thread(target=worker, args=(k,), daemon=True) for k in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=duration_s + 30)
    elapsed = time.monotonic() - t_start
    return {"clients": clients, "seconds": round(elapsed, 2), "requests": len(lat) + errors[0], "errors": errors[0],
            "status": {str(k): v for k, v in sorted(status.items())},
            "throughput_rps": len(lat) / elapsed if elapsed else 0.0,
            "p50_ms": pct(lat, 0.5), "p99_ms": pct(lat, 0.99),
            "mean_batch_size": sum(batch_sizes) / len(batch_sizes) if batch_sizes else float("nan")}


def run_benchmark(url: str, single: int = 200, clients: int = 16, duration_s: float = 10.0) -> dict:
    """All three phases against ``url``; returns the results dict."""
    import httpx

    titles = load_titles()
    text = titles[0]
    meta = {}
    try:
        meta = httpx.get(url + "/metadata", timeout=10).json()
    except (httpx.HTTPError, ValueError):
        pass
    single_client(url, text, 20, 30)  # warm-up (also BentoML's batcher training requests)
    res = {"url": url, "text": text, "n_titles": len(titles),
           "model": {k: meta.get(k) for k in ("model", "model_file", "export_id", "providers", "intra_op_threads",
                                              "workers", "batching")}}
    res["single_before"] = single_client(url, text, single, 120)
    res["burst"] = burst(url, titles, clients, duration_s)
    res["single_after"] = single_client(url, text, single, 120)
    return res


def print_table(res: dict) -> None:
    """A small text table of the results."""
    print(f"model: {res['model']}")
    print(f"{'phase':<22}{'requests':>9}{'errors':>8}{'req/s':>9}{'p50 ms':>9}{'p99 ms':>9}{'batch':>7}")
    for name, key in (("single (before)", "single_before"), (f"{res['burst']['clients']} clients", "burst"),
                      ("single (after burst)", "single_after")):
        r = res[key]
        rps = r["throughput_rps"] if "throughput_rps" in r else (1000.0 / r["mean_ms"] if r["mean_ms"] > 0 else 0.0)
        bs = r.get("mean_batch_size", 1.0)
        print(f"{name:<22}{r['requests']:>9}{r['errors']:>8}{rps:>9.1f}{r['p50_ms']:>9.2f}{r['p99_ms']:>9.2f}{bs:>7.2f}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("export", nargs="?", help="export folder or run folder (with export/)")
    ap.add_argument("--url", help="benchmark this running server instead of starting one")
    ap.add_argument("--model", default="int8", choices=["int8", "fp32", "fp16"])
    ap.add_argument("--threads", type=int, help="ONNX Runtime intra-op threads (DISTILL_INTRA_OP_THREADS)")
    ap.add_argument("--env", action="append", default=[], metavar="KEY=VALUE", help="extra server setting")
    ap.add_argument("--single", type=int, default=200, help="requests per single-client phase (<= 5000)")
    ap.add_argument("--clients", type=int, default=16, help="concurrent clients in the burst (<= 64)")
    ap.add_argument("--duration", type=float, default=10.0, help="burst seconds (<= 120)")
    ap.add_argument("--json", type=Path, help="also write the results here")
    a = ap.parse_args(argv)
    single, clients, duration = min(a.single, 5000), max(1, min(a.clients, 64)), min(a.duration, 120.0)
    if a.url:
        res = run_benchmark(a.url.rstrip("/"), single, clients, duration)
    else:
        if not a.export:
            ap.error("give an export folder / run folder, or --url")
        from serve.launcher import Server
        from serve.runtime import resolve_export_dir

        env = {"DISTILL_MODEL": a.model}
        if a.threads:
            env["DISTILL_INTRA_OP_THREADS"] = str(a.threads)
        for kv in a.env:
            k, _, v = kv.partition("=")
            env[k] = v
        with Server(resolve_export_dir(a.export), env=env, ready_timeout_s=120) as srv:
            res = run_benchmark(srv.url, single, clients, duration)
            res["server_env"] = env
    if a.json:
        a.json.parent.mkdir(parents=True, exist_ok=True)
        a.json.write_text(json.dumps(res, indent=2))
    print_table(res)
    if a.json:
        print(f"wrote {a.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
