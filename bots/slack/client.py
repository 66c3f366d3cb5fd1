"""slack_sdk's clients as engbot uses them: which calls are retried and how, reading a thread, and a Socket Mode
handler that acks what it cannot process."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import aiohttp
from slack_bolt.adapter.socket_mode.async_handler import AsyncSocketModeHandler
from slack_sdk.errors import SlackApiError
from slack_sdk.http_retry.async_handler import AsyncRetryHandler
from slack_sdk.http_retry.builtin_async_handlers import (
    AsyncConnectionErrorRetryHandler,
    AsyncRateLimitErrorRetryHandler,
)
from slack_sdk.http_retry.request import HttpRequest
from slack_sdk.http_retry.response import HttpResponse
from slack_sdk.http_retry.state import RetryState
from slack_sdk.socket_mode.aiohttp import SocketModeClient
from slack_sdk.socket_mode.request import SocketModeRequest
from slack_sdk.socket_mode.response import SocketModeResponse
from slack_sdk.web.async_client import AsyncWebClient

from bots.slack.settings import SlackSettings

log = logging.getLogger("engbot.slack")

HISTORY_PAGES = 5  # conversations.replies pages of 200: the model's context holds far less anyway
# Web API methods that are safe to send twice (reads; writes whose repetition changes nothing). Not
# chat.postMessage: a retry after a 5xx or a lost connection can post the message twice.
IDEMPOTENT_METHODS = frozenset({
    "auth.test", "apps.connections.open", "chat.update", "chat.delete", "conversations.replies",
    "conversations.history", "conversations.info", "users.info", "assistant.threads.setStatus",
    "assistant.threads.setTitle", "assistant.threads.setSuggestedPrompts", "files.info",
})
# Methods whose 429 is not waited out here: the caller has something better to do than wait for Retry-After (a
# stream that cannot start or stop falls back to edits, an append goes out later with more text in it, a status
# is not worth delaying an answer for).
NOT_WAITED_FOR = frozenset({
    "chat.startStream", "chat.appendStream", "chat.stopStream", "assistant.threads.setStatus",
})


class SlackConnectError(RuntimeError):
    """Slack could not be reached (network, DNS, TLS) or the socket did not connect in time."""


def api_method(request: HttpRequest) -> str:
    """The Web API method a request calls, e.g. ``chat.postMessage``."""
    return urlsplit(request.url).path.rstrip("/").rsplit("/", 1)[-1]


class ServerErrorRetryHandler(AsyncRetryHandler):
    """Retries idempotent calls answered with a 5xx status, after the server's Retry-After when it sends one,
    else with backoff. (slack_sdk's own server-error handler covers only 500 and 503, ignores Retry-After, and
    retries any method.)"""

    async def _can_retry_async(self, *, state: RetryState, request: HttpRequest,
                               response: HttpResponse | None = None, error: Exception | None = None) -> bool:
        return (response is not None and 500 <= response.status_code <= 599
                and api_method(request) in IDEMPOTENT_METHODS)

    async def prepare_for_next_attempt_async(self, *, state: RetryState, request: HttpRequest,
                                             response: HttpResponse | None = None,
                                             error: Exception | None = None) -> None:
        delay = _retry_after(response)
        if delay is None:
            delay = self.interval_calculator.calculate_sleep_duration(state.current_attempt)
        state.next_attempt_requested = True
        await asyncio.sleep(delay)
        state.increment_current_attempt()


def _retry_after(response: HttpResponse | None) -> float | None:
    if response is None:
        return None
    for name, values in response.headers.items():
        if name.lower() == "retry-after":
            with contextlib.suppress(ValueError, IndexError):
                return max(0.0, float(values[0]))
    return None


class ConnectionErrorRetryHandler(AsyncConnectionErrorRetryHandler):
    """slack_sdk's handler for lost connections, for idempotent calls only; any call whose connection could not
    even be opened (nothing was sent)."""

    async def _can_retry_async(self, *, state: RetryState, request: HttpRequest,
                               response: HttpResponse | None = None, error: Exception | None = None) -> bool:
        if isinstance(error, aiohttp.ClientConnectorError):
            return True
        return api_method(request) in IDEMPOTENT_METHODS and await super()._can_retry_async(
            state=state, request=request, response=response, error=error)


class RateLimitRetryHandler(AsyncRateLimitErrorRetryHandler):
    """slack_sdk's retry of a 429 after its Retry-After, telling ``on_rate_limited(method, seconds)`` first (the
    edit budget then holds every other call of that method back too)."""

    def __init__(self, on_rate_limited: Callable[[str, float], None], max_retry_count: int = 2) -> None:
        super().__init__(max_retry_count=max_retry_count)
        self.on_rate_limited = on_rate_limited

    async def _can_retry_async(self, *, state: RetryState, request: HttpRequest,
                               response: HttpResponse | None = None, error: Exception | None = None) -> bool:
        return api_method(request) not in NOT_WAITED_FOR and await super()._can_retry_async(
            state=state, request=request, response=response, error=error)

    async def prepare_for_next_attempt_async(self, *, state: RetryState, request: HttpRequest,
                                             response: HttpResponse | None = None,
                                             error: Exception | None = None) -> None:
        delay = _retry_after(response)
        self.on_rate_limited(api_method(request), 1.0 if delay is None else delay)
        await super().prepare_for_next_attempt_async(state=state, request=request, response=response, error=error)


def web_client(settings: SlackSettings, session: aiohttp.ClientSession | None = None, *,
               on_rate_limited: Callable[[str, float], None] = lambda method, seconds: None) -> AsyncWebClient:
    """The Web API client: one shared HTTP session. 429s are retried after Retry-After (Slack did nothing), and
    told to ``on_rate_limited``; 5xx answers and lost connections only for calls that are safe to send twice (not
    ``chat.postMessage``: ``SlackThread.post`` checks the thread instead)."""
    return AsyncWebClient(
        token=settings.bot_token,
        base_url=settings.api_url,
        session=session,
        logger=logging.getLogger("slack_sdk.web"),
        retry_handlers=[
            ConnectionErrorRetryHandler(max_retry_count=2),
            RateLimitRetryHandler(on_rate_limited, max_retry_count=2),
            ServerErrorRetryHandler(max_retry_count=2),
        ],
    )


def outcome_unknown(error: BaseException) -> bool:
    """Whether a failed call may have taken effect anyway: Slack answered 5xx, or the connection was lost (or
    timed out) after the request went out."""
    if isinstance(error, SlackApiError):
        return bool(error.response.status_code >= 500)
    if isinstance(error, aiohttp.ClientConnectorError):
        return False  # never connected: nothing was sent
    return isinstance(error, aiohttp.ServerDisconnectedError | aiohttp.ClientOSError | aiohttp.ServerConnectionError
                      | TimeoutError)


async def read_thread(client: AsyncWebClient, channel: str, thread_ts: str,
                      pages: int = HISTORY_PAGES) -> list[Any]:
    """A thread's messages, oldest first (``conversations.replies``, up to ``pages`` pages of 200, with their
    metadata)."""
    messages: list[Any] = []
    cursor: str | None = None
    for _ in range(pages):
        response = await client.conversations_replies(channel=channel, ts=thread_ts, limit=200, cursor=cursor,
                                                      include_all_metadata=True)
        page = response.get("messages")
        messages.extend(page if isinstance(page, list) else [])
        metadata = response.get("response_metadata")
        cursor = metadata.get("next_cursor") if isinstance(metadata, dict) else None
        if not cursor:
            break
    return messages


class SocketModeHandler(AsyncSocketModeHandler):
    """bolt's handler, except that an envelope it fails on is logged and acked (so Slack does not resend it)
    instead of surfacing as a traceback from the socket client."""

    async def handle(self, client: SocketModeClient, req: SocketModeRequest) -> None:  # type: ignore[override]
        try:
            await super().handle(client, req)
        except Exception as exc:
            log.warning("Slack: skipped envelope %s that slack-bolt could not process: %s: %s",
                        req.envelope_id, type(exc).__name__, exc)
            with contextlib.suppress(Exception):
                await client.send_socket_mode_response(SocketModeResponse(envelope_id=req.envelope_id))


def api_error(error: BaseException) -> str | None:
    """Slack's error code of a failed call (``ratelimited``, ``message_not_in_streaming_state``...), or None."""
    if not isinstance(error, SlackApiError) or not isinstance(error.response.data, dict):
        return None
    code = error.response.data.get("error")
    return code if isinstance(code, str) else None


def retry_after(error: BaseException) -> float | None:
    """The Retry-After (seconds) of a call Slack answered 429; None for any other failure."""
    if not isinstance(error, SlackApiError) or error.response.status_code != 429:
        return None
    for name, value in error.response.headers.items():
        if name.lower() == "retry-after":
            with contextlib.suppress(ValueError, TypeError):
                return max(0.0, float(value[0] if isinstance(value, list) else value))
    return 1.0


def describe_error(error: BaseException) -> str:
    if isinstance(error, SlackApiError):
        return f"HTTP {error.response.status_code} {error.response.get('error') or ''}".rstrip()
    return f"{type(error).__name__}: {error}" if str(error) else type(error).__name__
