"""The FastAPI application: routes, error handling, request limits and metrics around a :class:`Classifier`.

Every refused request gets a JSON body ``{"error": "...", "status": N}``
with a 4xx status (503 when the server is busy), and nothing a client sends
can stop the server: bad bytes are caught at decoding, oversized bodies are
cut off while they stream in, and the model runs in its own thread.
"""

from __future__ import annotations

import asyncio
import io
import threading
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import asdict
from importlib.resources import files
from typing import Any

import numpy as np
from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from fastapi_offline import FastAPIOffline
from PIL import Image
from prometheus_client import CONTENT_TYPE_LATEST
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from imgclf.data.hierarchy import Hierarchy, label_tree
from imgclf.errors import ImgclfError
from imgclf.serve.auth import RequireApiKey
from imgclf.serve.batcher import DynamicBatcher, Overloaded
from imgclf.serve.metrics import ServerMetrics
from imgclf.serve.uploads import (
    DEFAULT_LIMITS,
    IMAGE_TYPES,
    ApiError,
    Limits,
    body_too_large,
    decode_uploads,
    read_uploads,
)
from imgclf.version import __version__

ROUTES = ("/", "/v1/predict", "/v1/explain", "/v1/model", "/healthz", "/metrics", "/docs", "/openapi.json")
MAX_TOP_K = 1000


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


class LimitAndMeasure:
    """Pure ASGI middleware: cuts off bodies over the byte limit as they stream in, and records metrics."""

    def __init__(self, app: ASGIApp, limits: Limits, metrics: ServerMetrics) -> None:
        self.app = app
        self.limits = limits
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started, received, status = time.perf_counter(), 0, 500

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.limits.max_bytes:
                raise body_too_large(self.limits)
            return message

        async def record_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, limited_receive, record_status)
        finally:
            route = scope["path"] if scope["path"] in ROUTES else "other"
            self.metrics.observe(route, status, time.perf_counter() - started)


