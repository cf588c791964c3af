"""X-Request-ID: each request's id, taken from the client or made here, sent back on the answer.

A client's `X-Request-ID` is kept when it is 1-128 characters of A-Z, a-z, 0-9 and `._:-`
(a UUID fits); anything else (or none) is replaced by a new random id, so that what lands in
the audit trail and the logs is always a plain token. The id is on `request.state.request_id`
and in every answer's `X-Request-ID` header.
"""

from __future__ import annotations

import re
import uuid
from typing import Final

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

HEADER: Final = "X-Request-ID"
PATTERN: Final = re.compile(r"[A-Za-z0-9._:-]{1,128}")


def request_id(sent: str | None) -> str:
    return sent if sent is not None and PATTERN.fullmatch(sent) else uuid.uuid4().hex


class RequestId:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        sent = [value for name, value in scope["headers"] if name == b"x-request-id"]
        chosen = request_id(sent[0].decode("latin-1") if len(sent) == 1 else None)
        scope.setdefault("state", {})["request_id"] = chosen

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                MutableHeaders(scope=message)[HEADER] = chosen
            await send(message)

        await self.app(scope, receive, send_with_id)
