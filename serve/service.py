"""BentoML 1.4 service for an exported student: ``POST /classify`` with adaptive batching.

Run it with ``distill serve RUN_DIR`` (binds 127.0.0.1:3000), or directly::

    DISTILL_EXPORT_DIR=runs/bbc/export python -m bentoml serve serve.service:NewsClassifier \\
        --host 127.0.0.1 --port 3000

or as a bento (the export is copied into ``serve/model/`` and packed with the code, see
``serve/bento.py`` and ``bentofile.yaml``)::

    python -m serve.bento runs/bbc            # copies runs/bbc/export -> serve/model, bentoml build
    bentoml serve news_classifier:latest      # serves serve/model inside the bento, 127.0.0.1:3000

Endpoints
---------
* ``POST /classify`` ``{"texts": ["...", ...]}`` -> a JSON list, one object per text, in order:
  ``label``, ``score`` (its probability), ``probabilities`` (every class), ``truncated`` (the text
  had more tokens than the model's ``max_length`` and only its first ``max_length`` tokens were
  classified), ``tokens`` (tokens fed to the model, special tokens included) and ``batch_size``
  (how many texts shared the model call that served this one; diagnostic, shows adaptive batching).
* ``POST /metadata`` (body ``{}``) and ``GET /metadata``: labels, model file and sha256, export id,
  the run's test metrics, the execution provider, the limits and batching counters.
* BentoML's own: ``GET /livez``, ``GET /readyz``, ``GET /metrics`` (Prometheus, incl. the
  ``bentoml_service_adaptive_batch_size`` histogram), ``GET /docs.json`` (OpenAPI; the input limits
  below appear there as ``minItems``/``maxItems``/``minLength``/``maxLength``).

Settings (environment variables, read when the module is imported; defaults in brackets)
-----------------------------------------------------------------------------------------
``DISTILL_EXPORT_DIR`` [``serve/model``]
    Export folder (``manifest.json``...) or a run folder containing ``export/``.
``DISTILL_MODEL`` [``int8``]
    ``int8`` | ``fp32`` | ``fp16`` (fp16 needs the CUDA execution provider).
``DISTILL_INTRA_OP_THREADS`` [CPU cores / workers]
    ONNX Runtime intra-op threads per worker.
``DISTILL_ORT_SPINNING`` [0]
    1 lets ONNX Runtime's intra-op threads spin-wait between ops (lowest latency on an idle,
    dedicated machine); 0 (default) makes them sleep, so they do not steal the cores that the
    event loop, the tokenizer and other workers need (measured on 2 loaded cores: a batch of 16
    took 75 ms with 2 spinning threads, 36 ms without).
``DISTILL_WORKERS`` [1]
    BentoML worker processes. Each loads its own session; keep workers x threads <= cores.
``DISTILL_MAX_BATCH_SIZE`` [32]
    Most texts per model call (adaptive batching merges concurrent requests up to this).
``DISTILL_MAX_LATENCY_MS`` [2000]
    BentoML's ``max_latency_ms``: NOT a wait time but the load-shedding deadline. A queued request
    whose expected latency (queue time + estimated batch time) exceeds it is answered 503.
``DISTILL_BATCH_WAIT_MS`` [0]
    Most time (ms) the batcher may hold a request waiting for others while the model is idle.
    0 = greedy batching: a request runs as soon as the model is free; batches form from requests
    that arrive while the model is busy (see :func:`cap_batcher_wait` for why this is capped).
    ``off`` = BentoML's uncapped learned wait (the old behaviour, for comparisons only).
``DISTILL_MAX_TEXTS`` [64] / ``DISTILL_MAX_TEXT_CHARS`` [10000]
    Most texts per request / characters per text (longer -> 400, not silently cut).
``DISTILL_MAX_BODY_BYTES`` [6 x MAX_TEXTS x MAX_TEXT_CHARS + 64 KiB]
    Largest request body; larger -> 413 before any parsing.
``DISTILL_REQUEST_TIMEOUT_S`` [30]
    BentoML traffic timeout per request (s).
``DISTILL_VERIFY_SHA256`` [1]
    Check the model file's sha256 against the manifest at start-up (refuse to start on mismatch).
"""

from __future__ import annotations

import json
import logging
import os
import re
import threading
from http import HTTPStatus
from typing import Annotated, Any

