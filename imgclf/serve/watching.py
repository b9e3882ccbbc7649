"""``serve --log``: the hook on ``/v1/predict`` that hands each answer to the prediction log.

The route calls :func:`record_answers` after answering; it builds one
:class:`~imgclf.watch.records.Observation` per image (the answer, the
uploaded bytes, the pooled features of the same model call) and queues them,
which never blocks and never raises: the log's thread does the writing.
"""

from __future__ import annotations

import re
import time
import uuid
from typing import Any

import numpy as np
from fastapi import Request

from imgclf.serve.uploads import Upload
from imgclf.watch.records import TOP_K, Observation, decision_threshold

REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,64}")


def request_id(request: Request) -> str:
    """The client's ``X-Request-ID`` when it is a plain token, else a new one: the log row's ``request_id``."""
    given = request.headers.get("x-request-id", "")
    return given if REQUEST_ID.fullmatch(given) else uuid.uuid4().hex


def record_answers(log: Any, classifier: Any, uploads: list[Upload], answers: list[dict[str, Any]],
                   probabilities: np.ndarray, features: np.ndarray | None, identifier: str) -> None:
    """Queue one log row per answered image of a request (``answers`` as the route returns them); never raises."""
    try:
        observations = _observations(classifier, uploads, answers, probabilities, features, identifier)
    except Exception as error:  # whatever went wrong, the answer goes out: the rows are counted as failed
        log.lost(len(uploads), error)
        return
    log.record(observations)


def _observations(classifier: Any, uploads: list[Upload], answers: list[dict[str, Any]], probabilities: np.ndarray,
                  features: np.ndarray | None, identifier: str) -> list[Observation]:
    now, threshold = time.time(), decision_threshold(classifier)
    orders = classifier.ranking(probabilities)
    return [
        Observation(created_at=now, source="serve", request_id=identifier, name=answer["name"],
                    prediction=answer["prediction"], confidence=answer["confidence"],
                    top=[(classifier.classes[i], float(row[i])) for i in order[:TOP_K]], threshold=threshold,
                    unknown=False, level=len(answer.get("levels") or []) or None, image=upload.data,
                    features=None if features is None else features[index],
                    bundle=getattr(classifier, "directory", None))
        for index, (upload, answer, row, order) in enumerate(zip(uploads, answers, probabilities, orders))]


def watching_line(options: Any, classifier: Any) -> str:
    """What the server says at start about its log: where rows go, and whether they carry embeddings."""
    images = f", image copies in {options.images}" if options.images else ""
    embeddings = ("with embeddings" if getattr(classifier, "gives_features", False) else
                  f"without embeddings (the {classifier.runtime.name} runtime gives none; --runtime torch does)")
    return f"logging every prediction to {options.target}{images}, {embeddings}"
