"""Security headers on every response, and CORS closed unless CORS_ALLOW_ORIGINS opens it.

Every answer, errors and probes included, carries:
- `X-Content-Type-Options: nosniff`: a browser never guesses another type than the one said;
- `Referrer-Policy: no-referrer`: no URL (with a screening id in it) leaks to another site;
- `X-Frame-Options: DENY` and CSP `frame-ancestors 'none'`: no page frames this service;
- `Content-Security-Policy: default-src 'none'; frame-ancestors 'none'`: a JSON answer
  opened in a browser runs nothing and loads nothing. The interactive documentation
  (/docs, /redoc) gets its own policy: FastAPI's pages load Swagger UI and ReDoc from
  cdn.jsdelivr.net, start them with an inline script and read /openapi.json; the clinician's
  app (/app/) gets one that loads its own files only and calls this origin only (`APP_POLICY`);
- `Cache-Control: no-store` unless the route said otherwise: answers carry health data
  (clinical answers, results), which no browser or proxy may keep;
- `Strict-Transport-Security`, only when HSTS_MAX_AGE_S is set (served behind TLS only:
  a browser told so over plain HTTP would refuse the service for that long).

CORS: browsers block cross-origin calls unless the answer allows them; with
CORS_ALLOW_ORIGINS unset, no CORS header is ever sent, so no web page of another
origin reads anything. Set it (comma-separated origins) to let a web app call the
API; Starlette's CORSMiddleware then answers preflights, for those origins only.
"""

from __future__ import annotations

from typing import Final

from fastapi import FastAPI
from starlette.datastructures import MutableHeaders
from starlette.middleware.cors import CORSMiddleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

API_POLICY: Final = "default-src 'none'; frame-ancestors 'none'"
CDN: Final = "https://cdn.jsdelivr.net"
DOCS_POLICY: Final = (
    f"default-src 'none'; script-src {CDN} 'unsafe-inline'; style-src {CDN} 'unsafe-inline'; "
    f"img-src 'self' data: {CDN} https://fastapi.tiangolo.com; font-src {CDN} "
    "https://fonts.gstatic.com; connect-src 'self'; worker-src blob:; frame-ancestors 'none'"
)
DOCS_PATHS: Final = ("/docs", "/docs/oauth2-redirect", "/redoc")
# The clinician's app (app/, served at /app/): its own files, and photos previewed from blob: URLs.
APP_POLICY: Final = (
    "default-src 'self'; img-src 'self' blob: data:; connect-src 'self'; style-src 'self'; "
    "script-src 'self'; frame-ancestors 'none'"
)
APP_PREFIX: Final = "/app"
# What a web app needs to send and read (Authorization: API keys; the rest: api.md).
CORS_METHODS: Final = ("GET", "POST", "PUT", "DELETE")
CORS_HEADERS: Final = ("Authorization", "Content-Type", "Idempotency-Key")
CORS_EXPOSED: Final = ("Location", "Retry-After", "Idempotent-Replayed")


class SecurityHeaders:
    """Pure ASGI middleware (no body buffering): adds the headers as the answer starts."""

    def __init__(self, app: ASGIApp, hsts_max_age_s: int = 0) -> None:
        self.app = app
        self.hsts = f"max-age={hsts_max_age_s}; includeSubDomains" if hsts_max_age_s else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope["path"]
        policy = DOCS_POLICY if path in DOCS_PATHS else API_POLICY
        if path == APP_PREFIX or path.startswith(APP_PREFIX + "/"):
            policy = APP_POLICY

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                headers["X-Content-Type-Options"] = "nosniff"
                headers["Referrer-Policy"] = "no-referrer"
                headers["X-Frame-Options"] = "DENY"
                headers["Content-Security-Policy"] = policy
                headers.setdefault("Cache-Control", "no-store")
                if self.hsts is not None:
                    headers["Strict-Transport-Security"] = self.hsts
            await send(message)

        await self.app(scope, receive, send_with_headers)


def allowed_origins(setting: str) -> list[str]:
    """CORS_ALLOW_ORIGINS, comma-separated, as a list; empty: CORS closed."""
    return [origin.strip().rstrip("/") for origin in setting.split(",") if origin.strip()]


def install(app: FastAPI, cors_allow_origins: str, hsts_max_age_s: int) -> None:
    """Outermost middlewares: CORS (only when origins are set), then the headers around it,
    so preflight answers carry them too."""
    origins = allowed_origins(cors_allow_origins)
    if origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=origins,
            allow_methods=list(CORS_METHODS),
            allow_headers=list(CORS_HEADERS),
            expose_headers=list(CORS_EXPOSED),
            allow_credentials=False,
            max_age=600,
        )
    app.add_middleware(SecurityHeaders, hsts_max_age_s=hsts_max_age_s)
