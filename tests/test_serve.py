"""The BentoML service over real HTTP: predictions equal offline ONNX Runtime, every bad input gets a
4xx (and the server keeps answering), concurrent requests are batched, the bento builds offline and
serves its packed model. One real ``bentoml serve`` per module (127.0.0.1, free port, always stopped)."""

from __future__ import annotations

import hashlib
import json
import shutil
import threading
import time
from pathlib import Path

import numpy as np
import pytest

httpx = pytest.importorskip("httpx")
ort = pytest.importorskip("onnxruntime")
pytest.importorskip("bentoml")

from serve.launcher import ROOT, Server  # noqa: E402

MAX_TEXTS, MAX_CHARS = 8, 2000
SERVER_ENV = {"DISTILL_MAX_TEXTS": str(MAX_TEXTS), "DISTILL_MAX_TEXT_CHARS": str(MAX_CHARS),
              "DISTILL_INTRA_OP_THREADS": "1", "DISTILL_MAX_BATCH_SIZE": "16",
              "DISTILL_WORKERS": "1"}  # one worker: /metadata's batching counters cover every request
MAX_BODY = 6 * MAX_TEXTS * MAX_CHARS + 65536  # the service's default for these limits
TEXTS = ["market shares profit bank economy", "match team player goal season", "software computer phone chip",
         "minister election party vote", "the a of to in", "Stocks rally as bank profits beat forecasts"]


# ------------------------------------------------------------------------------------------------
# fixtures
# ------------------------------------------------------------------------------------------------
def _sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def server(tiny_export, tmp_path_factory):
    """A real ``bentoml serve`` of the tiny export (stopped at teardown)."""
    log = tmp_path_factory.mktemp("serve-log") / "server.log"
    srv = Server(tiny_export, env=SERVER_ENV, ready_timeout_s=90, log_path=log)
    srv.start()
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture()
def client(server):
    with httpx.Client(base_url=server.url, timeout=30.0) as c:
        yield c


def offline_predict(export: Path, texts: list[str], kind: str = "int8") -> tuple[np.ndarray, list[bool]]:
    """Probabilities straight from ONNX Runtime + the export's tokenizer (no service code)."""
    from tokenizers import Tokenizer

    m = json.loads((export / "manifest.json").read_text())
    tok = Tokenizer.from_file(str(export / m["tokenizer"]["file"]))
    pad = int(m["tokenizer"]["pad_id"])
    tok.enable_truncation(max_length=int(m["max_length"]))
    tok.enable_padding(pad_id=pad, pad_token=tok.id_to_token(pad))
    encs = tok.encode_batch(texts)
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    sess = ort.InferenceSession(str(export / m["models"][kind]["file"]), so, providers=["CPUExecutionProvider"])
    feeds = {"input_ids": np.array([e.ids for e in encs], dtype=np.int64),
             "attention_mask": np.array([e.attention_mask for e in encs], dtype=np.int64)}
    names = {i.name for i in sess.get_inputs()}
    if "token_type_ids" in names:
        feeds["token_type_ids"] = np.zeros_like(feeds["input_ids"])
    logits = sess.run(None, {k: v for k, v in feeds.items() if k in names})[0].astype(np.float64)
    p = np.exp(logits - logits.max(1, keepdims=True))
    return p / p.sum(1, keepdims=True), [bool(e.overflowing) for e in encs]


def classify_ok(client, texts):
    r = client.post("/classify", json={"texts": texts})
    assert r.status_code == 200, r.text
    return r.json()


