"""A small proxy on 127.0.0.1 in front of a real OpenAI-compatible server, injecting what a busy or slow server
does: 429/503 answers (with Retry-After), a slow first token, the 404 of a server that serves only the models it
lists (as vLLM does). Everything else passes through, streamed chunk by chunk.

    async with FaultProxy(server.url) as proxy:         # OPENAI_BASE_URL=proxy.url
        proxy.refuse(429, times=2, retry_after="0")     # the next two chat completions
        proxy.first_token_delay = 2.0
        ...
        proxy.calls[-1].client_closed                   # the client closed the stream before its end

Each chat completion is recorded (``calls``: the request body, the status, the chunks passed on, whether the client
went away first); when the client closes its connection, the proxy closes the server's, as a load balancer does.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiohttp import web

HOP_HEADERS = {"host", "content-length", "transfer-encoding", "connection", "keep-alive"}


@dataclass
class ProxyCall:
    """One chat completion as the proxy saw it."""

    body: dict[str, Any]
    status: int = 0
    chunks: int = 0  # body chunks passed to the client
    client_closed: bool = False  # the client went away before the server's answer ended
    completed: bool = False  # the whole answer was passed on
    at: float = field(default_factory=time.monotonic)
    first_chunk_at: float = 0.0

    @property
    def messages(self) -> list[dict[str, Any]]:
        return list(self.body.get("messages", []))


class FaultProxy:
    """See the module docstring."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream.rstrip("/")
        self.calls: list[ProxyCall] = []
        self.first_token_delay = 0.0
        self.strict_models = False  # 404 for a model the server does not list
        self._refusals: list[tuple[int, str | None]] = []
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None
        self.url = ""

    async def __aenter__(self) -> FaultProxy:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def start(self) -> None:
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None),
                                              connector=aiohttp.TCPConnector(force_close=True))
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._forward)
        self._runner = web.AppRunner(app, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        path = "/" + self.upstream.split("/", 3)[3] if self.upstream.count("/") >= 3 else ""
        self.url = f"http://127.0.0.1:{port}{path}"

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
        if self._session is not None:
            await self._session.close()

    def clear(self) -> None:
        """No more refusals."""
        self._refusals.clear()

    def refuse(self, status: int, times: int = 1, retry_after: str | None = None) -> None:
        """Answer the next ``times`` chat completions with ``status`` (and Retry-After) instead of forwarding."""
        self._refusals.extend([(status, retry_after)] * times)

    async def wait_for(self, predicate: Any, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            if time.monotonic() > deadline:
                raise TimeoutError("the proxy did not see it happen")
            await asyncio.sleep(0.02)

    # ---- forwarding ----

    async def _forward(self, request: web.Request) -> web.StreamResponse:
        assert self._session is not None
        raw = await request.read()
        tail = request.match_info["tail"]
        base = self.upstream.split("/", 3)
        target = f"{base[0]}//{base[2]}/{tail}"
        call: ProxyCall | None = None
        if request.method == "POST" and tail.endswith("chat/completions"):
            call = ProxyCall(json.loads(raw or b"{}"))
            self.calls.append(call)
            refused = await self._refused(call, request)
            if refused is not None:
                return refused
        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP_HEADERS}
        async with self._session.request(request.method, target, data=raw, headers=headers,
                                         params=request.query) as upstream:
            response = web.StreamResponse(status=upstream.status, headers={
                k: v for k, v in upstream.headers.items() if k.lower() not in HOP_HEADERS})
            if call is not None:
                call.status = upstream.status
            await response.prepare(request)
            first = True
            async for chunk in upstream.content.iter_any():
                delay = self.first_token_delay if first and call is not None and upstream.status == 200 else 0.0
                if delay and not await self._wait_or_gone(request, delay):
                    assert call is not None
                    call.client_closed = True
                    return response  # leaving the block closes the server's connection too
                if self._gone(request):
                    if call is not None:
                        call.client_closed = True
                    return response
                try:
                    await response.write(chunk)
                except (ConnectionError, aiohttp.ClientConnectionResetError):
                    if call is not None:
                        call.client_closed = True
                    return response
                if call is not None:
                    call.chunks += 1
                    if first:
                        call.first_chunk_at = time.monotonic()
                first = False
            if call is not None:
                call.completed = True
            await response.write_eof()
            return response

    async def _refused(self, call: ProxyCall, request: web.Request) -> web.Response | None:
        if self._refusals:
            status, retry_after = self._refusals.pop(0)
            call.status = status
            message = "Too Many Requests" if status == 429 else "Service Unavailable"
            return web.json_response({"error": {"message": message, "type": "server_error", "code": status}},
                                     status=status, headers={"Retry-After": retry_after} if retry_after else {})
        if self.strict_models:
            assert self._session is not None
            async with self._session.get(f"{self.upstream}/models",
                                         headers={"Authorization": request.headers.get("Authorization", "")}) as r:
                listed = [m["id"] for m in (await r.json())["data"]]
            if call.body.get("model") not in listed:
                call.status = 404
                return web.json_response({"object": "error", "message": f"The model `{call.body.get('model')}` "
                                          "does not exist.", "type": "NotFoundError", "param": None, "code": 404},
                                         status=404)
        return None

    @staticmethod
    def _gone(request: web.Request) -> bool:
        return request.transport is None or request.transport.is_closing()

    async def _wait_or_gone(self, request: web.Request, seconds: float) -> bool:
        """Sleep ``seconds``; False as soon as the client has gone."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if self._gone(request):
                return False
            await asyncio.sleep(0.02)
        return not self._gone(request)
