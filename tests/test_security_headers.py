"""Security headers on every gateway answer, and CORS closed unless configured
(skinscreen.gateway.security). The app runs in-process without its lifespan: the answers
checked here (probes, docs, errors, OPTIONS) need no database."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from skinscreen.gateway.main import create_app
from skinscreen.gateway.security import API_POLICY, DOCS_POLICY
from skinscreen.gateway.settings import Settings

ORIGIN = "https://app.clinic.example"


class _Client:
    """Requests to the app in-process (httpx's ASGI transport; no lifespan runs)."""

    def __init__(self, **settings: object) -> None:
        base = {"DATABASE_URL": "postgresql://unused/db", "REDIS_URL": "redis://unused:1/0"}
        self.app = create_app(Settings.model_validate({**base, **settings}))

    def request(
        self, method: str, path: str, headers: dict[str, str] | None = None
    ) -> httpx.Response:
        async def send() -> httpx.Response:
            transport = httpx.ASGITransport(app=self.app, raise_app_exceptions=False)
            async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as client:
                return await client.request(method, path, headers=headers)

        return asyncio.run(send())

    def get(self, path: str, headers: dict[str, str] | None = None) -> httpx.Response:
        return self.request("GET", path, headers)

    def options(self, path: str, headers: dict[str, str] | None = None) -> httpx.Response:
        return self.request("OPTIONS", path, headers)


def _client(**settings: object) -> _Client:
    return _Client(**settings)


def assert_security_headers(response: httpx.Response, policy: str = API_POLICY) -> None:
    """The headers every answer carries (also used by the end-to-end tests)."""
    headers = response.headers
    assert headers["X-Content-Type-Options"] == "nosniff"
    assert headers["Referrer-Policy"] == "no-referrer"
    assert headers["X-Frame-Options"] == "DENY"
    assert headers["Content-Security-Policy"] == policy
    assert "frame-ancestors 'none'" in policy
    assert headers["Cache-Control"] == "no-store"
    assert "Strict-Transport-Security" not in headers


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        ("GET", "/healthz", 200),
        ("GET", "/openapi.json", 200),
        ("GET", "/no/such/path", 404),
        ("OPTIONS", "/v1/screenings", 204),
        ("PATCH", "/v1/screenings", 405),
    ],
)
def test_every_answer_carries_the_security_headers(method: str, path: str, status: int) -> None:
    response = _client().request(method, path)
    assert response.status_code == status, response.text
    assert_security_headers(response)


def test_the_docs_page_may_load_swagger_ui_from_its_cdn_and_nothing_else() -> None:
    client = _client()
    response = client.get("/docs")
    assert response.status_code == 200
    assert_security_headers(response, DOCS_POLICY)
    # What FastAPI's page loads is what the policy allows.
    page = response.text
    assert "https://cdn.jsdelivr.net/npm/swagger-ui-dist" in page
    assert "script-src https://cdn.jsdelivr.net 'unsafe-inline'" in DOCS_POLICY
    assert "connect-src 'self'" in DOCS_POLICY  # it fetches /openapi.json
    assert_security_headers(client.get("/redoc"), DOCS_POLICY)


def test_hsts_only_when_configured() -> None:
    response = _client(HSTS_MAX_AGE_S=31536000).get("/healthz")
    assert response.headers["Strict-Transport-Security"] == "max-age=31536000; includeSubDomains"


def test_cors_is_closed_by_default() -> None:
    client = _client()
    simple = client.get("/healthz", headers={"Origin": ORIGIN})
    preflight = client.options(
        "/v1/screenings",
        headers={"Origin": ORIGIN, "Access-Control-Request-Method": "POST"},
    )
    for response in (simple, preflight):
        assert not [name for name in response.headers if name.lower().startswith("access-control")]


def test_cors_opens_to_the_configured_origins_only() -> None:
    client = _client(CORS_ALLOW_ORIGINS=f"{ORIGIN}, https://other.example/")
    preflight = client.options(
        "/v1/screenings",
        headers={
            "Origin": ORIGIN,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization, idempotency-key",
        },
    )
    assert preflight.status_code == 200, preflight.text
    assert preflight.headers["Access-Control-Allow-Origin"] == ORIGIN
    assert "POST" in preflight.headers["Access-Control-Allow-Methods"]
    assert "Idempotency-Key" in preflight.headers["Access-Control-Allow-Headers"]
    assert "Access-Control-Allow-Credentials" not in preflight.headers
    assert_security_headers(preflight)
    simple = client.get("/healthz", headers={"Origin": "https://other.example"})
    assert simple.headers["Access-Control-Allow-Origin"] == "https://other.example"
    assert "Location" in simple.headers["Access-Control-Expose-Headers"]
    stranger = client.options(
        "/v1/screenings",
        headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"},
    )
    assert stranger.status_code == 400
    assert "Access-Control-Allow-Origin" not in stranger.headers
