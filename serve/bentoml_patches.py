"""Changes to BentoML 1.4 internals, each behind a version check (:data:`TESTED_BENTOML`) and a check of
what it patches (a test fails loudly when a BentoML release moves them, see
``tests/test_serve.py::test_bentoml_internals_we_patch_exist``); on another BentoML the patch is skipped
with a warning, and the service runs unpatched:

* :func:`cap_batcher_wait`: caps the adaptive batcher's learned hold time (``marshal.dispatcher.Optimizer``);
* :func:`fixed_json_media_type`: states the media type of JSON outputs once, so that BentoML does not
  rebuild the output's JSON schema for every response;
* :func:`quiet_client_errors`: a rejected request (4xx) is one INFO line instead of an ERROR with a
  traceback (a filter on ``bentoml._internal.server.http_app``'s logger, which ``log_exception`` uses).
"""

from __future__ import annotations

import functools
import logging

#: the serve package's logger: a child of BentoML's ``bentoml`` logger, the only one whose INFO lines a
#: BentoML server writes (its logging config sets the root logger to WARNING)
SERVE_LOGGER = "bentoml.distill.serve"
logger = logging.getLogger(SERVE_LOGGER)

#: the BentoML releases (major, minor) whose internals these patches were written and tested against
TESTED_BENTOML = (1, 4)


def bentoml_version() -> tuple[int, int]:
    """The installed BentoML's (major, minor) version."""
    import bentoml

    major, minor = (bentoml.__version__.split(".") + ["0"])[:2]
    return int(major), int("".join(ch for ch in minor if ch.isdigit()) or 0)


def _internal(module: str, name: str, attr: str, consequence: str):
    """``module.name`` of BentoML's internals when BentoML is the tested release and the object has
    ``attr``, else None (a warning says ``consequence``)."""
    import importlib

    if bentoml_version() != TESTED_BENTOML:
        logger.warning("bentoml %s.%s is not the tested %s.%s; %s", *bentoml_version(), *TESTED_BENTOML,
                       consequence)
        return None
    try:  # a submodule (http_app) or a class of the module (Optimizer)
        obj = importlib.import_module(f"{module}.{name}")
    except ImportError:
        try:
            obj = getattr(importlib.import_module(module), name)
        except (ImportError, AttributeError):
            obj = None
    if obj is None or not hasattr(obj, attr):
        logger.warning("bentoml has no %s.%s.%s; %s", module, name, attr, consequence)
        return None
    return obj


#: the BentoML logger that writes "Exception on /route [POST]" with a traceback for every failed request
HTTP_APP_LOGGER = "bentoml._internal.server.http_app"


def cap_batcher_wait(max_wait_ms: float) -> bool:
    """Cap the hold time that BentoML's adaptive batcher learns, at ``max_wait_ms`` (ms).

    Cause of the "slow after a burst" problem: BentoML 1.4's ``CorkDispatcher`` holds an incoming
    request while ``n * (age_of_newest + 1 ms + o_a) <= 0.95 * optimizer.wait``, where
    ``optimizer.wait`` is the *mean queueing time of the last 50 batches* (refreshed at most every
    5 s). During a burst the queueing time is the time spent behind the busy model (tens of ms), so
    ``wait`` grows to that; afterwards every lone request is held ~0.95 x ``wait`` before it runs,
    and that hold is itself logged as its queueing time, so ``wait`` feeds itself and decays only
    ~5 % per refresh: single requests stayed at 30-44 ms instead of ~7 ms for minutes (measured
    again with ``benchmarks/serve_latency.py``: single p50 12.6 ms before a 16-client burst, 68 ms
    after; with the cap 11.3 ms before, 5.8 ms after, on 2 busy CPU cores).
    ``max_latency_ms`` does not bound this hold (it only sheds requests with 503).

    The fix clamps ``optimizer.wait`` after every refresh. With 0 (the default) the batcher is
    greedy: an idle model takes a request at once, and concurrent requests that queue while the
    model is busy are merged into the next call (up to ``max_batch_size``), which is where CPU
    batching pays off anyway.

    Returns:
        True when the patch is in place, False when this BentoML has no such optimizer (logged).
    """
    Optimizer = _internal("bentoml._internal.marshal.dispatcher", "Optimizer", "trigger_refresh",
                          "batcher wait not capped")
    if Optimizer is None:  # pragma: no cover - other BentoML versions
        return False
    original = getattr(Optimizer.trigger_refresh, "__distill_original__", Optimizer.trigger_refresh)
    cap_s = max(0.0, float(max_wait_ms)) / 1000.0

    @functools.wraps(original)
    def trigger_refresh(self) -> None:
        original(self)
        self.wait = min(float(getattr(self, "wait", 0.0)), cap_s)

    trigger_refresh.__distill_original__ = original  # type: ignore[attr-defined]
    Optimizer.trigger_refresh = trigger_refresh
    return True


def fixed_json_media_type(service) -> list[str]:
    """Set ``media_type = "application/json"`` on the output descriptor of every API of ``service`` whose
    output is JSON (``mime_type()`` says so) and states no media type.

    Cause: BentoML 1.4's ``IOMixin.to_http_response`` calls ``mime_type()`` for every response, and for a
    root-model output (``list[Prediction]``, ``dict``) that builds the output's whole JSON schema with
    pydantic each time. Profiled with py-spy under 16 locust users on the AG News TextCNN export, this
    was 25% of the worker's samples. With the media type stated, ``mime_type()`` returns it at once (the
    same attribute BentoML sets itself for streaming outputs); the answers are unchanged.

    Returns:
        The names of the APIs changed.
    """
    changed = []
    for name, api in getattr(service, "apis", {}).items():
        spec = getattr(api, "output_spec", None)
        if spec is not None and spec.media_type is None and spec.mime_type() == "application/json":
            spec.media_type = "application/json"
            changed.append(name)
    return changed


class ClientErrorLogFilter(logging.Filter):
    """Turn BentoML's "Exception on /classify [POST]" ERROR with a traceback into one INFO line when the
    exception is the client's fault (a pydantic validation error, or a BentoML error with a 4xx code):
    a rejected request is not a server error, and 25 lines per bad request drown real ones.
    Exceptions of the service itself (5xx) keep their ERROR and traceback."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if exc is None:
            return True
        from pydantic import ValidationError

        code = getattr(getattr(exc, "error_code", None), "value", None)
        if isinstance(exc, ValidationError) or (isinstance(code, int) and 400 <= code < 500):
            first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            record.msg = f"{record.getMessage()}: rejected ({code or 400}): {first}"
            record.args, record.exc_info, record.exc_text = (), None, None
            record.levelno, record.levelname = logging.INFO, "INFO"
        return True


def quiet_client_errors() -> bool:
    """Install :class:`ClientErrorLogFilter` on BentoML's HTTP app logger (once).

    Returns:
        True when BentoML still logs through that logger (``http_app.log_exception`` exists), else False (logged).
    """
    if _internal("bentoml._internal.server", "http_app", "log_exception",
                 "4xx requests keep their tracebacks in the log") is None:  # pragma: no cover
        return False
    lg = logging.getLogger(HTTP_APP_LOGGER)
    if not any(isinstance(f, ClientErrorLogFilter) for f in lg.filters):
        lg.addFilter(ClientErrorLogFilter())
    return True
