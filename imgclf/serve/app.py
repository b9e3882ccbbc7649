"""The FastAPI application: routes, error handling, request limits and metrics around a :class:`Classifier`.

Every refused request gets a JSON body ``{"error": "...", "status": N}``
with a 4xx status (503 when the server is busy), and nothing a client sends
can stop the server: bad bytes are caught at decoding, oversized bodies are
cut off while they stream in, and the model runs in its own thread.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib.resources import files
from typing import TYPE_CHECKING, Any

from fastapi import APIRouter, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi_offline import FastAPIOffline
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from imgclf.errors import ImgclfError
from imgclf.serve import reload, routes
from imgclf.serve.auth import RequireApiKey
from imgclf.serve.loaded import LoadedModel
from imgclf.serve.metrics import ServerMetrics
from imgclf.serve.uploads import DEFAULT_LIMITS, ApiError, Limits, body_too_large
from imgclf.version import __version__
from imgclf.watch.live import GAUGES

if TYPE_CHECKING:  # SQLAlchemy loads only when a server logs
    from imgclf.watch.log import LogOptions, PredictionLog

ROUTES = ("/", "/v1/predict", "/v1/explain", "/v1/model", "/v1/reload", "/healthz", "/metrics", "/docs", "/openapi.json")


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
               max_wait_ms: float = 2.0, max_queue: int = 256, api_key: str | None = None, version: str | None = None,
               reloader: reload.Reloader | None = None, log: LogOptions | None = None,
               reference: Any = "bundle") -> FastAPI:
    """The server for one loaded classifier (anything with ``info``, ``classes``, ``predict_pixels`` and ``ranking``).

    The routes are :mod:`imgclf.serve.routes`' routers; what they share is one
    :class:`~imgclf.serve.routes.Served` on ``app.state``. With ``api_key``, the
    API and metrics answer 401 to requests without it (:mod:`imgclf.serve.auth`).
    ``version`` (the bundle's content id) is named in the answers; with a
    ``reloader`` the server follows a model folder's current version. With
    ``log``, every answer is recorded (:mod:`imgclf.serve.watching`), with the
    pooled features of the same model call (``reference``: see
    :class:`~imgclf.watch.log.PredictionLog`), and the doubtful ones wait on the
    review page at ``/review`` (:mod:`imgclf.review.queue_source`).
    """
    metrics = ServerMetrics()
    prediction_log = _prediction_log(classifier, log, metrics, reference) if log else None
    batching = {"max_batch": max_batch, "max_wait_ms": max_wait_ms, "max_queue": max_queue}
    served = routes.Served(
        LoadedModel.build(classifier, runtime, version, batching, metrics.batch_size.observe, log is not None),
        name, limits, metrics, batching,
        page=files("imgclf.serve").joinpath("static/index.html").read_text(encoding="utf-8"), reloader=reloader,
        log=prediction_log)
    metrics.queue.set_function(lambda: served.model.batcher.waiting)
    metrics.watch(lambda: served.model.live.figures(), GAUGES)  # the version answering now

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        served.model.start()
        watching = asyncio.get_running_loop().create_task(reloader.watch(served)) if reloader else None
        yield
        if watching is not None:
            watching.cancel()
        if reloader is not None:
            await reloader.stop()  # the old versions still draining
        await served.model.stop()
        if prediction_log is not None:
            prediction_log.close()

    app = FastAPIOffline(title=f"imgclf: {name}", version=__version__, lifespan=lifespan,
                         description=f"Classifies images into {len(classifier.classes)} classes with "
                                     f"{classifier.info.architecture}.")
    app.state.served = served
    if api_key:
        app.add_middleware(RequireApiKey, api_key=api_key)
    app.add_middleware(LimitAndMeasure, limits=limits, metrics=metrics)  # outermost: counts 401s
    add_error_handlers(app)
    app.include_router(routes.api)
    app.include_router(reload.router)
    app.include_router(routes.operations)
    if log is not None:
        app.include_router(_review_queue(served, log))
    return app


def _review_queue(served: routes.Served, options: LogOptions) -> APIRouter:
    """The review page of the log's queue at ``/review``, its API under ``/v1/queue`` (behind the API key); its
    classes are the version answering now."""
    from imgclf.review.component import review_router
    from imgclf.review.queue_source import QueueReview, default_labels

    source = QueueReview(options.target, lambda: served.model.classifier.classes, default_labels(options.target))
    return review_router(source, page="/review", api="/v1/queue")


def _prediction_log(classifier: Any, options: LogOptions, metrics: ServerMetrics, reference: Any) -> PredictionLog:
    """The log of this server's answers, its rows counted on /metrics (each outcome shown from 0)."""
    from imgclf.watch.log import PredictionLog

    for outcome in ("written", "dropped", "failed"):
        metrics.log_rows.labels(outcome)
    if classifier.directory is None:
        raise ImgclfError("--log needs a model loaded from a bundle folder (its version names the rows)")
    log = PredictionLog(options, classifier.directory, classifier.info, count=metrics.count_log_rows,
                        reference=reference)
    metrics.log_queue.set_function(lambda: log.writer.waiting)
    return log


def add_error_handlers(app: FastAPI) -> None:
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
