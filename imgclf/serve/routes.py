"""The server's routes as FastAPI routers, and the dependencies they share.

What the routes need (the model answering now, metrics, limits) is one
:class:`Served` record on ``app.state``; a route that uses the model holds
the one it started with to its answer (:func:`model_in_use`), so a reload
never switches models under a request. :func:`uploads_in_time` reads a
request's images within ``--timeout`` for every route that takes images.
"""

from __future__ import annotations

import asyncio
import io
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Annotated, Any

import numpy as np
from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response
from PIL import Image
from prometheus_client import CONTENT_TYPE_LATEST
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from imgclf.data.hierarchy import Hierarchy
from imgclf.deploy.classifier import PixelOutputs
from imgclf.errors import ImgclfError
from imgclf.serve.batcher import Overloaded
from imgclf.serve.loaded import LoadedModel
from imgclf.serve.metrics import ServerMetrics
from imgclf.serve.uploads import IMAGE_TYPES, ApiError, Limits, Upload, decode_uploads, read_uploads
from imgclf.serve.watching import record_answers, request_id
from imgclf.version import __version__

if TYPE_CHECKING:
    from imgclf.serve.reload import Reloader

MAX_TOP_K = 1000


@dataclass
class Served:
    """The model answering now and what serves it; ``app.state.served`` of the app that :func:`create_app` builds."""

    model: LoadedModel  # replaced in one assignment by a reload
    name: str
    limits: Limits
    metrics: ServerMetrics
    batching: dict[str, float]
    page: str
    reloader: Reloader | None = None  # follows a model folder's pointer; None when serving one bundle
    explain_lock: threading.Lock = field(default_factory=threading.Lock)  # one Grad-CAM at a time: it hooks a layer
    log: Any = None  # --log: the PredictionLog every answer goes to (imgclf.serve.watching)

    def build_model(self, classifier: Any, runtime: str, version: str | None) -> LoadedModel:
        """A version to serve, batched as this server batches (its batcher not started yet)."""
        return LoadedModel.build(classifier, runtime, version, self.batching, self.metrics.batch_size.observe,
                                 logged=self.log is not None)


@dataclass
class Received:
    """A request's images, and when the request began (the model's wait counts against the same --timeout)."""

    uploads: list[Upload]
    started: float


def served(request: Request) -> Served:
    return request.app.state.served


async def model_in_use(request: Request) -> AsyncIterator[LoadedModel]:
    """The model answering now, held until the request is answered: a reload meanwhile leaves it to finish."""
    model = served(request).model
    model.holders += 1
    try:
        yield model
    finally:
        model.holders -= 1


async def uploads_in_time(request: Request) -> Received:
    """The request's images, read within ``--timeout``: a client that sends slowly gets 408, not a held worker."""
    state, started = served(request), time.perf_counter()
    try:
        uploads = await asyncio.wait_for(read_uploads(request, state.limits), state.limits.timeout_s)
    except asyncio.TimeoutError:
        raise ApiError(408, f"the upload did not finish within {state.limits.timeout_s:g} s (--timeout)") from None
    return Received(uploads, started)


def explainable(request: Request) -> None:
    """Refuse /v1/explain before reading the upload when the model cannot be explained (an ONNX runtime)."""
    if not hasattr(served(request).model.classifier, "explain"):
        raise ApiError(501, "this server's model cannot be explained")


State = Annotated[Served, Depends(served)]
Model = Annotated[LoadedModel, Depends(model_in_use)]
Images = Annotated[Received, Depends(uploads_in_time)]


class ClassProbability(BaseModel):
    model_config = ConfigDict(populate_by_name=True)
    class_name: str = Field(alias="class")
    probability: float


class LevelProbability(BaseModel):
    depth: int = Field(description="1 = the top category.")
    label: str = Field(description="The path down to this level, e.g. 'animals/dog'.")
    probability: float = Field(description="The sum of its sub-categories' probabilities.")


