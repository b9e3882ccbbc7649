"""The review page as a FastAPI router over any :class:`~imgclf.review.items.ReviewSource`.

The page (``static/review.html``, styled by ``static/base.css``, which the
catalogue review page shares) lists the source's items by kind and class and
sends each decision back through the source. Every change answers with the
decisions it replaced, which is what the page's undo sends back; the page
polls the decisions, so a second person's choices appear without a reload.
Routes under ``/v1/`` are the ones serve's API key protects
(:mod:`imgclf.serve.auth`); images are served by their index in the source's
list, never by a path the browser names.
"""

from __future__ import annotations

import html
import json
from importlib.resources import files
from typing import Any

from fastapi import APIRouter, HTTPException
from fastapi.responses import FileResponse, HTMLResponse
from pydantic import BaseModel, Field

from imgclf.data.hierarchy import parse_path
from imgclf.errors import ImgclfError, one_line
from imgclf.review.items import Decision, ReviewSource

MAX_CHANGES = 100_000  # one request's decisions: a bulk action's undo sends as many as the action changed


class Change(BaseModel):
    """One decision from the page: ``action`` empty (or null) takes back whatever was decided about ``key``."""

    key: str
    action: str | None = None
    label: str = ""


class Changes(BaseModel):
    changes: list[Change] = Field(max_length=MAX_CHANGES)


def base_css() -> str:
    """The style every review page shares (colours, header, cards, buttons)."""
    return files("imgclf.review").joinpath("static/base.css").read_text(encoding="utf-8")


def review_page(title: str, api: str) -> str:
    """The page, with the shared style inlined and the API path (relative to the page) it calls."""
    page = files("imgclf.review").joinpath("static/review.html").read_text(encoding="utf-8")
    return (page.replace("/* base.css */", base_css()).replace("__TITLE__", html.escape(title))
            .replace('"__API__"', json.dumps(api)))


def review_router(source: ReviewSource, *, page: str = "/", api: str = "/v1/review") -> APIRouter:
    """Routes: the page at ``page``; items, decisions, changes, bulk actions and images under ``api``."""
    router = APIRouter()
    text = review_page(source.title, "../" * (page.count("/") - 1) + api.lstrip("/"))  # relative: works behind a proxy's prefix

    @router.get(page, response_class=HTMLResponse, include_in_schema=False)
    async def review() -> str:
        return text

    @router.get(f"{api}/items")
    def items() -> dict[str, Any]:
        """Every item with its evidence, the classes, the actions and bulk actions, the decisions so far."""
        return {"title": source.title, "where": source.where, "actions": list(source.actions),
                "label_actions": list(source.label_actions), "label_name": source.label_name, "classes": source.classes(),
                "bulk": [{"name": bulk.name, "title": bulk.title} for bulk in source.bulk_actions()],
                "items": [item.to_json() for item in source.items()], **_state(source)}

    @router.get(f"{api}/decisions")
    def decisions() -> dict[str, Any]:
        """The decisions as stored now (everyone's) and the counts."""
        return _state(source)

    @router.post(f"{api}/decide")
    def decide(body: Changes) -> dict[str, Any]:
        """Record (or, with no action, take back) decisions; answers with the decisions they replaced, for undo."""
        known = {item.key for item in source.items()}
        changes = {change.key: _decision(source, change, known) for change in body.changes}
        return _apply(source, changes)

    @router.post(f"{api}/bulk/{{name}}")
    def bulk(name: str) -> dict[str, Any]:
        """Apply a bulk action (its decisions come from the source); answers with what it replaced, for undo."""
        if name not in {action.name for action in source.bulk_actions()}:
            raise HTTPException(404, f"no bulk action {name!r}")
        return _apply(source, dict(source.bulk(name)))

    @router.get(f"{api}/image/{{index}}", include_in_schema=False)
    def image(index: int) -> FileResponse:
        path = source.image(index)
        if path is None:
            raise HTTPException(404, f"no image {index}")
        return FileResponse(path)

    return router


def _state(source: ReviewSource) -> dict[str, Any]:
    counts = source.counts()
    return {"decisions": {key: _json(decision) for key, decision in source.decisions().items()},
            "counts": {"items": counts.items, "decided": counts.decided, "accuracy": counts.accuracy}}


def _apply(source: ReviewSource, changes: dict[str, Decision | None]) -> dict[str, Any]:
    before = source.decisions()
    try:
        source.decide(changes)
    except OSError as error:  # a full disk or a read-only folder: the file is as it was, and the page says so
        raise HTTPException(507, f"the decisions were not saved: {one_line(error)}") from None
    except ImgclfError as error:  # the source refused it (e.g. an item no longer in the queue)
        raise HTTPException(422, str(error)) from None
    return {"previous": {key: _json(before.get(key)) for key in changes}, **_state(source)}


def _json(decision: Decision | None) -> dict[str, str] | None:
    return None if decision is None else {"action": decision.action, "label": decision.label, "time": decision.time}


def _decision(source: ReviewSource, change: Change, known: set[str]) -> Decision | None:
    """The change as a decision, or a 422 that says what is wrong with it."""
    if change.key not in known:
        raise HTTPException(422, f"nothing to review is called {change.key!r}")
    if not change.action:
        return None
    if change.action not in source.actions:
        raise HTTPException(422, f"action {change.action!r} is not one of {', '.join(source.actions)}")
    label = change.label.strip()
    if change.action in source.label_actions:
        try:
            parts = parse_path(label, "label")
        except ImgclfError as error:
            raise HTTPException(422, str(error)) from None
        if any(part in (".", "..") or "\\" in part or "\0" in part for part in parts):
            raise HTTPException(422, f"label: {label!r} is not a class name a folder can have; write letters, digits "
                                     "and spaces (a / between levels of a category)")
    return Decision(change.action, label if change.action in source.label_actions else "")
