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

Settings
--------
``DISTILL_*`` environment variables (export folder, model, threads, workers, batching, limits), read
once when the module is imported by :mod:`serve.settings`, which lists each with its default and range.
A bad value stops the server at start-up with a message naming the variable.

Modules: :mod:`serve.settings` (settings), :mod:`serve.schemas` (request/response schemas),
:mod:`serve.guard` (body limit and ``GET /metadata`` middleware), :mod:`serve.openapi` (the corrected
OpenAPI document), :mod:`serve.bentoml_patches` (BentoML internals, version-checked) and
:mod:`serve.runtime` (ONNX Runtime).
"""

from __future__ import annotations

import logging
import threading

import bentoml

from .bentoml_patches import SERVE_LOGGER, cap_batcher_wait, fixed_json_media_type, quiet_client_errors
from .guard import RequestGuard
from .runtime import TextClassifierRuntime, default_threads, parity_problem, resolve_export_dir
from .schemas import Prediction, texts_type
from .settings import load_settings

logger = logging.getLogger(SERVE_LOGGER)

#: this process's settings (``DISTILL_*`` environment variables, see :mod:`serve.settings`)
SETTINGS = load_settings()
Texts = texts_type(SETTINGS.max_texts, SETTINGS.max_text_chars)

if SETTINGS.batch_wait_ms is not None:
    cap_batcher_wait(SETTINGS.batch_wait_ms)
quiet_client_errors()


# --------------------------------------------------------------------------------------------
# Model loading
# --------------------------------------------------------------------------------------------
_INSTANCE: list["NewsClassifier"] = []  # the worker's loaded service (for GET /metadata)


def _metadata() -> dict | None:
    """The loaded service's ``/metadata`` answer, or None before it is loaded (``GET /metadata``)."""
    return _INSTANCE[0].describe() if _INSTANCE else None


# --------------------------------------------------------------------------------------------
# The service
# --------------------------------------------------------------------------------------------
@bentoml.service(
    name="news_classifier",
    workers=SETTINGS.workers,
    traffic={"timeout": SETTINGS.request_timeout_s},
    http={"host": "127.0.0.1", "port": 3000},
    logging={"access": {"enabled": SETTINGS.access_log}},
    metrics={"enabled": SETTINGS.metrics},
)
class NewsClassifier:
    """News topic classifier serving a distilled student exported to ONNX (INT8 by default).

    Loads the export named by ``DISTILL_EXPORT_DIR`` (default ``serve/model``) once per worker.
    See the module docstring for the endpoints, the limits and every setting.

    Raises (at start-up, the server then does not become ready):
        FileNotFoundError / ValueError: see :class:`TextClassifierRuntime`.
    """

    def __init__(self) -> None:
        cfg = SETTINGS
        export_dir = resolve_export_dir(cfg.export_dir)
        self.rt = TextClassifierRuntime(
            export_dir, model=cfg.model, threads=cfg.intra_op_threads or default_threads(cfg.workers),
            verify=cfg.verify_sha256, spinning=cfg.ort_spinning)
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

    @bentoml.api(route="/classify", batchable=True, max_batch_size=SETTINGS.max_batch_size,
                 max_latency_ms=SETTINGS.max_latency_ms)
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
            "workers": SETTINGS.workers,
            "access_log": SETTINGS.access_log,
            "metrics": SETTINGS.metrics,
            "limits": {"max_texts": SETTINGS.max_texts, "max_text_chars": SETTINGS.max_text_chars,
                       "max_body_bytes": SETTINGS.max_body_bytes},
            "batching": {"max_batch_size": SETTINGS.max_batch_size, "max_latency_ms": SETTINGS.max_latency_ms,
                         "batch_wait_ms": SETTINGS.batch_wait_ms},
            "stats": stats,
        }


fixed_json_media_type(NewsClassifier)
NewsClassifier.add_asgi_middleware(
    RequestGuard, max_bytes=SETTINGS.max_body_bytes, metadata=_metadata,
    limit_hint=f"at most {SETTINGS.max_texts} texts of at most {SETTINGS.max_text_chars} characters")