import bentoml
from pydantic import AfterValidator, BaseModel, Field, StringConstraints

from .bentoml_patches import cap_batcher_wait, quiet_client_errors
from .openapi import openapi_send
from .runtime import TextClassifierRuntime, default_threads, parity_problem, resolve_export_dir

logger = logging.getLogger("distill.serve")


def _env_num(name: str, default: float, lo: float, cast=int):
    raw = os.environ.get(name, "").strip()
    if not raw:
        return cast(default)
    try:
        val = cast(raw)
    except ValueError:
        raise ValueError(f"{name}={raw!r} is not a {cast.__name__}") from None
    if val < lo:
        raise ValueError(f"{name}={raw!r} must be >= {lo}")
    return val


MAX_TEXTS: int = _env_num("DISTILL_MAX_TEXTS", 64, 1)
MAX_TEXT_CHARS: int = _env_num("DISTILL_MAX_TEXT_CHARS", 10_000, 1)
MAX_BATCH_SIZE: int = _env_num("DISTILL_MAX_BATCH_SIZE", 32, 2)  # BentoML requires > 1
MAX_LATENCY_MS: int = _env_num("DISTILL_MAX_LATENCY_MS", 2000, 1)
# "off" keeps BentoML's own learned wait (the old behaviour; for comparisons only).
BATCH_WAIT_MS: float | None = (None if os.environ.get("DISTILL_BATCH_WAIT_MS", "").strip().lower() == "off"
                               else _env_num("DISTILL_BATCH_WAIT_MS", 0.0, 0.0, float))
# 6 bytes/char covers JSON "\uXXXX" escapes of every character, plus room for the envelope.
MAX_BODY_BYTES: int = _env_num("DISTILL_MAX_BODY_BYTES", 6 * MAX_TEXTS * MAX_TEXT_CHARS + 65536, 1024)
WORKERS: int = _env_num("DISTILL_WORKERS", 1, 1)
REQUEST_TIMEOUT_S: float = _env_num("DISTILL_REQUEST_TIMEOUT_S", 30.0, 0.1, float)


if BATCH_WAIT_MS is not None:
    cap_batcher_wait(BATCH_WAIT_MS)
quiet_client_errors()


# --------------------------------------------------------------------------------------------
# Request guard (body size, GET /metadata)
# --------------------------------------------------------------------------------------------
class RequestGuard:
    """ASGI middleware: rejects request bodies over ``max_bytes`` with 413 and answers ``GET /metadata``.

    * A ``Content-Length`` above ``max_bytes`` is answered 413 at once (the body is drained, up to
      ``drain_bytes``, so that the client reads the answer instead of a reset connection); the
      body is never parsed.
    * A chunked body is counted as it arrives; past ``max_bytes`` the endpoint gets a 413 error.
    * An invalid ``Content-Length`` gets 400; so does a ``multipart/*`` body without a boundary (it made
      BentoML's form parser fail with a 500).

    Args:
        app: the wrapped ASGI app.
        max_bytes: largest accepted body (bytes).
        drain_bytes: most bytes read and discarded from an oversized body before answering.
    """

    def __init__(self, app, max_bytes: int = MAX_BODY_BYTES, drain_bytes: int = 256 * 2**20):
        self.app = app
        self.max_bytes = int(max_bytes)
        self.drain_bytes = int(drain_bytes)

    async def __call__(self, scope, receive, send):
        if scope.get("type") != "http":
            return await self.app(scope, receive, send)
        method, path = scope.get("method"), scope.get("path", "").rstrip("/")
        if method == "GET" and path == "/docs.json":
            return await self.app(scope, receive, openapi_send(send))  # the spec says what we answer
        if path == "/metadata" and method not in ("GET", "POST"):
            return await _send_json(send, 405, {"error": "use GET or POST on /metadata"},
                                    [(b"allow", b"GET, POST")])
        if method == "GET" and path == "/metadata":
            inst = _INSTANCE[0] if _INSTANCE else None
            if inst is None:
                return await _send_json(send, 503, {"error": "model not loaded yet"})
            return await _send_json(send, 200, inst.describe())
        length = None
        for k, v in scope.get("headers", ()):
            if k == b"content-type" and v.lower().startswith(b"multipart/") and b"boundary=" not in v.lower():
                # starlette's form parser raises on it inside BentoML, which answered 500
                return await _send_json(send, 400, {
                    "error": "multipart body without a boundary; send JSON with Content-Type: application/json"})
            if k == b"content-length":
                try:
                    length = int(v)
                    if length < 0:
                        raise ValueError
                except ValueError:
                    return await _send_json(send, 400, {"error": "invalid Content-Length header"})
        if length is not None and length > self.max_bytes:
            if length <= self.drain_bytes:
                more = True
                while more:
                    msg = await receive()
                    if msg.get("type") != "http.request":
                        return
                    more = msg.get("more_body", False)
            return await _send_json(send, 413, {
                "error": f"request body of {length} bytes is over the limit of {self.max_bytes} bytes "
                         f"(at most {MAX_TEXTS} texts of at most {MAX_TEXT_CHARS} characters)"})
        seen = 0

        async def counting_receive():
            nonlocal seen
            msg = await receive()
            if msg.get("type") == "http.request":
                seen += len(msg.get("body", b""))
                if seen > self.max_bytes:
                    raise bentoml.exceptions.BentoMLException(
                        f"request body is over the limit of {self.max_bytes} bytes",
                        error_code=HTTPStatus.REQUEST_ENTITY_TOO_LARGE)
            return msg

        return await self.app(scope, counting_receive, send)


