"""The soak benchmark end to end on the tiny export, briefly: locust drives the real server, memory is
sampled, the server stops on SIGTERM, and the in-process comparison runs (benchmarks/soak.py)."""

from __future__ import annotations

import importlib.util

import pytest

pytest.importorskip("psutil")
# never import locust here: it monkey-patches the standard library with gevent (the soak runs it as a process)
pytestmark = pytest.mark.skipif(importlib.util.find_spec("locust") is None, reason="locust not installed")

from benchmarks.soak import model_calls, run_soak  # noqa: E402


def test_soak_smoke(tiny_export):
    r = run_soak(tiny_export, minutes=0.25, users=4, warmup_s=5, inproc_s=2,
                 env={"DISTILL_INTRA_OP_THREADS": "1"}, sample_s=1.0)
    assert r["requests"] > 50 and r["ok"] == r["requests"], r["status_counts"]
    assert r["http_5xx"] == 0 and r["failures"] == 0
    assert 0 < r["p50_ms"] <= r["p99_ms"] <= r["max_ms"]
    assert r["rss_start_mb"] > 0 and r["rss_end_mb"] > 0 and len(r["rss_series"]) >= 5
    assert r["shutdown_rc"] == 0
    assert r["inprocess"]["texts_per_s"] > 0 and r["service_vs_inprocess"] > 0
    assert r["max_batch_size"] >= 1 and r["locust_cpu_s"] > 0


def test_model_calls_from_response_batch_sizes():
    # 3 responses served by one call of 3, 2 by one call of 2, 4 lone calls
    assert sorted(model_calls([3, 3, 3, 2, 2, 1, 1, 1, 1])) == [1, 1, 1, 1, 2, 3]
