"""The service's settings (pydantic-settings, bad values stop the start-up naming the variable), the
BentoML version check of its patches, and graceful shutdown: on SIGTERM the requests in flight finish."""

from __future__ import annotations

import logging
import os
import re
import signal
import threading
import time

import pytest

httpx = pytest.importorskip("httpx")
pytest.importorskip("bentoml")

from serve.launcher import Server  # noqa: E402
from serve.settings import ServeSettings, load_settings, usable_cores  # noqa: E402


@pytest.fixture()
def clean_env(monkeypatch):
    for k in list(os.environ):
        if k.startswith("DISTILL_"):
            monkeypatch.delenv(k)
    return monkeypatch


def test_settings_defaults(clean_env):
    s = load_settings()
    assert (s.model, s.max_batch_size, s.max_latency_ms, s.batch_wait_ms) == ("int8", 32, 2000, 0.0)
    assert s.workers == min(usable_cores(), 4)  # auto
    assert (s.max_texts, s.max_text_chars, s.intra_op_threads) == (64, 10_000, 0)
    assert s.max_body_bytes == 6 * 64 * 10_000 + 65536
    assert s.verify_sha256 is True and s.ort_spinning is False and s.export_dir is None
    assert s.access_log is True and s.metrics is True


def test_settings_from_the_environment(clean_env):
    for k, v in {"DISTILL_MODEL": " FP32 ", "DISTILL_MAX_TEXTS": "8", "DISTILL_MAX_TEXT_CHARS": "100",
                 "DISTILL_BATCH_WAIT_MS": "off", "DISTILL_ORT_SPINNING": "yes", "DISTILL_VERIFY_SHA256": "0",
                 "DISTILL_EXPORT_DIR": "/x/export", "DISTILL_REQUEST_TIMEOUT_S": "2.5"}.items():
        clean_env.setenv(k, v)
    s = load_settings()
    assert (s.model, s.max_texts, s.max_text_chars, s.batch_wait_ms) == ("fp32", 8, 100, None)
    assert s.max_body_bytes == 6 * 8 * 100 + 65536  # the default follows the limits
    assert s.ort_spinning is True and s.verify_sha256 is False
    assert s.export_dir == "/x/export" and s.request_timeout_s == 2.5
    assert s.workers == min(usable_cores(), 4)
    clean_env.setenv("DISTILL_MAX_BODY_BYTES", "")  # empty = the default
    clean_env.setenv("DISTILL_BATCH_WAIT_MS", "5")
    s = load_settings()
    assert s.max_body_bytes == 6 * 8 * 100 + 65536 and s.batch_wait_ms == 5.0
    clean_env.setenv("DISTILL_WORKERS", "3")
    assert load_settings().workers == 3
    clean_env.setenv("DISTILL_WORKERS", "0")
    clean_env.setenv("DISTILL_MODEL", "fp16")  # one GPU: one worker
    assert load_settings().workers == 1


@pytest.mark.parametrize("name, value, needle", [
    ("DISTILL_MAX_BATCH_SIZE", "1", "greater than or equal to 2"),
    ("DISTILL_MAX_TEXTS", "0", "greater than or equal to 1"),
    ("DISTILL_MAX_TEXTS", "many", "valid integer"),
    ("DISTILL_MODEL", "int4", "'int8', 'fp32' or 'fp16'"),
    ("DISTILL_BATCH_WAIT_MS", "-1", "greater than or equal to 0"),
    ("DISTILL_MAX_BODY_BYTES", "10", "greater than or equal to 1024"),
    ("DISTILL_VERIFY_SHA256", "maybe", "valid boolean"),
    ("DISTILL_WORKERS", "-1", "greater than or equal to 0"),
    ("DISTILL_METRICS", "sometimes", "valid boolean"),
])
def test_a_bad_setting_names_the_variable_and_the_range(clean_env, name, value, needle):
    clean_env.setenv(name, value)
    with pytest.raises(ValueError) as e:
        load_settings()
    msg = str(e.value)
    assert f"{name}={value!r}" in msg and needle in msg, msg
    assert "Traceback" not in msg


def test_settings_are_typed_fields():
    """One declaration per setting (type, default, range): what the docs and the errors come from."""
    fields = ServeSettings.model_fields
    assert {"model", "workers", "max_batch_size", "max_latency_ms", "batch_wait_ms", "max_texts",
            "max_text_chars", "max_body_bytes", "request_timeout_s", "verify_sha256", "ort_spinning",
            "intra_op_threads", "export_dir", "access_log", "metrics"} == set(fields)


def test_a_bad_setting_stops_the_server_naming_it(tiny_export):
    with pytest.raises(RuntimeError) as e:
        Server(tiny_export, env={"DISTILL_MAX_BATCH_SIZE": "1"}, ready_timeout_s=60).start()
    assert "DISTILL_MAX_BATCH_SIZE='1'" in str(e.value) and "greater than or equal to 2" in str(e.value)


