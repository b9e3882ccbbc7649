"""Run the API with uvicorn: load the model once, bind (loopback unless told otherwise), serve until Ctrl-C."""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from imgclf.deploy.bundle import find_bundle
from imgclf.deploy.metadata import bundle_content_id
from imgclf.errors import ImgclfError
from imgclf.lifecycle.model_folder import ModelFolder, is_model_folder
from imgclf.serve.auth import check_api_key
from imgclf.serve.uploads import DEFAULT_LIMITS, Limits

if TYPE_CHECKING:
    from imgclf.serve.reload import Reloader
    from imgclf.watch.log import LogOptions

log = logging.getLogger(__name__)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def serve(model: str | Path, *, host: str = "127.0.0.1", port: int = 8000, runtime: str = "auto",
          device: str = "auto", tta: bool | None = None, limits: Limits = DEFAULT_LIMITS, max_batch: int = 32,
          max_wait_ms: float = 2.0, max_queue: int = 256, api_key: str | None = None,
          log: LogOptions | None = None) -> None:
    """Serve ``model`` over HTTP until interrupted; see :func:`imgclf.serve.app.create_app` for the routes.

    ``model`` is a run, a bundle folder, or a model folder (``imgclf promote --to``), whose current version is
    served and followed: a promotion or rollback switches the server within a second. With ``log``, every
    prediction is recorded (:mod:`imgclf.watch`).
    """
    from imgclf.deploy.classifier import Classifier
    from imgclf.serve.app import create_app
    from imgclf.serve.watching import watching_line

    check_api_key(api_key)
    check_port(port)
    for option, value in (("--max-batch", max_batch), ("--max-files", limits.max_files),
                          ("--max-queue", max_queue), ("--max-pixels", limits.max_pixels),
                          ("--max-upload-mb", limits.max_bytes), ("--timeout", limits.timeout_s)):
        if value <= 0:
            raise ImgclfError(f"{option} must be positive, got {value}")
    # batch 1 is what a lightly loaded server mostly runs, and where the runtimes differ most
    load = partial(Classifier.load, device=device, tta=tta, runtime=runtime, batch_size=1)
    name, directory, version, reloader = _what_to_serve(model, load)
    classifier = load(directory)
    app = create_app(classifier, name, classifier.runtime.name, limits, max_batch=max_batch, max_wait_ms=max_wait_ms,
                     max_queue=max_queue, api_key=api_key, version=version, reloader=reloader, log=log)
    if log is not None:
        logging.getLogger(__name__).info(watching_line(log, classifier))
    who = ("callers need the API key; use TLS (a reverse proxy) so it is not sent in clear text" if api_key else
           "anyone who can reach this machine can use the model (no --api-key); put it behind a proxy that "
           "checks who calls")
    run_app(app, host, port, f"{name} ({classifier.runtime.name} runtime)", who)


def _what_to_serve(model: str | Path, load: Callable[[Path], Any]) -> tuple[str, Path, str, Reloader | None]:
    """(name, bundle folder, content id, reloader): a model folder's current version, followed as it changes, or one
    bundle (a run's or a bundle folder), served as it is."""
    from imgclf.serve.reload import Reloader

    if is_model_folder(model):
        folder = ModelFolder.open(model)
        version = folder.current().current
        return Path(model).resolve().name, folder.version_dir(version), version, Reloader(folder, load)
    directory = find_bundle(model)
    name = directory.parent.name if directory.name == "model" else directory.name
    return name, directory, bundle_content_id(directory), None


def serve_review(catalog: str | Path, queries: str | Path, accepted: str | Path, *, host: str = "127.0.0.1",
                 port: int = 8000, **matching: object) -> None:
    """Serve the review page for ``queries`` matched against ``catalog``; decisions go to ``accepted``."""
    from imgclf.api import catalog_matcher
    from imgclf.serve.review import ReviewQueue, create_review_app

    check_port(port)
    queue = ReviewQueue(catalog_matcher(catalog, **matching), Path(queries), Path(accepted))  # type: ignore[arg-type]  # matching: the matcher's own options
    run_app(create_review_app(queue), host, port, f"the review of {len(queue.rows):,} new products",
            f"anyone who can reach this machine can see and decide the products (there is no authentication; "
            f"decisions go to {accepted}); put it behind a proxy that checks who calls")


def check_port(port: int) -> None:
    if not 1 <= port <= 65535:
        raise ImgclfError(f"--port {port} is not a TCP port; give one from 1 to 65535, e.g. 8000")


def run_app(app: object, host: str, port: int, what: str, exposure: str) -> None:
    """Run ``app`` with uvicorn until Ctrl-C; ``exposure`` is the warning when it is reachable beyond this machine."""
    import uvicorn

    if not is_loopback(host):
        log.warning(f"warning: serving on {host}: {exposure}")
    log.info(f"serving {what} on http://{host}:{port}  (web page /, API docs /docs); Ctrl-C stops")
    try:
        uvicorn.run(app, host=host, port=port, log_level="warning", access_log=False)  # type: ignore[arg-type]  # an ASGI app; uvicorn's hint is narrower
    except OSError as error:  # uvicorn logs bind errors and exits; other socket errors land here
        raise ImgclfError(f"cannot serve on {host}:{port} ({error.strerror or error}); choose another --port") from None
