"""The methods of a path: OPTIONS lists them, and a method the path lacks is 405 with all of them.

Starlette answers OPTIONS like any other undeclared method (405), and its 405 names
the methods of the first route that matched the path only, so GET and POST
/v1/screenings (two routes) answered PUT with `Allow: POST`. Here every route
whose path matches contributes its methods: OPTIONS gets 204 with `Allow`
listing them, another undeclared method 405 with the same `Allow`. Paths that no
route matches go on to the app (404).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from fastapi.routing import iter_route_contexts
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, compile_path, get_route_path
from starlette.types import ASGIApp, Receive, Scope, Send


def route_table(routes: Sequence[BaseRoute]) -> list[tuple[re.Pattern[str], frozenset[str]]]:
    """Each route's path pattern and methods, those of included routers' routes too."""
    table = []
    for route in iter_route_contexts(routes):
        if route.path is not None and route.methods:
            table.append((compile_path(route.path)[0], frozenset(route.methods)))
    return table


class AllowedMethods:
    """A pure ASGI middleware: answers OPTIONS, and a method the path does not have, itself."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        # Read at the first request: routes are all included by then.
        self.table: list[tuple[re.Pattern[str], frozenset[str]]] | None = None

    def allowed(self, scope: Scope) -> set[str]:
        """The methods of the routes whose path matches the request's, OPTIONS included;
        empty when none matches."""
        if self.table is None:
            self.table = route_table(scope["app"].routes)
        path = get_route_path(scope)
        methods = set().union(*(m for pattern, m in self.table if pattern.fullmatch(path)))
        return methods | {"OPTIONS"} if methods else methods

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        allowed = self.allowed(scope)
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