def test_patches_are_skipped_on_an_untested_bentoml(monkeypatch, caplog):
    """The BentoML patches apply only to the release they were tested on; another one runs unpatched
    with a warning (and ``test_bentoml_internals_we_patch_exist`` fails loudly)."""
    import bentoml
    from bentoml._internal.marshal.dispatcher import Optimizer

    from serve import bentoml_patches

    assert bentoml_patches.bentoml_version() == bentoml_patches.TESTED_BENTOML
    before = Optimizer.trigger_refresh
    monkeypatch.setattr(bentoml, "__version__", "1.5.0")
    with caplog.at_level(logging.WARNING, logger="bentoml.distill.serve"):
        assert bentoml_patches.cap_batcher_wait(0.0) is False
    assert Optimizer.trigger_refresh is before
    assert any("not the tested 1.4" in r.getMessage() for r in caplog.records)


#: what a client sees when the worker closes an idle keep-alive connection it has just written a request onto
CONNECTION_ERRORS = ("RemoteProtocolError", "ReadError", "WriteError", "ConnectError")


def test_sigterm_lets_the_requests_in_flight_finish(tiny_export, tmp_path):
    """What a container runtime does on stop: SIGTERM to the server's main process while 8 clients keep
    sending. The requests in flight at the signal are answered 200, every request a worker took is
    answered in full (each worker logs "N received, N answered" at shutdown, and the client got every
    200 the access log shows), no request gets a 5xx, the server exits 0, and afterwards the port
    refuses connections.

    A request written onto an idle keep-alive connection just as the worker closes it fails at the
    connection level without reaching the worker (HTTP/1.1; it is safe to send again); the two counts
    above tell such a request from one the server dropped. Asserting "every request sent before the
    signal is answered" failed by chance on 2 loaded cores for exactly that race."""
    texts = ["Stocks rallied on Wall Street as oil prices fell and investors bet on rate cuts " * 20] * 8
    srv = Server(tiny_export, env={"DISTILL_INTRA_OP_THREADS": "1", "DISTILL_MAX_TEXTS": "8", "DISTILL_WORKERS": "2"},
                 ready_timeout_s=90, log_path=tmp_path / "server.log").start()
    results: list[tuple[float, float, int | None, str | None]] = []
    stop = threading.Event()
    t_term: list[float] = []

    def client() -> None:
        with httpx.Client(timeout=30) as c:
            while not stop.is_set():
                t0 = time.monotonic()
                try:
                    r = c.post(srv.url + "/classify", json={"texts": texts})
                    results.append((t0, time.monotonic(), r.status_code, None))
                except httpx.HTTPError as e:
                    results.append((t0, time.monotonic(), None, type(e).__name__))
                    if t_term:
                        return

    threads = [threading.Thread(target=client) for _ in range(8)]
    try:
        for t in threads:
            t.start()
        time.sleep(2.0)
        t_term.append(time.monotonic())
        os.kill(srv.proc.pid, signal.SIGTERM)
        # a generous bound: draining 8 long requests took over 60 s on 2 cores shared with a training job
        rc = srv.proc.wait(timeout=180)
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=60)
        srv.stop()
    sent_before = [r for r in results if r[0] < t_term[0]]
    in_flight = [r for r in sent_before if r[1] >= t_term[0] and r[2] == 200]
    assert rc == 0, srv.log_tail()
    assert len(sent_before) > 8 and in_flight, (len(sent_before), len(in_flight))
    assert all(r[2] == 200 or r[3] in CONNECTION_ERRORS for r in results), [r for r in results if r[2] != 200]
    log = (tmp_path / "server.log").read_text()
    drained = [tuple(map(int, m)) for m in re.findall(r"shutting down: (\d+) HTTP requests received, (\d+) answered", log)]
    assert len(drained) == 2 and all(r == a for r, a in drained), drained  # both workers, nothing cut off
    served = len(re.findall(r"path=/classify,.*\(status=200,", log))
    assert served == sum(r[2] == 200 for r in results), (served, sum(r[2] == 200 for r in results))
    with pytest.raises(httpx.ConnectError):
        httpx.get(srv.url + "/livez", timeout=5)


def test_json_outputs_state_their_media_type(tiny_export, monkeypatch):
    """BentoML rebuilds a root-model output's JSON schema in ``mime_type()`` for every response unless the
    descriptor states its media type; the service states it for both APIs."""
    import inspect

    from _bentoml_sdk.io_models import IOMixin

    monkeypatch.setenv("DISTILL_EXPORT_DIR", str(tiny_export))
    from serve.service import NewsClassifier

    assert "cls.mime_type()" in inspect.getsource(IOMixin.to_http_response)  # what the fix short-cuts
    for name in ("classify", "metadata"):
        assert NewsClassifier.apis[name].output_spec.media_type == "application/json"


