"""The methods of a path: OPTIONS lists them, and a method the path lacks is 405 with all of them.

Starlette answers OPTIONS like any other undeclared method (405), and its 405 names
the methods of the first route that matched the path only, so GET and POST
/v1/screenings (two routes) answered PUT with `Allow: POST`. Here every route
whose path matches contributes its methods: OPTIONS gets 204 with `Allow`
listing them, another undeclared method 405 with the same `Allow`. Paths that no
route matches go on to the app (404).
"""

from __future__ import annotations

from starlette.responses import JSONResponse, Response
from starlette.routing import Match
from starlette.types import ASGIApp, Receive, Scope, Send


def allowed_methods(scope: Scope) -> set[str]:
    """The methods of the app's routes whose path matches the request's, OPTIONS included;
    empty when no route matches."""
    methods: set[str] = set()
    for route in scope["app"].router.routes:
        route_methods = getattr(route, "methods", None)
        if route_methods and route.matches(scope)[0] is not Match.NONE:
            methods |= route_methods
    return methods | {"OPTIONS"} if methods else methods


class AllowedMethods:
    """A pure ASGI middleware: answers OPTIONS, and a method the path does not have, itself."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        allowed = allowed_methods(scope)
        method = scope["method"]
        if not allowed or method in allowed - {"OPTIONS"}:
            await self.app(scope, receive, send)
            return
        allow = ", ".join(sorted(allowed))
        response: Response
        if method == "OPTIONS":
            response = Response(status_code=204, headers={"Allow": allow})
        else:
            response = JSONResponse(
                {"detail": f"method {method} is not allowed here; allowed: {allow}"},
                status_code=405,
                headers={"Allow": allow},
            )
        await response(scope, receive, send)