async def _send_json(send, status: int, obj: Any, headers: list | None = None) -> None:
    body = json.dumps(obj).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
                + list(headers or [])})
    await send({"type": "http.response.body", "body": body})


# --------------------------------------------------------------------------------------------
# I/O schemas
# --------------------------------------------------------------------------------------------
#: a character that is not white space in JSON Schema's (ECMA-262) sense: the OpenAPI document states the
#: rule with this pattern and the service enforces the same one (Python's str.strip() also strips
#: U+0085 and U+001C-U+001F, which a schema-driven client may send as a "non-blank" text)
NON_BLANK = "[^\t\n\v\f\r \u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000\ufeff]"


def _not_blank(text: str) -> str:
    if not re.search(NON_BLANK, text):
        raise ValueError("text is blank (whitespace only)")
    return text


Text = Annotated[
    str,
    StringConstraints(strict=True, min_length=1, max_length=MAX_TEXT_CHARS),
    AfterValidator(_not_blank),
    Field(json_schema_extra={"pattern": NON_BLANK}),  # the spec says what _not_blank enforces
]
Texts = Annotated[
    list[Text],
    Field(min_length=1, max_length=MAX_TEXTS,
          description=f"1 to {MAX_TEXTS} non-blank texts of at most {MAX_TEXT_CHARS} characters each. "
                      "Texts over the model's max_length tokens are truncated (see `truncated`)."),
]


class Prediction(BaseModel):
    """One text's prediction (probabilities are softmax outputs in [0, 1])."""

    label: str = Field(description="Most probable class.")
    score: float = Field(description="Probability of `label`.")
    probabilities: dict[str, float] = Field(description="Probability of every class, in label order.")
    truncated: bool = Field(description="True when the text had more than max_length tokens and was cut.")
    tokens: int = Field(description="Tokens fed to the model (special tokens included, <= max_length).")
    batch_size: int = Field(description="Texts in the model call that served this one (adaptive batching).")


# --------------------------------------------------------------------------------------------
# Model loading
# --------------------------------------------------------------------------------------------
_INSTANCE: list["NewsClassifier"] = []  # the worker's loaded service (for GET /metadata)