# ------------------------------------------------------------------------------------------------
# predictions
# ------------------------------------------------------------------------------------------------
def test_predictions_equal_offline_onnx(client, tiny_export):
    m = json.loads((tiny_export / "manifest.json").read_text())
    long_text = " ".join(["market shares profit bank economy"] * 40)  # far over max_length tokens
    texts = TEXTS + [long_text]
    got = classify_ok(client, texts)
    ref, trunc = offline_predict(tiny_export, texts)
    labels = m["label_names"]
    assert len(got) == len(texts)
    for g, p, t in zip(got, ref, trunc):
        assert list(g["probabilities"]) == labels
        np.testing.assert_allclose([g["probabilities"][k] for k in labels], p, atol=1e-5)
        assert g["label"] == labels[int(p.argmax())]
        assert g["score"] == pytest.approx(float(p.max()), abs=1e-5)
        assert g["truncated"] is t
    assert got[-1]["truncated"] is True and got[-1]["tokens"] == m["max_length"]
    assert not any(g["truncated"] for g in got[:-1])
    # one text at a time gives the same answer as in a batch (sequential requests are not merged)
    single = classify_ok(client, [TEXTS[0]])[0]
    assert single["batch_size"] == 1
    assert single["label"] == got[0]["label"]


def test_metadata_get_and_post(client, tiny_export):
    m = json.loads((tiny_export / "manifest.json").read_text())
    r1, r2 = client.get("/metadata"), client.post("/metadata", json={})
    assert r1.status_code == 200 and r2.status_code == 200, (r1.text, r2.text)
    for d in (r1.json(), r2.json()):
        assert d["labels"] == m["label_names"]
        assert d["model"] == "int8" and d["model_file"] == m["models"]["int8"]["file"]
        assert d["model_sha256"] == m["models"]["int8"]["sha256"] == _sha(tiny_export / d["model_file"])
        assert d["export_id"] == m["export_id"]
        assert d["test_metrics"] == m.get("test_metrics", {})
        assert d["providers"][0] in ("CPUExecutionProvider", "CUDAExecutionProvider")
        assert d["intra_op_threads"] == 1
        assert d["limits"] == {"max_texts": MAX_TEXTS, "max_text_chars": MAX_CHARS, "max_body_bytes": MAX_BODY}


