"""Inference calls to a deployed key, dispatched before aiohttp's router.

aiohttp resolves a request by trying the root-level dynamic routes one by one (the
inference catch-alls come last), then runs the middleware chain; on a call that
otherwise only relays bytes, that was a tenth of the gateway's CPU. `InferenceFirst`
is the request handler of the HTTP server instead of `Application._handle`: a POST
whose exact path the router once resolved to `proxy.invoke` for a key that is still
deployed reuses that (frozen) match info, so `request.match_info`, `request.app` and
the response signals (request id, drain) behave as after routing; then it passes the
same checks the middleware chain would run, in the same order: the error mapping
(`error_middleware`), the inference class's auth check when auth is on, the handler.
Anything else (an undeployed key, a bare model name, a query string, `Expect:`) goes
through the router as before; so does the first call on each path.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from aiohttp import hdrs, web
from aiohttp.web_urldispatcher import UrlMappingMatchInfo

from gateway.app_keys import ROUTES
from gateway.dataplane import proxy
from gateway.edge.auth import Authenticator, Scope
from gateway.errors import error_middleware
from supervisor.deployment import Deployment

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class InferenceFirst:
    """The server's request handler: deployed keys' inference calls skip the router."""

    # Paths remembered at most (each one a deployed key's); past it the memory restarts.
    MAX_PATHS = 4096

    def __init__(self, app: web.Application, authenticator: Authenticator | None) -> None:
        self._app = app
        self._fallback: Handler = app._handle
        self._matches: dict[str, UrlMappingMatchInfo] = {}
        self._routes: dict[str, Deployment] | None = None  # the app's table, once started
        self._guarded: Handler = proxy.invoke
        # What the inference lane checks too (None: access control is off).
        self.authenticator = (
            authenticator if authenticator is not None and authenticator.enabled else None
        )
        if authenticator is not None and authenticator.enabled:
            check = authenticator.check

            async def guarded(request: web.Request) -> web.StreamResponse:
                await check(request, Scope.INFERENCE)
                return await proxy.invoke(request)

            self._guarded = guarded

    async def __call__(self, request: web.BaseRequest) -> web.StreamResponse:
        assert isinstance(request, web.Request)  # the app's request factory makes these
        if request.method == hdrs.METH_POST:
            match = self._matches.get(request.raw_path)
            if match is not None:
                routes = self._routes
                if routes is None:  # set at start-up, frozen with the app after it
                    routes = self._routes = self._app[ROUTES]
                if match["key"] in routes and hdrs.EXPECT not in request.headers:
                    request._match_info = match
                    return await error_middleware(request, self._guarded)
            else:
                await self._learn(request)
        return await self._fallback(request)

    async def _learn(self, request: web.Request) -> None:
        """Remember the router's answer for a plain path that names a deployed key."""
        path = request.raw_path
        if "?" in path or "%" in path:
            return  # the router decodes these: they are not worth a second road
        match = await self._app.router.resolve(request)
        if match.handler is not proxy.invoke or match.get("key") not in self._app[ROUTES]:
            return
        match.add_app(self._app)
        match.freeze()
        if len(self._matches) >= self.MAX_PATHS:
            self._matches.clear()
        self._matches[path] = match


DISPATCH = web.AppKey("inference_first", InferenceFirst)
