"""discord.py's HTTP and webhook clients pointed at other servers (DISCORD_API_URL, DISCORD_GATEWAY_URL: a fake in
tests), for one client only, and gateway payload parsers that cannot end the connection."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

import aiohttp
from discord.http import HTTPClient, Route
from discord.webhook.async_ import AsyncWebhookAdapter

from bots.discord.settings import DEFAULT_API_URL, DEFAULT_GATEWAY_URL

log = logging.getLogger("engbot.discord")

# Route.BASE and DiscordWebSocket.DEFAULT_GATEWAY are class attributes: setting them would move every client in
# the process. These two overrides move the REST calls, the gateway and the interaction webhooks of one client.


def _rebase(url: str, default: str, base: str) -> str:
    return base + url[len(default):] if base != default and url.startswith(default) else url


class RebasedHTTPClient(HTTPClient):
    def __init__(self, loop: asyncio.AbstractEventLoop, *, api_url: str, gateway_url: str) -> None:
        super().__init__(loop)
        self.api_url, self.gateway_url = api_url, gateway_url

    async def request(self, route: Route, **kwargs: Any) -> Any:
        route.url = _rebase(route.url, DEFAULT_API_URL, self.api_url)
        return await super().request(route, **kwargs)

    async def ws_connect(self, url: str, *, compress: int = 0) -> aiohttp.ClientWebSocketResponse:
        return await super().ws_connect(_rebase(url, DEFAULT_GATEWAY_URL, self.gateway_url), compress=compress)


class RebasedWebhookAdapter(AsyncWebhookAdapter):
    """Interaction responses and follow-ups go through this (a context variable), not through the HTTP client."""

    def __init__(self, api_url: str) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.api_url = api_url

    async def request(self, route: Route, session: aiohttp.ClientSession, **kwargs: Any) -> Any:
        route.url = _rebase(route.url, DEFAULT_API_URL, self.api_url)
        return await super().request(route, session, **kwargs)


def guarded(event: str, parse: Callable[[Any], None]) -> Callable[[Any], None]:
    def guarded(data: Any) -> None:
        try:
            parse(data)
        except Exception:
            log.exception("ignored a malformed %s payload from the gateway", event)

    return guarded