def test_bentoml_endpoints_and_openapi_limits(client):
    for path in ("/livez", "/readyz", "/metrics"):
        assert client.get(path).status_code == 200, path
    spec = client.get("/docs.json").json()
    body = spec["paths"]["/classify"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    texts = body["properties"]["texts"]
    assert texts["minItems"] == 1 and texts["maxItems"] == MAX_TEXTS
    assert texts["items"]["minLength"] == 1 and texts["items"]["maxLength"] == MAX_CHARS


def test_service_binds_localhost_by_default():
    from serve.service import NewsClassifier

    assert str(NewsClassifier.config["http"]["host"]) == "127.0.0.1"


# ------------------------------------------------------------------------------------------------
# bad input
# ------------------------------------------------------------------------------------------------
BAD_JSON = [
    ("empty list", {"texts": []}, "at least 1"),
    ("empty text", {"texts": [""]}, "at least 1 character"),
    ("blank text", {"texts": ["   \n"]}, "blank"),
    ("number text", {"texts": [5]}, "string"),
    ("null text", {"texts": [None]}, "string"),
    ("object text", {"texts": [{"a": 1}]}, "string"),
    ("texts not a list", {"texts": "just one string"}, "list"),
    ("texts missing", {}, "missing"),
    ("body is a list", ["a", "b"], ""),
    ("too many texts", {"texts": ["news"] * (MAX_TEXTS + 1)}, f"at most {MAX_TEXTS}"),
    ("text too long", {"texts": ["a" * (MAX_CHARS + 1)]}, f"at most {MAX_CHARS}"),
]
BAD_RAW = [
    ("malformed json", b'{"texts": ["abc"', "application/json"),
    ("not json", b"hello", "application/json"),
    ("invalid utf-8", b'{"texts": ["\xff\xfe"]}', "application/json"),
    ("text/plain", b"some text", "text/plain"),
    ("form", b"texts=abc", "application/x-www-form-urlencoded"),
    ("multipart garbage", b"--x\r\nnonsense", "multipart/form-data; boundary=x"),
    ("pickle", b"\x80\x04K\x01.", "application/vnd.bentoml+pickle"),
]


def _still_serving(client):
    assert classify_ok(client, ["still alive?"])[0]["label"]


@pytest.mark.parametrize("name,payload,needle", BAD_JSON, ids=[b[0] for b in BAD_JSON])
def test_bad_json_is_4xx(client, name, payload, needle):
    r = client.post("/classify", json=payload)
    assert 400 <= r.status_code < 500, (name, r.status_code, r.text)
    assert needle.lower() in r.text.lower(), r.text
    _still_serving(client)


@pytest.mark.parametrize("name,body,ctype", BAD_RAW, ids=[b[0] for b in BAD_RAW])
def test_bad_body_is_4xx(client, name, body, ctype):
    r = client.post("/classify", content=body, headers={"content-type": ctype})
    assert 400 <= r.status_code < 500, (name, r.status_code, r.text)
    _still_serving(client)


@pytest.mark.parametrize("route", ["/classify", "/metadata"])
def test_multipart_without_boundary_is_400_not_500(client, route):
    r = client.post(route, content=b"{}", headers={"content-type": "multipart/form-data"})
    assert r.status_code == 400 and "without a boundary" in r.text, (r.status_code, r.text)
    _still_serving(client)


def test_wrong_method_is_4xx(client):
    assert client.get("/classify").status_code == 405
    _still_serving(client)


def test_oversized_body_is_413_without_parsing(client, server):
    big = b'{"texts": ["' + b"a" * (20 * 2**20) + b'"]}'  # ~20 MB, one huge string
    r = client.post("/classify", content=big, headers={"content-type": "application/json"})
    assert r.status_code == 413 and "over the limit" in r.text, r.text[:300]
    just_over = b'{"texts": ["' + b"a" * MAX_BODY + b'"]}'
    assert client.post("/classify", content=just_over, headers={"content-type": "application/json"}).status_code == 413
    _still_serving(client)
    assert server.alive()


def test_oversized_chunked_body_is_413(client):
    def chunks():
        for _ in range(8):
            yield b"a" * (MAX_BODY // 4)

    r = client.post("/classify", content=chunks(), headers={"content-type": "application/json"})
    assert r.status_code == 413, r.text[:300]
    _still_serving(client)


# ------------------------------------------------------------------------------------------------
# adaptive batching
# ------------------------------------------------------------------------------------------------
def test_concurrent_requests_are_batched(server):
    n, seen, errors = 8, [], []
    for _round in range(10):  # bounded; batching normally shows in the first round
        barrier = threading.Barrier(n, timeout=30)

        def one(i: int) -> None:
            try:
                with httpx.Client(base_url=server.url, timeout=30.0) as c:
                    barrier.wait()
                    r = c.post("/classify", json={"texts": [TEXTS[i % len(TEXTS)]]})
                    seen.append((r.status_code, r.json()[0]["batch_size"] if r.status_code == 200 else 0))
            except Exception as e:  # noqa: BLE001 - reported below
                errors.append(repr(e))

        threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
        if any(bs > 1 for _, bs in seen):
            break
    assert not errors, errors
    assert all(code == 200 for code, _ in seen), seen
    assert max(bs for _, bs in seen) > 1, seen
    stats = httpx.get(server.url + "/metadata", timeout=10).json()["stats"]
    assert stats["max_batch_size"] > 1
    metrics = httpx.get(server.url + "/metrics", timeout=10).text
    assert "adaptive_batch_size" in metrics


def test_batcher_wait_is_capped_after_a_burst():
    """The cause of "slow single requests after a burst", without timing: BentoML's optimizer keeps
    the burst's mean queueing time as the hold for later requests; the service caps it."""
    from bentoml._internal.marshal.dispatcher import Optimizer

    import serve.service as svc

    opt = Optimizer(2.0)
    for _ in range(Optimizer.N_KEPT_SAMPLE):
        opt.o_stat.append((8, 0.030, 0.040))  # burst: 8-text batches, 40 ms spent queueing
    Optimizer.trigger_refresh.__distill_original__(opt)  # BentoML alone
    assert opt.wait == pytest.approx(0.040)
    opt.trigger_refresh()  # as patched by serve.service
    assert opt.wait <= (svc.SETTINGS.batch_wait_ms or 0.0) / 1000.0 + 1e-12


def test_bentoml_internals_we_patch_exist():
    """Fails loudly when a BentoML release moves what serve/bentoml_patches.py patches."""
    import inspect as _inspect

    from bentoml._internal.marshal.dispatcher import Optimizer
    from bentoml._internal.server import http_app

    from serve import bentoml_patches

    assert callable(Optimizer.trigger_refresh) and "wait" in _inspect.getsource(Optimizer)
    assert http_app.logger.name == bentoml_patches.HTTP_APP_LOGGER
    assert "logger.error" in _inspect.getsource(http_app.log_exception)
    assert bentoml_patches.quiet_client_errors()


# ------------------------------------------------------------------------------------------------
# the bento
# ------------------------------------------------------------------------------------------------
def _bento_context(tiny_export: Path, tmp_path: Path) -> tuple[Path, dict]:
    """A copy of the bento build context (bentofile.yaml, serve/*.py) with the tiny export staged in
    serve/model, and a BENTOML_HOME under tmp_path."""
    from serve.bento import stage_export

    ctx = tmp_path / "ctx"
    (ctx / "serve").mkdir(parents=True)
    shutil.copy2(ROOT / "bentofile.yaml", ctx / "bentofile.yaml")
    for f in (ROOT / "serve").glob("*.py"):
        shutil.copy2(f, ctx / "serve" / f.name)
    stage_export(tiny_export, ctx / "serve" / "model")
    home = {"BENTOML_HOME": str(tmp_path / "bentoml-home")}
    return ctx, home


def test_bento_builds_offline_and_serves_its_model(tiny_export, tmp_path):
    """`bentoml build` (lock_packages: false, so offline) of a copy of the build context with the
    tiny export staged in serve/model, then `bentoml serve TAG` with no DISTILL_EXPORT_DIR and no
    --host: the bento's own model answers, on 127.0.0.1."""
    psutil = pytest.importorskip("psutil")
    from serve.bento import build_bento

    ctx, home = _bento_context(tiny_export, tmp_path)
    tag = build_bento(ctx, env=home, timeout_s=240)
    assert tag.startswith("news_classifier:")
    bento_src = tmp_path / "bentoml-home" / "bentos" / tag.replace(":", "/") / "src"
    assert (bento_src / "serve" / "model" / "model.int8.onnx").is_file()
    assert not (bento_src / "serve" / "model" / "model.onnx").exists()  # only the int8 model is packed

    m = json.loads((tiny_export / "manifest.json").read_text())
    with Server(None, target=tag, env=home, cwd=tmp_path, host=None, add_repo_to_path=False,
                ready_timeout_s=90, log_path=tmp_path / "bento.log") as srv:
        with httpx.Client(base_url=srv.url, timeout=30.0) as c:
            meta = c.get("/metadata").json()
            assert meta["export_id"] == m["export_id"] and meta["model_file"] == "model.int8.onnx"
            assert classify_ok(c, TEXTS[:2])[0]["label"] in m["label_names"]
        listening = [k for k in psutil.net_connections(kind="tcp")
                     if k.status == psutil.CONN_LISTEN and k.laddr and k.laddr.port == srv.port]
        assert listening and all(k.laddr.ip == "127.0.0.1" for k in listening), listening


def test_gpu_bento_requires_onnxruntime_gpu(tiny_export, tmp_path):
    """`python -m serve.bento --gpu`: the same bento, but its python requirements name onnxruntime-gpu
    (same version bound) and not the CPU onnxruntime; the repo's bentofile.yaml is left unchanged."""
    from serve.bento import build_bento, gpu_bentofile

    before = (ROOT / "bentofile.yaml").read_text()
    ctx, home = _bento_context(tiny_export, tmp_path)
    tag = build_bento(ctx, env=home, timeout_s=240, gpu=True)
    bento = tmp_path / "bentoml-home" / "bentos" / tag.replace(":", "/")
    reqs = [r.strip() for r in (bento / "env" / "python" / "requirements.txt").read_text().splitlines()]
    assert any(r.startswith("onnxruntime-gpu>=") for r in reqs), reqs
    assert not any(r.startswith("onnxruntime>=") or r == "onnxruntime" for r in reqs), reqs
    assert (ROOT / "bentofile.yaml").read_text() == before
    # a bentofile without onnxruntime is refused with the file named
    bad = tmp_path / "bad.yaml"
    bad.write_text("service: x\npython:\n  packages: [numpy]\n")
    with pytest.raises(ValueError, match="bad.yaml: python.packages has no 'onnxruntime'"):
        gpu_bentofile(bad, tmp_path / "out.yaml")


# ------------------------------------------------------------------------------------------------
# exports that missed their parity targets; the runtime stays light
# ------------------------------------------------------------------------------------------------
FAILED_PARITY = {"checked": True, "passed": False,
                 "failures": ["INT8 (dynamic) parity gate: INT8 accuracy drop 8.00 points > 0.5 and significant"]}


def _with_parity(tiny_export: Path, dest: Path, parity: dict) -> Path:
    """A copy of the tiny export whose manifest records ``parity`` (model files unchanged)."""
    shutil.copytree(tiny_export, dest)
    m = json.loads((dest / "manifest.json").read_text())
    m["parity"] = parity
    (dest / "manifest.json").write_text(json.dumps(m))
    return dest


def test_distill_serve_refuses_a_failed_parity_gate(tiny_export, tmp_path, monkeypatch):
    """`distill serve` refuses an export whose manifest records a missed target (naming it and the way
    out); with --allow-failed-parity it starts the server anyway, with a warning. The exec is captured."""
    import os

    from typer.testing import CliRunner

    from distill.cli import app

    calls = []
    monkeypatch.setattr(os, "execvpe", lambda file, args, env: calls.append((args, env)))
    bad = _with_parity(tiny_export, tmp_path / "bad", FAILED_PARITY)
    res = CliRunner().invoke(app, ["serve", str(bad)])
    assert res.exit_code == 2 and not calls
    assert "INT8 (dynamic) parity gate" in res.output and "--allow-failed-parity" in res.output
    res = CliRunner().invoke(app, ["serve", str(bad), "--allow-failed-parity", "--port", "3999"])
    assert res.exit_code == 0, res.output
    assert "warning" in res.output and "parity gate" in res.output
    (args, env), = calls
    assert args[1:5] == ["-m", "bentoml", "serve", "serve.service:NewsClassifier"] and "3999" in args
    assert env["DISTILL_EXPORT_DIR"] == str(bad.resolve())
    calls.clear()
    good = _with_parity(tiny_export, tmp_path / "good", {"checked": True, "passed": True, "failures": []})
    res = CliRunner().invoke(app, ["serve", str(good)])
    assert res.exit_code == 0 and len(calls) == 1 and "warning" not in res.output


def test_service_logs_a_warning_for_a_failed_parity_gate(tiny_export, tmp_path, monkeypatch, caplog):
    """The service itself (however it is started, e.g. from a bento) warns at start-up."""
    import logging

    from serve import service

    bad = _with_parity(tiny_export, tmp_path / "bad", FAILED_PARITY)
    monkeypatch.setenv("DISTILL_EXPORT_DIR", str(bad))
    monkeypatch.setenv("DISTILL_INTRA_OP_THREADS", "1")
    # the module reads its settings once, at import: an earlier test may have imported it with other ones
    monkeypatch.setattr(service, "SETTINGS", service.load_settings())
    with caplog.at_level(logging.WARNING, logger="bentoml.distill.serve"):
        svc = service.NewsClassifier.inner()
    assert svc.rt.model_kind == "int8"
    assert any("MISSED its parity targets" in r.getMessage() and "parity gate" in r.getMessage()
               for r in caplog.records)


def test_runtime_imports_without_torch_transformers_distill(tmp_path):
    """serve/runtime.py is packed into the bento: it imports (and its helpers run) with onnxruntime,
    tokenizers and numpy only."""
    import subprocess
    import sys

    code = ("import sys; sys.path.insert(0, sys.argv[1]); import serve.runtime as r; "
            "ids, mask = r.pad_ids([[5, 6, 7], [8]], 0); "
            "b = r.padded_batches([[5, 6, 7], [8]], 0, 1); "
            "assert ids.tolist() == [[5, 6, 7], [8, 0, 0]] and mask.tolist() == [[1, 1, 1], [1, 0, 0]]; "
            "assert [x[2] for x in b] == [[1], [0]] and b[0][0].shape == (1, 1); "
            "print(sorted(k for k in ('torch', 'transformers', 'distill', 'export') if k in sys.modules))")
    res = subprocess.run([sys.executable, "-I", "-c", code, str(ROOT)], capture_output=True, text=True, timeout=60,
                         cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "[]"


def test_schemathesis_all_checks_find_nothing(tiny_export, tmp_path):
    """The OpenAPI document and the answers agree and nothing gets a 5xx (a short run; the campaign's
    figure comes from ``python -m benchmarks.fuzz_service EXPORT --max-examples 1000``)."""
    pytest.importorskip("schemathesis")
    from benchmarks.fuzz_service import fuzz

    r = fuzz(tiny_export, max_examples=25, seed=1, log_path=tmp_path / "server.log")
    assert r["returncode"] == 0 and r["failures"] == 0, r["output"][-4000:]
    assert r["generated"] >= 50 and r["server_5xx"] == 0, r


def test_openapi_lists_get_metadata_and_the_list_detail_of_a_400(client):
    spec = client.get("/docs.json").json()
    assert "get" in spec["paths"]["/metadata"] and "413" in spec["paths"]["/classify"]["post"]["responses"]
    detail = spec["components"]["schemas"]["InvalidArgument"]["properties"]["detail"]
    assert {"type": "array", "items": {"type": "object"}} in detail["anyOf"]
    r = client.options("/metadata")
    assert r.status_code == 405 and r.headers["allow"] == "GET, POST"


def test_a_rejected_request_is_one_log_line_not_an_error_traceback(client, server):
    r = client.post("/classify", json={"texts": []})
    assert r.status_code == 400
    time.sleep(0.5)
    log = server.log_tail(10**7)
    assert "rejected (400): 1 validation error for Input" in log
    assert "[ERROR]" not in log and "Traceback" not in log


@pytest.mark.parametrize("damage, needle", [
    ("alter", "sha256"), ("truncate", "sha256"), ("no-manifest", "manifest.json: missing; the folder is not a finished export"),
    ("no-tokenizer", "tokenizer.json: tokenizer file missing"), ("garbled-manifest", "manifest.json: damaged, not valid JSON"),
])
def test_distill_serve_refuses_a_damaged_export_naming_the_file_and_the_fix(tiny_export, tmp_path, damage, needle):
    from typer.testing import CliRunner

    from distill.cli import app

    exp = tmp_path / "export"
    shutil.copytree(tiny_export, exp)
    model = exp / json.loads((exp / "manifest.json").read_text())["models"]["int8"]["file"]
    if damage == "alter":
        data = bytearray(model.read_bytes())
        data[len(data) // 2] ^= 0xFF
        model.write_bytes(bytes(data))
    elif damage == "truncate":
        model.write_bytes(model.read_bytes()[:1000])
    elif damage == "no-manifest":
        (exp / "manifest.json").unlink()
    elif damage == "no-tokenizer":
        (exp / "tokenizer.json").unlink()
    else:
        (exp / "manifest.json").write_text("{")
    res = CliRunner().invoke(app, ["serve", str(exp), "--port", "1"])
    msg = " ".join(res.output.split())
    assert res.exit_code == 2 and needle in msg and "distill export" in msg, res.output
    assert "Traceback" not in res.output


def test_both_onnxruntime_builds_installed_is_named(monkeypatch):
    """onnxruntime and onnxruntime-gpu ship the same module: with both installed the user is told which to keep."""
    from importlib import metadata

    import serve.runtime as rt

    monkeypatch.setattr(rt, "_ORT_CHECKED", False)
    monkeypatch.setattr(metadata, "version", lambda dist: "1.0")
    with pytest.warns(RuntimeWarning, match="both onnxruntime and onnxruntime-gpu are installed"):
        rt.import_ort()
