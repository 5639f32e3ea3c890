"""Soak test: the real BentoML service under sustained load from locust (headless), with its memory
followed over time, then the same texts and batch sizes through ONNX Runtime in-process.

1. Starts ``bentoml serve`` on the export (:class:`serve.launcher.Server`, 127.0.0.1, free port) and
   samples the RSS of its whole process tree every ``--sample-s`` seconds (MB; the serve process, the
   BentoML arbiter and the worker).
2. Runs ``locust --headless`` with ``--users`` clients for ``--minutes``; each client posts one real
   news text per request (``benchmarks/locustfile.py``), back to back. Texts: the test split of the
   export's source run (``manifest.json`` ``source_run``) or ``--run``.
3. Stops the server with SIGTERM (graceful: it must exit 0).
4. In-process: :class:`serve.runtime.TextClassifierRuntime` with as many intra-op threads as the service
   uses in all (threads x workers) runs the same texts in model calls of the same sizes as the service's
   adaptive batcher made (the sizes reported in the responses' ``batch_size``, replayed in proportion)
   for ``--inproc-s`` seconds; with several workers, also one runtime per worker side by side (the
   service's layout). The service / in-process ratio is taken against the faster of the two.

Texts longer than the service's ``max_text_chars`` are left out (they get a 400 by design); their count
is reported.

Prints and writes (``--out``, JSON): requests, failures, 5xx, p50/p99 latency (ms), throughput (req/s =
texts/s), RSS at start / after the warm-up / at the end and the growth after warm-up (%), the CPU time
used by the server and by locust (s), and the service / in-process throughput ratio.

Usage::

    python -m benchmarks.soak runs/default/export --minutes 10 --users 16 --out soak.json
    python -m benchmarks.soak runs/default/export --minutes 0.5 --warmup-s 10 --inproc-s 10   # smoke

Exit status 1 when a request got a 5xx or the server did not stop cleanly.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LOCUSTFILE = Path(__file__).resolve().parent / "locustfile.py"


def _pct(xs: list[float], q: float) -> float:
    if not xs:
        return float("nan")
    s = sorted(xs)
    return s[min(len(s) - 1, max(0, int(round(q * (len(s) - 1)))))]


def soak_texts(export_dir: Path, run_dir: str | Path | None = None, limit: int = 2000) -> list[str]:
    """Up to ``limit`` test-split texts of the export's source run (or ``run_dir``).

    Raises:
        FileNotFoundError: the run folder is not there (pass ``--run``).
    """
    from distill.runfolder import load_run_data

    if run_dir is None:
        run_dir = json.loads((export_dir / "manifest.json").read_text()).get("source_run") or export_dir.parent
    if not (Path(run_dir) / "split.json").is_file():
        raise FileNotFoundError(f"{run_dir}: not a run folder with split.json; pass --run RUN_DIR for the texts")
    ds, parts, _ = load_run_data(run_dir)
    return [ds.texts[i] for i in parts["test"][:limit]]


class TreeSampler(threading.Thread):
    """Samples the summed RSS (MB) and CPU time (s) of a process and its children every ``every_s`` s."""

    def __init__(self, pid: int, every_s: float = 5.0):
        super().__init__(daemon=True)
        self.pid, self.every_s = pid, every_s
        self.samples: list[dict] = []  # {"t": s since start, "rss_mb", "cpu_s", "procs": {name: rss_mb}}
        self.t0 = time.monotonic()
        self._halt = threading.Event()

    def sample(self) -> dict | None:
        import psutil

        try:
            root = psutil.Process(self.pid)
            procs = [root] + root.children(recursive=True)
        except psutil.NoSuchProcess:
            return None
        rss, cpu, named = 0.0, 0.0, {}
        for p in procs:
            try:
                mb = p.memory_info().rss / 2**20
                t = p.cpu_times()
                cpu += t.user + t.system
                rss += mb
                cmd = " ".join(p.cmdline()[1:4])[-60:]
                named[f"{p.pid} {cmd}"] = round(mb, 1)
            except psutil.Error:
                continue
        s = {"t": round(time.monotonic() - self.t0, 1), "rss_mb": round(rss, 1), "cpu_s": round(cpu, 2),
             "procs": named}
        self.samples.append(s)
        return s

    def run(self) -> None:
        while not self._halt.wait(self.every_s):
            self.sample()

    def stop(self) -> None:
        self._halt.set()
        self.join(timeout=self.every_s + 5)


def at(samples: list[dict], t: float) -> dict:
    """The first sample at or after ``t`` seconds (the last one if none)."""
    return next((s for s in samples if s["t"] >= t), samples[-1])


def inprocess_throughput(export_dir: Path, texts: list[str], batch_sizes: list[int], threads: int, model: str,
                         seconds: float, seed: int = 0, sessions: int = 1) -> dict:
    """Texts/s of :class:`TextClassifierRuntime` (tokenize + ONNX Runtime + softmax) over model calls whose
    sizes are drawn from ``batch_sizes`` (one entry per model call), for ``seconds`` s.

    ``sessions`` runtimes of ``threads`` intra-op threads each run side by side, each driven by its own
    Python thread (ONNX Runtime and the tokenizer release the GIL): the in-process twin of a service with
    ``sessions`` workers. Returns texts/s, model calls, texts, seconds, threads and sessions.
    """
    from serve.runtime import TextClassifierRuntime

    rts = [TextClassifierRuntime(export_dir, model=model, threads=threads) for _ in range(sessions)]
    for rt in rts:
        rt.predict_proba(texts[:2])  # warm up
    counts = [[0, 0] for _ in rts]  # texts, calls per session
    t0 = time.perf_counter()

    def drive(i: int) -> None:
        rng = random.Random(seed + i)
        while time.perf_counter() - t0 < seconds:
            b = rng.choice(batch_sizes)
            rts[i].predict_proba([rng.choice(texts) for _ in range(b)])
            counts[i][0] += b
            counts[i][1] += 1

    workers = [threading.Thread(target=drive, args=(i,)) for i in range(sessions)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    dt = time.perf_counter() - t0
    n_texts, n_calls = sum(c[0] for c in counts), sum(c[1] for c in counts)
    return {"texts_per_s": n_texts / dt, "model_calls": n_calls, "texts": n_texts, "seconds": dt,
            "threads": threads, "sessions": sessions}


def model_calls(batch_sizes_seen: list[int]) -> list[int]:
    """Model-call sizes from the per-response ``batch_size`` values (a call of size b answers b responses)."""
    c = Counter(batch_sizes_seen)
    calls = []
    for b, n in c.items():
        calls += [b] * max(1, round(n / b))
    return calls


def drive_locust(url: str, users: int, minutes: float, work: Path) -> tuple[dict, float, float]:
    """Run locust headless against ``url`` (texts from ``work/texts.json``); returns its per-request record
    (see ``benchmarks/locustfile.py``), the load's duration (s) and locust's CPU time (s)."""
    import psutil

    record = work / "record.json"
    cmd = [sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--headless", "-u", str(users), "-r", str(users),
           "--run-time", f"{max(1, int(minutes * 60))}s", "--host", url, "--only-summary", "--stop-timeout", "30",
           "--csv", str(work / "locust"), "--loglevel", "WARNING"]
    env = dict(os.environ, SOAK_TEXTS=str(work / "texts.json"), SOAK_RECORD=str(record))
    t0, cpu = time.monotonic(), 0.0
    with open(work / "locust.log", "wb") as log:
        loc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=str(ROOT))
        lproc = psutil.Process(loc.pid)
        while loc.poll() is None:
            try:
                t = lproc.cpu_times()
                cpu = t.user + t.system
            except psutil.Error:
                pass
            time.sleep(1.0)
    load_s = time.monotonic() - t0
    if not record.is_file():
        raise RuntimeError(f"locust exited {loc.returncode} without its record; see {work / 'locust.log'}")
    return json.loads(record.read_text()), load_s, cpu


def run_soak(export_dir: Path, minutes: float, users: int, warmup_s: float, inproc_s: float,
             env: dict[str, str], run_dir: str | None = None, sample_s: float = 5.0,
             work: Path | None = None) -> dict:
    """Run steps 1-4 of the module docstring; returns the result dict (see :func:`print_result`).

    ``work`` keeps the server log, locust's CSV files and the per-request record; by default they go to
    a temp folder that is removed at the end. The server is stopped whatever happens.
    """
    import httpx

    from serve.launcher import Server

    texts = soak_texts(export_dir, run_dir)
    keep = work is not None
    work = Path(work) if keep else Path(tempfile.mkdtemp(prefix="distill-soak-"))
    work.mkdir(parents=True, exist_ok=True)
    srv = Server(export_dir, env=env, ready_timeout_s=180, log_path=work / "server.log").start()
    try:
        meta0 = httpx.get(srv.url + "/metadata", timeout=30).json()
        limit = meta0["limits"]["max_text_chars"]
        sent = [t for t in texts if len(t) <= limit]  # a longer text is a 400 by design, not load
        (work / "texts.json").write_text(json.dumps(sent))
        sampler = TreeSampler(srv.proc.pid, sample_s)
        start = sampler.sample()
        sampler.start()
        t_load = time.monotonic()
        rec, load_s, locust_cpu = drive_locust(srv.url, users, minutes, work)
        end = sampler.sample()
        sampler.stop()
        t_term = time.monotonic()
        srv.proc.terminate()  # SIGTERM to bentoml serve, as a container runtime does
        try:
            rc = srv.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            rc = None
        shutdown_s = time.monotonic() - t_term
    finally:
        srv.stop()
    status = Counter(rec["status"])
    ok = status.get(200, 0)
    warm = at(sampler.samples, (t_load - sampler.t0) + warmup_s)
    # the same cores as the service: (a) one session with its intra-op threads x its workers; (b) with
    # several workers, also its layout: one session per worker side by side. The ratio is taken against
    # the faster of the two.
    per, nw = int(meta0.get("intra_op_threads") or 1), int(meta0.get("workers") or 1)
    calls = model_calls(rec["batch_size"]) or [1]
    model = meta0.get("model", "int8")
    inprocs = [inprocess_throughput(export_dir, sent, calls, per * nw, model, inproc_s)]
    if nw > 1:
        inprocs.append(inprocess_throughput(export_dir, sent, calls, per, model, inproc_s, sessions=nw))
    inproc = max(inprocs, key=lambda x: x["texts_per_s"])
    service_tps = ok / load_s if load_s else 0.0
    if not keep:
        shutil.rmtree(work, ignore_errors=True)
    return {
        "export_dir": str(export_dir), "users": users, "minutes": minutes, "texts_available": len(texts),
        "texts_sent": len(sent), "texts_over_limit": len(texts) - len(sent), "max_text_chars": limit,
        "requests": len(rec["status"]), "ok": ok, "failures": len(rec["status"]) - ok,
        "status_counts": {str(k): v for k, v in sorted(status.items())},
        "http_5xx": sum(v for k, v in status.items() if k >= 500), "connection_errors": status.get(0, 0),
        "p50_ms": _pct(rec["ms"], 0.50), "p99_ms": _pct(rec["ms"], 0.99), "max_ms": max(rec["ms"], default=0.0),
        "req_per_s": service_tps, "load_s": load_s,
        # from the responses' batch_size (every worker; /metadata's counters are one worker's)
        "mean_batch_size": sum(calls) / len(calls), "max_batch_size": max(rec["batch_size"], default=0),
        "rss_start_mb": start["rss_mb"] if start else None, "rss_warm_mb": warm["rss_mb"],
        "rss_end_mb": end["rss_mb"] if end else None,
        "rss_growth_after_warmup_pct": 100.0 * (end["rss_mb"] - warm["rss_mb"]) / warm["rss_mb"] if end else None,
        "warmup_s": warmup_s, "rss_series": [(x["t"], x["rss_mb"]) for x in sampler.samples],
        "procs_end": end["procs"] if end else {}, "server_cpu_s": end["cpu_s"] if end else None,
        "locust_cpu_s": locust_cpu, "shutdown_rc": rc, "shutdown_s": shutdown_s,
        "workers": nw, "intra_op_threads": per, "inprocess": inproc, "inprocess_all": inprocs,
        "service_vs_inprocess": service_tps / inproc["texts_per_s"] if inproc["texts_per_s"] else None,
        "work": str(work) if keep else None,
    }


def print_result(r: dict) -> None:
    """A human-readable table of :func:`run_soak`'s result."""
    print(f"soak: {r['users']} users x {r['minutes']:g} min on {r['export_dir']} ({r['texts_sent']} texts; "
          f"{r['texts_over_limit']} over the service's {r['max_text_chars']}-character limit left out)")
    print(f"  requests {r['requests']:,}  ok {r['ok']:,}  failures {r['failures']}  5xx {r['http_5xx']}  "
          f"status {r['status_counts']}")
    print(f"  latency p50 {r['p50_ms']:.1f} ms  p99 {r['p99_ms']:.1f} ms  max {r['max_ms']:.0f} ms;  "
          f"throughput {r['req_per_s']:.1f} req/s;  mean model batch {r['mean_batch_size']:.2f} (max {r['max_batch_size']})")
    print(f"  RSS (process tree) start {r['rss_start_mb']:.0f} MB, after {r['warmup_s']:g} s warm-up "
          f"{r['rss_warm_mb']:.0f} MB, end {r['rss_end_mb']:.0f} MB: growth after warm-up "
          f"{r['rss_growth_after_warmup_pct']:+.1f}%")
    print(f"  CPU: server {r['server_cpu_s']:.0f} s, locust {r['locust_cpu_s']:.0f} s over {r['load_s']:.0f} s;  "
          f"SIGTERM -> exit {r['shutdown_rc']} in {r['shutdown_s']:.1f} s")
    print(f"  service: {r['workers']} worker(s) x {r['intra_op_threads']} intra-op thread(s)")
    for ip in r["inprocess_all"]:
        print(f"  in-process ONNX Runtime, same texts and batch sizes, {ip['sessions']} session(s) x "
              f"{ip['threads']} thread(s): {ip['texts_per_s']:.1f} texts/s")
    print(f"  service / in-process (the faster) = {r['service_vs_inprocess']:.3f}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("export", help="export folder (or a run folder with export/)")
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--users", type=int, default=16)
    ap.add_argument("--warmup-s", type=float, default=60.0, help="seconds of load counted as warm-up for RSS")
    ap.add_argument("--inproc-s", type=float, default=60.0, help="seconds of the in-process measurement")
    ap.add_argument("--sample-s", type=float, default=5.0, help="RSS sampling period (s)")
    ap.add_argument("--run", help="run folder whose test texts are sent (default: the export's source run)")
    ap.add_argument("--env", action="append", default=[], help="DISTILL_*=VALUE for the server (repeatable)")
    ap.add_argument("--out", help="write the result as JSON here")
    ap.add_argument("--work", help="keep the server log, locust CSVs and the per-request record in this folder")
    a = ap.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    from serve.runtime import resolve_export_dir

    export_dir = resolve_export_dir(a.export)
    env = dict(kv.split("=", 1) for kv in a.env)
    r = run_soak(export_dir, a.minutes, a.users, a.warmup_s, a.inproc_s, env, a.run, a.sample_s,
                 Path(a.work) if a.work else None)
    print_result(r)
    if a.out:
        from distill.runio import atomic_write_json

        atomic_write_json(Path(a.out), r)
    return 1 if r["http_5xx"] or r["shutdown_rc"] != 0 else 0


if __name__ == "__main__":
    raise SystemExit(main())