def create_app(classifier: Any, name: str, runtime: str, limits: Limits = DEFAULT_LIMITS, *, max_batch: int = 32,
               max_wait_ms: float = 2.0, max_queue: int = 256, api_key: str | None = None) -> FastAPI:
    """The server for one loaded classifier (anything with ``info``, ``classes``, ``predict_pixels`` and ``ranking``).

    With ``api_key``, the API and metrics answer 401 to requests without it (:mod:`imgclf.serve.auth`).
    """
    info = classifier.info
    hierarchy = None if info.multilabel else label_tree(classifier.classes)  # path labels: answers carry the path
    metrics = ServerMetrics()
    batcher = DynamicBatcher(classifier.predict_pixels, max_batch=max_batch, max_wait_s=max_wait_ms / 1000,
                             max_queue=max_queue, on_batch=metrics.batch_size.observe)
    metrics.queue.set_function(lambda: batcher.waiting)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        batcher.start()
        yield
        await batcher.stop()

    app = FastAPIOffline(title=f"imgclf: {name}", version=__version__, lifespan=lifespan,
                         description=f"Classifies images into {len(classifier.classes)} classes with {info.architecture}.")
    if api_key:
        app.add_middleware(RequireApiKey, api_key=api_key)  # type: ignore[arg-type]
    app.add_middleware(LimitAndMeasure, limits=limits, metrics=metrics)  # type: ignore[arg-type]  (outermost: counts 401s)
    _add_error_handlers(app)
    page = files("imgclf.serve").joinpath("static/index.html").read_text(encoding="utf-8")

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def index() -> str:
        return page

    @app.post("/v1/predict", response_model=PredictResponse, responses=ERROR_RESPONSES, openapi_extra=REQUEST_BODY)
    async def predict(request: Request, top_k: int = Query(5, ge=1, le=MAX_TOP_K, description="Classes per image.")
                      ) -> dict[str, Any]:
        """Classify one or more images sent as multipart files (any field name) or as a raw image body."""
        started = time.perf_counter()
        try:
            uploads = await asyncio.wait_for(read_uploads(request, limits), limits.timeout_s)
        except asyncio.TimeoutError:
            raise ApiError(408, f"the upload did not finish within {limits.timeout_s:g} s (--timeout)") from None
        pixels = await run_in_threadpool(decode_uploads, uploads, info, limits)
        try:
            remaining = max(0.001, limits.timeout_s - (time.perf_counter() - started))
            probabilities = await asyncio.wait_for(batcher.submit(pixels), remaining)
        except Overloaded:
            raise ApiError(503, f"busy: {batcher.waiting} images are waiting (--max-queue {max_queue}); retry shortly") from None
        except asyncio.TimeoutError:
            raise ApiError(503, f"no answer within {limits.timeout_s:g} s (--timeout); the server is busy, retry") from None
        metrics.images.inc(len(pixels))
        k = min(top_k, len(classifier.classes))
        return {"model": name, "runtime": runtime,
                "predictions": [_ranked(upload.name, row, order[:k], classifier, hierarchy)
                                for upload, row, order in zip(uploads, probabilities,
                                                              classifier.ranking(probabilities))]}

    explain_lock = threading.Lock()  # one Grad-CAM at a time: it hooks the model's layer while it runs

    def explain_png(pixels: np.ndarray) -> bytes:
        from imgclf.deploy.explain import overlay

        with explain_lock:
            explanation = classifier.explain(pixels, top_k=1)
        buffer = io.BytesIO()
        Image.fromarray((overlay(explanation.pixels, explanation.map) * 255).astype(np.uint8)).save(buffer, "PNG")
        return buffer.getvalue()

    @app.post("/v1/explain", response_class=Response, responses={**ERROR_RESPONSES, 200: {
        "content": {"image/png": {}}, "description": "The image at the model's input size with the Grad-CAM heat "
                                                     "map of its top class overlaid."}}, openapi_extra=REQUEST_BODY)
    async def explain(request: Request) -> Response:
        """Grad-CAM of one image (multipart file or raw body): a PNG overlay of what the top class rests on."""
        if not hasattr(classifier, "explain"):
            raise ApiError(501, "this server's model cannot be explained")
        try:
            uploads = await asyncio.wait_for(read_uploads(request, limits), limits.timeout_s)
        except asyncio.TimeoutError:
            raise ApiError(408, f"the upload did not finish within {limits.timeout_s:g} s (--timeout)") from None
        if len(uploads) != 1:
            raise ApiError(400, f"send exactly one image to explain, got {len(uploads)}")
        pixels = await run_in_threadpool(decode_uploads, uploads, info, limits)
        try:
            png = await run_in_threadpool(explain_png, pixels[0])
        except ImgclfError as error:
            raise ApiError(422, str(error)) from None
        return Response(png, media_type="image/png")

    @app.get("/v1/model")
    async def model() -> dict[str, Any]:
        """The model's classes, input size, preprocessing, metrics and version, and the server's limits."""
        return {"name": name, "architecture": info.architecture, "classes": classifier.classes,
                "multilabel": info.multilabel, "image_size": info.image_size, "channels": info.channels,
                "resize": info.resize, "mean": info.mean, "std": info.std, "tta": classifier.tta,
                "positive": info.positive, "thresholds": info.thresholds, "threshold_goal": info.threshold_goal,
                "metrics": info.metrics, "runtime": runtime, "version": __version__,
                "model_imgclf_version": info.imgclf_version,
                "limits": {"max_upload_bytes": limits.max_bytes, "max_pixels": limits.max_pixels,
                           "max_files": limits.max_files, "timeout_s": limits.timeout_s,
                           "content_types": list(IMAGE_TYPES)},
                "batching": {"max_batch": max_batch, "max_wait_ms": max_wait_ms, "max_queue": max_queue}}

    @app.get("/healthz")
    async def healthz() -> JSONResponse:
        """200 while the model worker runs; 503 otherwise."""
        healthy = batcher.alive
        return JSONResponse({"status": "ok" if healthy else "model worker stopped"}, status_code=200 if healthy else 503)

    @app.get("/metrics", response_class=Response)
    async def prometheus() -> Response:
        """Request counts, latency and batch-size histograms, queue depth (Prometheus text format)."""
        return Response(metrics.text(), media_type=CONTENT_TYPE_LATEST)

    return app


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


def _add_error_handlers(app: FastAPI) -> None:
    """One JSON error shape for every refusal: ours, FastAPI's validation, Starlette's 404/405/400."""

    def error(status: int, message: str) -> JSONResponse:
        return JSONResponse({"error": message, "status": status}, status_code=status)

    @app.exception_handler(ApiError)
    async def api_error(_: Request, exc: ApiError) -> JSONResponse:
        return error(exc.status, exc.message)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        return error(exc.status_code, str(exc.detail))

    @app.exception_handler(RequestValidationError)
    async def validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        problems = "; ".join(f"{'.'.join(str(part) for part in item['loc'][1:])}: {item['msg']}" for item in exc.errors())
        return error(422, problems)
