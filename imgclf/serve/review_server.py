"""The review page component (:mod:`imgclf.review`) as a served application: the API key, errors, uvicorn.

``imgclf review DATA`` runs :func:`serve_data_review`; a model server with
``--log`` includes the same component for its prediction queue
(:func:`imgclf.serve.app.create_app`).
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi_offline import FastAPIOffline

from imgclf.review.component import review_router
from imgclf.review.items import ReviewSource
from imgclf.serve.app import add_error_handlers
from imgclf.serve.auth import RequireApiKey, check_api_key
from imgclf.serve.server import check_port, run_app
from imgclf.version import __version__


def create_review_source_app(source: ReviewSource, api_key: str | None = None) -> FastAPI:
    """The page at ``/`` and its API under ``/v1/review``, behind ``api_key`` when one is given."""
    app = FastAPIOffline(title=f"imgclf: {source.title.lower()}", version=__version__,
                         description="See what is doubtful about images and decide each in one click.")
    if api_key:
        app.add_middleware(RequireApiKey, api_key=api_key)
    add_error_handlers(app)
    app.include_router(review_router(source, page="/", api="/v1/review"))
    return app


def serve_data_review(data: str | Path, *, host: str = "127.0.0.1", port: int = 8000, api_key: str | None = None,
                      **review: object) -> None:
    """Serve the review page for ``data`` (see :func:`imgclf.review.data_source.open_data_review` for ``review``)."""
    from imgclf.review.data_source import open_data_review

    check_api_key(api_key)
    check_port(port)
    source = open_data_review(data, **review)  # type: ignore[arg-type]  # review: open_data_review's own options
    who = ("callers need the API key; use TLS (a reverse proxy) so it is not sent in clear text" if api_key else
           f"anyone who can reach this machine can see the images and decide them (no --api-key; decisions go to "
           f"{source.where}); put it behind a proxy that checks who calls")
    run_app(create_review_source_app(source, api_key), host, port,
            f"the review of {source.counts().items:,} images of {data} (decisions to {source.where})", who)
