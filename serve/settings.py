"""The service's settings: ``DISTILL_*`` environment variables read once with pydantic-settings.

Every setting, its default and its range (defaults in brackets):

``DISTILL_EXPORT_DIR`` [``serve/model``]
    Export folder (``manifest.json``...) or a run folder containing ``export/``.
``DISTILL_MODEL`` [``int8``]
    ``int8`` | ``fp32`` | ``fp16`` (fp16 needs the CUDA execution provider).
``DISTILL_INTRA_OP_THREADS`` [0 = CPU cores / workers]
    ONNX Runtime intra-op threads per worker.
``DISTILL_ORT_SPINNING`` [0]
    1 lets ONNX Runtime's intra-op threads spin-wait between ops (lowest latency on an idle,
    dedicated machine); 0 makes them sleep, so they do not steal the cores that the event loop, the
    tokenizer and other workers need (measured on 2 loaded cores: a batch of 16 took 75 ms with 2
    spinning threads, 36 ms without).
``DISTILL_WORKERS`` [0 = auto: min(CPU cores, 4); 1 for ``fp16``]
    BentoML worker processes. Each loads its own session; keep workers x threads <= cores. Several
    workers with one thread each beat one worker with all the threads for a small model under
    concurrent load: the event loop, JSON and tokenization of one worker run while the other's model
    call runs (measured on 2 cores, BBC student, 16 clients: 246.7 req/s with 2 x 1 against 188.7 req/s
    with 1 x 2; p99 114 ms against 296 ms; see the README's soak figures).
``DISTILL_MAX_BATCH_SIZE`` [32, >= 2]
    Most texts per model call (adaptive batching merges concurrent requests up to this).
``DISTILL_MAX_LATENCY_MS`` [2000]
    BentoML's ``max_latency_ms``: NOT a wait time but the load-shedding deadline. A queued request
    whose expected latency (queue time + estimated batch time) exceeds it is answered 503.
``DISTILL_BATCH_WAIT_MS`` [0]
    Most time (ms) the batcher may hold a request waiting for others while the model is idle.
    0 = greedy batching (see :func:`serve.bentoml_patches.cap_batcher_wait`); ``off`` = BentoML's
    uncapped learned wait (the old behaviour, for comparisons only).
``DISTILL_MAX_TEXTS`` [64] / ``DISTILL_MAX_TEXT_CHARS`` [10000]
    Most texts per request / characters per text (more -> 400, never silently cut).
``DISTILL_MAX_BODY_BYTES`` [6 x MAX_TEXTS x MAX_TEXT_CHARS + 64 KiB, >= 1024]
    Largest request body (bytes); larger -> 413 before any parsing. 6 bytes per character covers
    JSON ``\\uXXXX`` escapes of every character, plus room for the envelope.
``DISTILL_REQUEST_TIMEOUT_S`` [30]
    BentoML traffic timeout per request (s).
``DISTILL_VERIFY_SHA256`` [1]
    Check the model file's sha256 against the manifest at start-up (refuse to start on mismatch).
``DISTILL_ACCESS_LOG`` [1]
    BentoML's access log (one INFO line per request). 0 turns it off: under sustained load the line
    costs CPU on the worker that also runs the model (see the soak figures in the README).
``DISTILL_METRICS`` [1]
    BentoML's Prometheus metrics (``GET /metrics``, request and adaptive-batch histograms). 0 turns
    them off (``/metrics`` then answers 404) and saves their per-request bookkeeping.

Booleans accept 1/0, true/false, yes/no, on/off. This module is packed into the bento: it needs only
pydantic and pydantic-settings.
"""

from __future__ import annotations

import os
from typing import Literal

from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

PREFIX = "DISTILL_"


class ServeSettings(BaseSettings):
    """The service's settings (see the module docstring); one instance per worker, read at import.

    Raises:
        pydantic.ValidationError: a value out of range or of the wrong type (use :func:`load_settings`
            for a one-line message naming the variable and its range).
    """

    model_config = SettingsConfigDict(env_prefix=PREFIX, case_sensitive=False, extra="ignore",
                                      str_strip_whitespace=True)

    export_dir: str | None = Field(None, description="export folder or run folder (None: serve/model)")
    model: Literal["int8", "fp32", "fp16"] = "int8"
    intra_op_threads: int = Field(0, ge=0, description="0 = CPU cores / workers")
    ort_spinning: bool = False
    workers: int = Field(0, ge=0, description="0 = auto: min(CPU cores, 4), 1 for fp16 (one GPU)")
    max_batch_size: int = Field(32, ge=2, description="BentoML requires > 1")
    max_latency_ms: int = Field(2000, ge=1)
    batch_wait_ms: float | None = Field(0.0, ge=0.0, description="None (env 'off') = BentoML's own wait")
    max_texts: int = Field(64, ge=1)
    max_text_chars: int = Field(10_000, ge=1)
    max_body_bytes: int | None = Field(None, ge=1024, description="None = 6 x max_texts x max_text_chars + 64 KiB")
    request_timeout_s: float = Field(30.0, ge=0.1)
    verify_sha256: bool = True
    access_log: bool = True
    metrics: bool = True

    @field_validator("export_dir", "max_body_bytes", mode="before")
    @classmethod
    def _empty_is_default(cls, v):
        return None if isinstance(v, str) and not v.strip() else v

    @field_validator("model", mode="before")
    @classmethod
    def _model_lower(cls, v):
        return (v.strip().lower() or "int8") if isinstance(v, str) else v

    @field_validator("batch_wait_ms", mode="before")
    @classmethod
    def _wait_off(cls, v):
        if isinstance(v, str):
            v = v.strip().lower()
            if v == "off":
                return None
            return v or 0.0
        return v

    @model_validator(mode="after")
    def _defaults(self) -> "ServeSettings":
        if self.max_body_bytes is None:
            self.max_body_bytes = 6 * self.max_texts * self.max_text_chars + 65536
        if self.workers == 0:
            self.workers = 1 if self.model == "fp16" else min(usable_cores(), 4)
        return self


def usable_cores() -> int:
    """CPU cores this process may run on (its affinity mask; ``os.cpu_count()`` where there is none)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover (macOS, Windows)
        return os.cpu_count() or 1


def load_settings() -> ServeSettings:
    """The settings from the environment.

    Raises:
        ValueError: one line per bad variable, naming it, the value given and what is allowed, e.g.
            ``DISTILL_MAX_BATCH_SIZE='1': Input should be greater than or equal to 2``.
    """
    try:
        return ServeSettings()
    except ValidationError as e:
        lines = []
        for err in e.errors():
            name = PREFIX + str(err["loc"][0]).upper() if err.get("loc") else "DISTILL_*"
            lines.append(f"{name}={os.environ.get(name, '')!r}: {err['msg']}")
        raise ValueError("bad service settings (environment variables):\n  " + "\n  ".join(lines)) from None
