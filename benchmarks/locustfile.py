"""Locust user for the soak test (:mod:`benchmarks.soak`): each user posts one news text per request to
``POST /classify``, back to back (closed loop, no think time).

Environment (set by ``benchmarks/soak.py``):
    SOAK_TEXTS: a JSON file with a list of texts; each request sends one, chosen at random.
    SOAK_RECORD: a JSON file written when the test stops: every request's latency (ms), status code
        and the ``batch_size`` of the model call that served it (adaptive batching).

A response is a failure unless it is a 200 with one prediction; a 5xx is counted as such.
"""

from __future__ import annotations

import json
import os
import random

from locust import FastHttpUser, events, task

TEXTS: list[str] = json.loads(open(os.environ["SOAK_TEXTS"], encoding="utf-8").read())
RECORD: dict[str, list] = {"ms": [], "status": [], "batch_size": []}


class NewsClient(FastHttpUser):
    """One client of the news classifier: one text per request, no wait between requests."""

    @task
    def classify(self) -> None:
        with self.client.post("/classify", json={"texts": [random.choice(TEXTS)]}, catch_response=True) as r:
            RECORD["status"].append(r.status_code)
            if r.status_code != 200:
                r.failure(f"status {r.status_code}")
                return
            try:
                body = r.json()
                RECORD["batch_size"].append(int(body[0]["batch_size"]))
            except (ValueError, KeyError, IndexError, TypeError):
                r.failure("200 without one prediction")


@events.request.add_listener
def _latency(request_type, name, response_time, response_length, exception, **kw) -> None:
    RECORD["ms"].append(float(response_time))


@events.quitting.add_listener
def _dump(environment, **kw) -> None:
    path = os.environ.get("SOAK_RECORD")
    if path:
        tmp = path + ".tmp"
        with open(tmp, "w", encoding="utf-8") as fh:
            json.dump(RECORD, fh)
        os.replace(tmp, path)