def test_access_log_and_metrics_can_be_turned_off(tiny_export, tmp_path):
    """``DISTILL_ACCESS_LOG=0`` / ``DISTILL_METRICS=0`` reach BentoML: no access line per request in the
    server log, ``/metrics`` answers 404; with the defaults both are on (checked on the same requests).
    Both servers run the automatic number of workers."""
    texts = {"texts": ["Oil prices fell as markets rallied"]}
    for env, on in (({}, True), ({"DISTILL_ACCESS_LOG": "0", "DISTILL_METRICS": "off"}, False)):
        log = tmp_path / f"server-{on}.log"
        with Server(tiny_export, env={"DISTILL_INTRA_OP_THREADS": "1", **env}, ready_timeout_s=90,
                    log_path=log) as srv:
            for _ in range(3):
                assert httpx.post(srv.url + "/classify", json=texts, timeout=30).status_code == 200
            meta = httpx.get(srv.url + "/metadata", timeout=30).json()
            metrics = httpx.get(srv.url + "/metrics", timeout=30)
        access = [ln for ln in log.read_text(errors="replace").splitlines() if "/classify" in ln and "200" in ln]
        assert (meta["access_log"], meta["metrics"]) == (on, on)
        assert meta["workers"] == min(usable_cores(), 4) and meta["intra_op_threads"] == 1  # auto workers
        assert (metrics.status_code == 200) is on, metrics.status_code
        assert (len(access) >= 3) is on and (len(access) == 0) is (not on), access


def test_request_guard_counts_what_it_received_and_answered_and_logs_it_at_shutdown(caplog):
    """The shutdown line's counts: a request answered in full (also a streamed one) counts as answered; a
    request whose app raised (or that was cut off) does not, and then the line is a warning."""
    import asyncio

    from serve.guard import RequestGuard

    async def app(scope, receive, send):
        if scope["type"] == "lifespan":
            await receive()
            return await send({"type": "lifespan.shutdown.complete"})
        if scope["path"] == "/boom":
            raise RuntimeError("boom")
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"a", "more_body": True})
        await send({"type": "http.response.body", "body": b"b"})

    async def receive():
        return {"type": "lifespan.shutdown"}

    async def send(msg):
        sent.append(msg["type"])

    async def main(paths):
        g = RequestGuard(app, max_bytes=100)
        for p in paths:
            try:
                await g({"type": "http", "method": "POST", "path": p, "headers": []}, receive, send)
            except RuntimeError:
                pass
        await g({"type": "lifespan"}, receive, send)
        return g

    for paths, level, needle in ((["/classify", "/classify"], logging.INFO, "2 HTTP requests received, 2 answered, none left"),
                                 (["/classify", "/boom"], logging.WARNING, "2 HTTP requests received, 1 answered; 1 got no")):
        sent: list[str] = []
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="bentoml.distill.serve"):
            g = asyncio.run(main(paths))
        assert sent[-1] == "lifespan.shutdown.complete"
        assert [r.levelno for r in caplog.records if "shutting down" in r.getMessage()] == [level]
        assert needle in g.drain_summary()


def test_request_guard_closes_keep_alive_connections_once_the_worker_has_a_shutdown_signal():
    """After SIGTERM every response says ``Connection: close`` (so a keep-alive connection that uvicorn's
    shutdown did not see closes after its next answer), and the server's own handler still runs."""
    import asyncio
    import signal as sg

    from serve.guard import RequestGuard

    async def app(scope, receive, send):
        if scope["type"] == "lifespan":
            await receive()
            return await send({"type": "lifespan.startup.complete"})
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
        await send({"type": "http.response.body", "body": b"ok"})

    async def startup():
        return {"type": "lifespan.startup"}

    async def send(msg):
        sent.append(msg)

    async def one_request(g):
        await g({"type": "http", "method": "GET", "path": "/x", "headers": []}, startup, send)
        return dict(sent[-2]["headers"])

    server_saw: list[int] = []
    before = {s: sg.getsignal(s) for s in (sg.SIGTERM, sg.SIGINT)}
    sg.signal(sg.SIGTERM, lambda signum, frame: server_saw.append(signum))  # stands in for uvicorn's handler
    try:
        sent: list[dict] = []
        g = RequestGuard(app, max_bytes=100)
        asyncio.run(g({"type": "lifespan"}, startup, send))  # lifespan startup installs the hook
        assert b"connection" not in asyncio.run(one_request(g))
        sg.raise_signal(sg.SIGTERM)
        assert server_saw == [sg.SIGTERM] and g.draining
        assert asyncio.run(one_request(g))[b"connection"] == b"close"
    finally:
        for s, h in before.items():
            sg.signal(s, h)
