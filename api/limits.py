"""What every request and response is held to: the request body limit, and the response
headers that keep JSON out of caches and browsers' content sniffing.

Bodies over ``settings.api.max_body_bytes`` get 413, checked twice: at once from
``Content-Length``, and while the body streams in, for chunked uploads that declare no length,
so an oversized upload is never read into memory whole.

Every JSON response carries ``Cache-Control: no-store`` (replies carry API keys, node tokens,
tenants' allocations: no proxy or browser may keep them) and every response
``X-Content-Type-Options: nosniff``.

``HEAD`` is answered as ``GET`` is, without the body (RFC 9110 §9.3.2: every general-purpose
server supports both). FastAPI's routes take only the methods they name, so a monitor or a
probe that checks a route with ``HEAD`` got 405.
"""

from __future__ import annotations

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.errors import PayloadTooLarge, error_response


class BodyLimitMiddleware:
    def __init__(self, app: ASGIApp, max_body_bytes: int) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes

    def _too_large(self) -> PayloadTooLarge:
        return PayloadTooLarge(f"request body over the limit of {self.max_body_bytes} bytes")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_body_bytes:
            await error_response(self._too_large())(scope, receive, send)
            return
        received = 0
        too_large = False

        async def counted_receive() -> Message:
            nonlocal received, too_large
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body_bytes:
                    # Stop reading: the app sees a disconnect, and its answer is replaced below.
                    too_large = True
                    return {"type": "http.disconnect"}
            return message

        async def guarded_send(message: Message) -> None:
            if not too_large:
                await send(message)

        try:
            await self.app(scope, counted_receive, guarded_send)
        except Exception:
            if not too_large:
                raise
        if too_large:
            await error_response(self._too_large())(scope, receive, send)


class SecurityHeadersMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                headers["X-Content-Type-Options"] = "nosniff"
                if headers.get("content-type", "").startswith("application/json"):
                    headers["Cache-Control"] = "no-store"
            await send(message)

        await self.app(scope, receive, send_with_headers)


class HeadAsGetMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "HEAD":
            await self.app(scope, receive, send)
            return

        async def send_as_head(message: Message) -> None:
            if message["type"] == "http.response.start":
                # The server reads the method from this scope too: a HEAD answer declares the
                # GET answer's length and sends none of it.
                scope["method"] = "HEAD"
            elif message["type"] == "http.response.body":
                message = {**message, "body": b""}
            await send(message)

        # In place, not a copy: the router records the route it matched in this scope, which
        # the metrics middleware reads (with the method, HEAD again by then) for its labels.
        scope["method"] = "GET"
        try:
            await self.app(scope, receive, send_as_head)
        finally:
            scope["method"] = "HEAD"
