"""An optional API key: requests to the API and metrics must carry it; the page, docs and health check need none.

The key comes in ``Authorization: Bearer KEY`` or ``X-API-Key: KEY`` and is
compared in constant time (:func:`hmac.compare_digest`), so response timing
tells an attacker nothing about how much of a guess was right. ``/healthz``
stays open because load balancers and orchestrators probe it without
secrets and it reveals only "ok"; ``/metrics`` is protected because request
counts tell how the model is used (Prometheus can send a bearer token). The
web page and API docs are static files: they are open, and the page's calls
to the API need the key like any other client's.
"""

from __future__ import annotations

import hmac
import json

from starlette.types import ASGIApp, Receive, Scope, Send

from imgclf.errors import ImgclfError

PROTECTED_PREFIXES = ("/v1/", "/metrics")
MIN_KEY_LENGTH = 16


def check_api_key(api_key: str | None) -> None:
    """Refuse a key short enough to guess, before anything is served with it."""
    if api_key is not None and len(api_key) < MIN_KEY_LENGTH:
        raise ImgclfError(f"--api-key is too short to be secret; use at least {MIN_KEY_LENGTH} characters, e.g. "
                          "IMGCLF_API_KEY=$(python -c 'import secrets; print(secrets.token_urlsafe(32))')")


class RequireApiKey:
    """Pure ASGI middleware: 401 with a JSON error for a protected path without the right key."""

    def __init__(self, app: ASGIApp, api_key: str) -> None:
        self.app = app
        self.key = api_key.encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith(PROTECTED_PREFIXES) or self._allowed(scope):
            await self.app(scope, receive, send)
            return
        body = json.dumps({"error": "missing or wrong API key; send it as 'Authorization: Bearer KEY' or "
                                    "'X-API-Key: KEY'", "status": 401}).encode()
        await send({"type": "http.response.start", "status": 401,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                                (b"www-authenticate", b'Bearer realm="imgclf"')]})
        await send({"type": "http.response.body", "body": body})

    def _allowed(self, scope: Scope) -> bool:
        headers = dict(scope["headers"])  # names are lower-case bytes in ASGI
        given = headers.get(b"x-api-key")
        scheme, _, token = headers.get(b"authorization", b"").partition(b" ")
        if given is None and scheme.lower() == b"bearer":
            given = token.strip()
        return given is not None and hmac.compare_digest(given, self.key)
