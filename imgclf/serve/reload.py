"""Hot reload: a server of a model folder follows its ``current`` pointer, and ``POST /v1/reload`` asks it to now.

The watcher reads the pointer file's inode, mtime and size once a second
(one ``stat``; ``imgclf promote`` and ``rollback`` replace the file, so
every switch changes them) and reads the pointer only when they change.
The new version is loaded (and run once, to warm it up) in a worker
thread, so requests keep being answered by the old one meanwhile; then :class:`~imgclf.serve.loaded.LoadedModel`
swaps them without dropping a request. A version that fails to load is
logged and the old one keeps serving.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import APIRouter

from imgclf.errors import one_line
from imgclf.lifecycle.model_folder import ModelFolder
from imgclf.serve.loaded import LoadedModel
from imgclf.serve.routes import ERROR_RESPONSES, Served, State
from imgclf.serve.uploads import ApiError

log = logging.getLogger(__name__)

POLL_S = 1.0
DRAIN_MARGIN_S = 1.0  # past --timeout, when no request can still hold the old model


class Reloader:
    """Switches a server to its model folder's current version; one switch at a time."""

    def __init__(self, folder: ModelFolder, load: Callable[[Path], Any], poll_s: float = POLL_S) -> None:
        self.folder = folder
        self.load = load  # a version's folder -> a classifier (with .runtime.name); runs in a worker thread
        self.poll_s = poll_s
        self._stamp = folder.stamp()
        self._lock = asyncio.Lock()
        self._draining: dict[asyncio.Task[None], LoadedModel] = {}  # old models waiting for their last requests

    async def watch(self, served: Served) -> None:
        """Reload whenever the pointer file changes; runs until cancelled (the server's shutdown)."""
        while True:
            await asyncio.sleep(self.poll_s)
            stamp = self.folder.stamp()
            if stamp == self._stamp:
                continue
            self._stamp = stamp
            try:
                await self.reload(served)
            except Exception as error:  # a broken version or pointer must not stop the server: keep the old one
                log.warning(f"warning: {self.folder.path} changed but could not be loaded ({one_line(error)}); "
                            f"still serving {served.model.version}")

    async def reload(self, served: Served) -> dict[str, Any]:
        """Switch to the pointer's version if it is not the one served: {model_version, previous, reloaded}."""
        async with self._lock:
            version = self.folder.current().current
            old = served.model
            if version == old.version:
                return {"model_version": version, "previous": None, "reloaded": False}
            classifier = await asyncio.to_thread(self._warmed_up, self.folder.version_dir(version))
            new = served.build_model(classifier, classifier.runtime.name, version)
            new.start()
            served.model = new  # requests that start from here on hold the new model
            drain = asyncio.get_running_loop().create_task(old.drain(served.limits.timeout_s + DRAIN_MARGIN_S))
            self._draining[drain] = old
            drain.add_done_callback(lambda done: self._draining.pop(done, None))
            log.info(f"now serving {version} of {self.folder.path} (was {old.version})")
            return {"model_version": version, "previous": old.version, "reloaded": True}

    def _warmed_up(self, directory: Path) -> Any:
        """The version loaded and run once on a blank image, so its first request does not pay the first call's
        set-up (lazy initialisation, memory pools) after the switch."""
        classifier = self.load(directory)
        info = classifier.info
        classifier.predict_pixels(np.zeros((1, info.image_size, info.image_size, info.channels), dtype=np.uint8))
        return classifier

    async def stop(self) -> None:
        """Stop the old models still draining (the server is shutting down)."""
        for drain, old in list(self._draining.items()):
            drain.cancel()
            await old.stop()


router = APIRouter(prefix="/v1")


@router.post("/reload", responses={**ERROR_RESPONSES, 409: {"description": "Not serving a model folder"},
                                   500: {"description": "The current version could not be loaded"}})
async def reload(state: State) -> dict[str, Any]:
    """Switch to the model folder's current version now (the server also checks the folder every second)."""
    if state.reloader is None:
        raise ApiError(409, "this server serves one bundle, not a model folder, so there is nothing to reload; "
                            "serve a model folder (imgclf serve models/NAME) to switch versions")
    try:
        return await state.reloader.reload(state)
    except Exception as error:
        raise ApiError(500, f"could not load {state.reloader.folder.path}'s current version ({one_line(error)}); "
                            f"still serving {state.model.version}") from None