class ImagePrediction(BaseModel):
    name: str = Field(description="The file name of the part, or 'body' for a raw body.")
    prediction: str = Field(description="The top class; for a multi-label model its chosen labels as 'a|b'.")
    confidence: float | None = Field(description="The top class's probability (null for a multi-label model).")
    top_k: list[ClassProbability]
    levels: list[LevelProbability] = Field(default_factory=list,
                                           description="A category model's path from the top down (else empty).")
    labels: list[str] | None = Field(None, description="A multi-label model's answer: every label at or above its "
                                                       "threshold, most probable first (absent otherwise).")


class PredictResponse(BaseModel):
    model: str
    model_version: str | None = Field(description="The content id of the version that answered (imgclf versions).")
    runtime: str
    predictions: list[ImagePrediction]


class ErrorBody(BaseModel):
    error: str
    status: int


ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorBody, "description": text}
    for code, text in ((400, "Empty, truncated or non-image data"), (401, "Missing or wrong API key (with --api-key)"), (408, "The upload did not finish in time"),
                       (413, "Too many bytes, pixels or files"), (415, "Not an image content type"),
                       (422, "Bad query parameter"), (503, "Busy: queue full or answer not ready in time"))
}
REQUEST_BODY = {"requestBody": {"required": True, "content": {
    "multipart/form-data": {"schema": {"type": "object", "properties": {
        "file": {"type": "array", "items": {"type": "string", "format": "binary"}}}}},
    **{kind: {"schema": {"type": "string", "format": "binary"}} for kind in IMAGE_TYPES},
}}}
EXPLAIN_RESPONSES: dict[int | str, dict[str, Any]] = {**ERROR_RESPONSES, 200: {
    "content": {"image/png": {}},
    "description": "The image at the model's input size with the Grad-CAM heat map of its top class overlaid."}}

api = APIRouter(prefix="/v1")  # the model: predict, explain, describe
operations = APIRouter()  # the page, health and metrics


@api.post("/predict", response_model=PredictResponse, responses=ERROR_RESPONSES, openapi_extra=REQUEST_BODY)
async def predict(state: State, model: Model, received: Images, request: Request, response: Response,
                  top_k: int = Query(5, ge=1, le=MAX_TOP_K, description="Classes per image.")) -> dict[str, Any]:
    """Classify one or more images sent as multipart files (any field name) or as a raw image body."""
    classifier, limits, batcher = model.classifier, state.limits, model.batcher
    pixels = await run_in_threadpool(decode_uploads, received.uploads, model.info, limits)
    try:
        remaining = max(0.001, limits.timeout_s - (time.perf_counter() - received.started))
        outputs = await asyncio.wait_for(batcher.submit(pixels), remaining)
    except Overloaded:
        raise ApiError(503, f"busy: {batcher.waiting} images are waiting (--max-queue "
                            f"{state.batching['max_queue']}); retry shortly") from None
    except asyncio.TimeoutError:
        raise ApiError(503, f"no answer within {limits.timeout_s:g} s (--timeout); the server is busy, retry") from None
    state.metrics.images.inc(len(pixels))
    probabilities = outputs.probabilities if isinstance(outputs, PixelOutputs) else outputs
    k = min(top_k, len(classifier.classes))
    ranking = classifier.ranking(probabilities)
    features = getattr(outputs, "features", None)
    model.live.observe(probabilities, ranking[:, 0], features)
    answers = [_ranked(upload.name, row, order[:k], classifier, model.hierarchy)
               for upload, row, order in zip(received.uploads, probabilities, ranking)]
    if state.log is not None:  # the log's hook: queues the rows, never waits or fails
        response.headers["X-Request-ID"] = identifier = request_id(request)
        record_answers(state.log, classifier, received.uploads, answers, probabilities, features, identifier)
    return {"model": state.name, "model_version": model.version, "runtime": model.runtime, "predictions": answers}