# --------------------------------------------------------------------------------------------
# The service
# --------------------------------------------------------------------------------------------
@bentoml.service(
    name="news_classifier",
    workers=WORKERS,
    traffic={"timeout": REQUEST_TIMEOUT_S},
    http={"host": "127.0.0.1", "port": 3000},
)
class NewsClassifier:
    """News topic classifier serving a distilled student exported to ONNX (INT8 by default).

    Loads the export named by ``DISTILL_EXPORT_DIR`` (default ``serve/model``) once per worker.
    See the module docstring for the endpoints, the limits and every setting.

    Raises (at start-up, the server then does not become ready):
        FileNotFoundError / ValueError: see :class:`TextClassifierRuntime`.
    """

    def __init__(self) -> None:
        export_dir = resolve_export_dir()
        self.rt = TextClassifierRuntime(
            export_dir,
            model=os.environ.get("DISTILL_MODEL", "int8").strip().lower() or "int8",
            threads=_env_num("DISTILL_INTRA_OP_THREADS", 0, 0) or default_threads(WORKERS),
            verify=os.environ.get("DISTILL_VERIFY_SHA256", "1").strip() not in ("0", "false", "no"),
            spinning=os.environ.get("DISTILL_ORT_SPINNING", "0").strip() in ("1", "true", "yes"),
        )
        self._lock = threading.Lock()
        self._stats = {"texts": 0, "model_calls": 0, "max_batch_size": 0,
                       "last_batch_size": 0, "truncated_texts": 0}
        # Warm up (first ORT run allocates its arenas): keeps that off the first request.
        self.rt.predict_proba(["warm up"] * 2)
        _INSTANCE[:] = [self]
        logger.info("loaded %s (%s) from %s on %s, %d intra-op threads", self.rt.model_kind,
                    self.rt.model_path.name, export_dir, self.rt.providers[0], self.rt.threads)
        problem = parity_problem(self.rt.manifest)
        if problem:  # `distill serve` refuses such an export unless --allow-failed-parity
            logger.warning("serving an export that MISSED its parity targets (%s): %s", export_dir, problem)

    @bentoml.api(route="/classify", batchable=True, max_batch_size=MAX_BATCH_SIZE,
                 max_latency_ms=MAX_LATENCY_MS)
    def classify(self, texts: Texts) -> list[Prediction]:
        """Classify news texts; returns one prediction per text, in order.

        Concurrent requests are merged by BentoML's adaptive batcher into one model call of at
        most ``DISTILL_MAX_BATCH_SIZE`` texts. Errors: 400 for an empty list, a blank or non-string
        text, more than ``DISTILL_MAX_TEXTS`` texts, a text over ``DISTILL_MAX_TEXT_CHARS``
        characters or malformed JSON; 413 for a body over ``DISTILL_MAX_BODY_BYTES``; 503 when the
        queue is too long to answer within ``DISTILL_MAX_LATENCY_MS``.
        """
        probs, truncated, ntok = self.rt.predict_proba(list(texts))
        n = len(texts)
        with self._lock:
            s = self._stats
            s["model_calls"] += 1
            s["texts"] += n
            s["last_batch_size"] = n
            s["max_batch_size"] = max(s["max_batch_size"], n)
            s["truncated_texts"] += sum(truncated)
        labels = self.rt.labels
        out = []
        for row, trunc, k in zip(probs, truncated, ntok):
            i = int(row.argmax())
            out.append(Prediction(label=labels[i], score=float(row[i]),
                                  probabilities={lab: float(v) for lab, v in zip(labels, row)},
                                  truncated=trunc, tokens=k, batch_size=n))
        return out

    @bentoml.api(route="/metadata")
    def metadata(self) -> dict:
        """Model and service facts: labels, model file/sha256/size, export id, the run's test
        metrics, execution provider, threads, limits and batching counters (this worker)."""
        return self.describe()

    def describe(self) -> dict:
        """The ``/metadata`` answer as a dict (plain method: safe to call from the event loop)."""
        m = self.rt.manifest
        with self._lock:
            stats = dict(self._stats)
        return {
            "labels": self.rt.labels,
            "model": self.rt.model_kind,
            "model_file": self.rt.model_info.get("file"),
            "model_sha256": self.rt.model_info.get("sha256"),
            "model_mb": self.rt.model_info.get("mb"),
            "export_id": m.get("export_id"),
            "source_run": m.get("source_run"),
            "student_sha256": m.get("student_sha256"),
            "format": m.get("format"),
            "max_length": self.rt.max_length,
            "test_metrics": m.get("test_metrics", {}),
            "parity": m.get("parity", {}),
            "providers": self.rt.providers,
            "intra_op_threads": self.rt.threads,
            "ort_spinning": self.rt.spinning,
            "workers": WORKERS,
            "limits": {"max_texts": MAX_TEXTS, "max_text_chars": MAX_TEXT_CHARS,
                       "max_body_bytes": MAX_BODY_BYTES},
            "batching": {"max_batch_size": MAX_BATCH_SIZE, "max_latency_ms": MAX_LATENCY_MS,
                         "batch_wait_ms": BATCH_WAIT_MS},
            "stats": stats,
        }


NewsClassifier.add_asgi_middleware(RequestGuard, max_bytes=MAX_BODY_BYTES)