@api.post("/explain", response_class=Response, responses=EXPLAIN_RESPONSES, openapi_extra=REQUEST_BODY,
          dependencies=[Depends(explainable)])
async def explain(state: State, model: Model, received: Images) -> Response:
    """Grad-CAM of one image (multipart file or raw body): a PNG overlay of what the top class rests on."""
    if len(received.uploads) != 1:
        raise ApiError(400, f"send exactly one image to explain, got {len(received.uploads)}")
    pixels = await run_in_threadpool(decode_uploads, received.uploads, model.info, state.limits)
    try:
        png = await run_in_threadpool(_explain_png, state, model, pixels[0])
    except ImgclfError as error:
        raise ApiError(422, str(error)) from None
    return Response(png, media_type="image/png", headers={"X-Model-Version": model.version or ""})


def _explain_png(state: Served, model: LoadedModel, pixels: np.ndarray) -> bytes:
    """The Grad-CAM overlay of the top class as PNG bytes; runs in a worker thread."""
    from imgclf.deploy.explain import overlay

    with state.explain_lock:
        explanation = model.classifier.explain(pixels, top_k=1)
    buffer = io.BytesIO()
    Image.fromarray((overlay(explanation.pixels, explanation.map) * 255).astype(np.uint8)).save(buffer, "PNG")
    return buffer.getvalue()


@api.get("/model")
async def model(state: State, loaded: Model) -> dict[str, Any]:
    """The model's classes, input size, preprocessing, metrics and versions (its own, imgclf's), the server's limits."""
    info, limits = loaded.info, state.limits
    return {"name": state.name, "model_version": loaded.version, "architecture": info.architecture,
            "classes": loaded.classifier.classes,
            "multilabel": info.multilabel, "image_size": info.image_size, "channels": info.channels,
            "resize": info.resize, "mean": info.mean, "std": info.std, "tta": loaded.classifier.tta,
            "positive": info.positive, "thresholds": info.thresholds, "threshold_goal": info.threshold_goal,
            "metrics": info.metrics, "runtime": loaded.runtime, "version": __version__,
            "model_imgclf_version": info.imgclf_version,
            "limits": {"max_upload_bytes": limits.max_bytes, "max_pixels": limits.max_pixels,
                       "max_files": limits.max_files, "timeout_s": limits.timeout_s,
                       "content_types": list(IMAGE_TYPES)},
            "batching": state.batching}


@operations.get("/", response_class=HTMLResponse, include_in_schema=False)
async def index(state: State) -> str:
    return state.page


@operations.get("/healthz")
async def healthz(state: State) -> JSONResponse:
    """200 while the model worker runs; 503 otherwise. Names the version answering (its content id)."""
    model = state.model
    healthy = model.batcher.alive
    return JSONResponse({"status": "ok" if healthy else "model worker stopped", "model_version": model.version},
                        status_code=200 if healthy else 503)


@operations.get("/metrics", response_class=Response)
async def prometheus(state: State) -> Response:
    """Request counts, latency and batch-size histograms, queue depth (Prometheus text format)."""
    return Response(state.metrics.text(), media_type=CONTENT_TYPE_LATEST)


def _ranked(name: str, row: np.ndarray, order: np.ndarray, classifier: Any, hierarchy: Hierarchy | None
            ) -> dict[str, Any]:
    """One image's answer; ``order`` is the classifier's ranking (the decided class first, as predict's)."""
    top = [{"class": classifier.classes[i], "probability": float(row[i])} for i in order]
    if classifier.info.multilabel:  # the decision is the Classifier's, as for predict
        labels = classifier.chosen_labels(row)
        return {"name": name, "prediction": "|".join(labels), "confidence": None, "top_k": top, "labels": labels}
    levels = [asdict(level) for level in hierarchy.levels(row)] if hierarchy else []
    return {"name": name, "prediction": top[0]["class"], "confidence": top[0]["probability"], "top_k": top,
            "levels": levels}
