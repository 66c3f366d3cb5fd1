"""The Slack adapter: slack-bolt over Socket Mode (or HTTP), replies streamed into a placeholder in the thread.

The decisions live in ``bots/slack_events.py``; this module only moves bytes:

    event -> bolt acks it -> our task: parse, deduplicate, decide -> (thread history) -> engine.submit
          -> placeholder in the thread -> stream_reply edits it -> final text
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Coroutine, Mapping
from dataclasses import dataclass, fields
from typing import Any, Literal
from urllib.parse import urlsplit

import aiohttp
from aiohttp import web
from slack_bolt.adapter.aiohttp import to_aiohttp_response, to_bolt_request
from slack_bolt.adapter.socket_mode.async_handler import AsyncSocketModeHandler
from slack_bolt.app.async_app import AsyncApp
from slack_bolt.response import BoltResponse
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

from bots.base import (
    Messages,
    RateLimiter,
    Recent,
    StreamStyle,
    asubmit,
    rate_limit_from_environ,
    stream_reply,
)
from bots.slack_events import (
    AccessPolicy,
    BotIdentity,
    CheckThread,
    Deny,
    Ignore,
    Ignored,
    MalformedEvent,
    Notice,
    Question,
    SlackMessage,
    bot_in_thread,
    build_job,
    decide,
    event_of,
    find_post,
    parse_message,
    post_args,
    thread_turns,
    update_args,
)
from bots.text import markdown_to_mrkdwn
from engine.config import Env, mask
from engine.engine import JobHandle, JobSubmitter
from engine.errors import ConfigError

log = logging.getLogger("engbot.slack")

DEFAULT_API_URL = "https://slack.com/api/"
EVENTS_PATH = "/slack/events"
CONNECT_TIMEOUT_S = 30.0
HISTORY_PAGES = 5  # conversations.replies pages of 200: the model's context holds far less anyway
SEEN_TTL_S = 900.0  # Slack retries an event for about 5 minutes
THREADS_TTL_S = 7 * 24 * 3600.0
BOLT_APP_NAME = "slack_bolt.engbot"
POST_RECHECK_S = 1.0  # after a post with an unknown outcome, wait this long before reading the thread
# Web API methods that are safe to send twice (reads; writes whose repetition changes nothing). Not
# chat.postMessage: a retry after a 5xx or a lost connection can post the message twice.
IDEMPOTENT_METHODS = frozenset({
    "auth.test", "apps.connections.open", "chat.update", "chat.delete", "conversations.replies",
    "conversations.history", "conversations.info", "users.info",
})


class SlackConnectError(RuntimeError):
    """Slack could not be reached (network, DNS, TLS) or the socket did not connect in time."""


@dataclass(frozen=True)
class SlackSettings:
    """The Slack adapter's settings, read once from the environment. Tokens are masked in ``repr``."""

    bot_token: str
    app_token: str | None = None
    mode: Literal["socket", "http"] = "socket"
    signing_secret: str | None = None
    http_port: int = 3000
    http_host: str = "0.0.0.0"
    api_url: str = DEFAULT_API_URL
    follow_threads: bool = True
    allowed_channels: frozenset[str] = frozenset()
    allowed_users: frozenset[str] = frozenset()
    rate_limit_per_user: int = 5
    rate_limit_period_s: float = 60.0
    # not settings: tuning the tests change
    message_limit: int = 3000  # characters per Slack message as sent (mrkdwn); chat.update refuses ~3,500+
    edit_interval_s: float = 1.0  # chat.update is rate tier 3: about one edit a second

    def __repr__(self) -> str:
        shown = []
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, str) and any(m in f.name for m in ("token", "secret")):
                value = mask(f.name, value)
            shown.append(f"{f.name}={value!r}")
        return f"SlackSettings({', '.join(shown)})"

    @property
    def policy(self) -> AccessPolicy:
        return AccessPolicy(self.follow_threads, self.allowed_channels, self.allowed_users)

    @classmethod
    def from_environ(cls, environ: Mapping[str, str]) -> SlackSettings | None:
        """Read and check the Slack settings. None when neither SLACK_BOT_TOKEN nor SLACK_APP_TOKEN is set (Slack
        is off); ``ConfigError`` naming the variable when a value is missing or malformed."""
        env = Env(environ)
        bot_token, app_token = env.raw("SLACK_BOT_TOKEN") or "", env.raw("SLACK_APP_TOKEN") or ""
        if not bot_token and not app_token:
            return None
        mode = env.choice("SLACK_MODE", "socket", ("socket", "http"))
        _check_token("SLACK_BOT_TOKEN", bot_token, "xoxb-", "the Bot User OAuth Token (OAuth & Permissions)")
        signing_secret = env.raw("SLACK_SIGNING_SECRET") or None
        if mode == "socket" or app_token:
            _check_token("SLACK_APP_TOKEN", app_token, "xapp-",
                         "an app-level token with the connections:write scope (Basic Information > App-Level "
                         "Tokens); Socket Mode needs it")
        if mode == "http" and not signing_secret:
            raise ConfigError("SLACK_SIGNING_SECRET", "", "required when SLACK_MODE=http (Basic Information > "
                              "Signing Secret): requests are verified with it")
        api_url = env.raw("SLACK_API_URL") or DEFAULT_API_URL
        if not api_url.startswith(("https://", "http://")):
            raise ConfigError("SLACK_API_URL", api_url, "expected an http(s) URL such as https://slack.com/api/")
        limiter = rate_limit_from_environ(environ)
        return cls(
            bot_token=bot_token,
            app_token=app_token or None,
            mode="http" if mode == "http" else "socket",
            signing_secret=signing_secret,
            http_port=env.int("SLACK_HTTP_PORT", 3000, lo=0, hi=65535),
            http_host=env.raw("SLACK_HTTP_HOST") or "0.0.0.0",
            api_url=api_url if api_url.endswith("/") else api_url + "/",
            follow_threads=env.bool("SLACK_FOLLOW_THREADS", True),
            allowed_channels=_ids(env, "SLACK_ALLOWED_CHANNELS", "CGD", "channel IDs such as C0123ABCD"),
            allowed_users=_ids(env, "SLACK_ALLOWED_USERS", "UW", "user IDs such as U0123ABCD"),
            rate_limit_per_user=limiter.limit,
            rate_limit_period_s=limiter.period_s,
        )


def _check_token(name: str, value: str, prefix: str, what: str) -> None:
    if not value:
        raise ConfigError(name, "", f"missing: set it to {what}")
    if not value.startswith(prefix) or any(c.isspace() for c in value):
        raise ConfigError(name, mask(name, value), f"expected a token starting with {prefix}: {what}")


def _ids(env: Env, name: str, first_letters: str, example: str) -> frozenset[str]:
    ids = frozenset(str(value) for value in env.csv(name))
    for value in ids:
        if not (value[0] in first_letters and value.isalnum() and value.isupper()):
            raise ConfigError(name, ",".join(sorted(ids)), f"expected comma-separated {example} (names such as "
                              "#general do not work: copy the ID from the channel or profile details)")
    return ids


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


def web_client(settings: SlackSettings, session: aiohttp.ClientSession | None = None) -> AsyncWebClient:
    """The Web API client: one shared HTTP session. 429s are retried after Retry-After (Slack did nothing);
    5xx answers and lost connections only for calls that are safe to send twice (not ``chat.postMessage``:
    ``SlackThread.post`` checks the thread instead)."""
    return AsyncWebClient(
        token=settings.bot_token,
        base_url=settings.api_url,
        session=session,
        logger=logging.getLogger("slack_sdk.web"),
        retry_handlers=[
            ConnectionErrorRetryHandler(max_retry_count=2),
            AsyncRateLimitErrorRetryHandler(max_retry_count=2),
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


async def read_thread(client: AsyncWebClient, channel: str, thread_ts: str) -> list[Any]:
    """A thread's messages, oldest first (``conversations.replies``, up to HISTORY_PAGES pages)."""
    messages: list[Any] = []
    cursor: str | None = None
    for _ in range(HISTORY_PAGES):
        response = await client.conversations_replies(channel=channel, ts=thread_ts, limit=200, cursor=cursor)
        page = response.get("messages")
        messages.extend(page if isinstance(page, list) else [])
        metadata = response.get("response_metadata")
        cursor = metadata.get("next_cursor") if isinstance(metadata, dict) else None
        if not cursor:
            break
    return messages


class _SocketModeHandler(AsyncSocketModeHandler):
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


class SlackThread:
    """A ``Sink``: posts and edits the bot's messages in one thread.

    ``chat.postMessage`` is not idempotent, so a post that fails in a way that leaves its outcome unknown (5xx,
    lost connection) is not simply sent again: the thread is read, and a message of the bot with that text, newer
    than ``after`` and not one ``posted`` knows, is taken as the post that arrived after all; if there is none,
    the post is sent once more.
    """

    def __init__(self, client: AsyncWebClient, channel: str, thread_ts: str, me: BotIdentity, *, after: str = "",
                 posted: Recent[tuple[str, str], bool] | None = None) -> None:
        self.client, self.channel, self.thread_ts, self.me = client, channel, thread_ts, me
        self.after = after
        self.posted: Recent[tuple[str, str], bool] = posted if posted is not None else Recent(THREADS_TTL_S, 20_000)

    async def post(self, text: str) -> str:
        args = post_args(self.channel, self.thread_ts, text)
        try:
            response = await self.client.chat_postMessage(**args)
        except Exception as exc:
            if not outcome_unknown(exc):
                raise
            log.warning("Slack: posting in %s %s failed (%s): checking the thread before posting again",
                        self.channel, self.thread_ts, _describe(exc))
            await asyncio.sleep(POST_RECHECK_S)
            try:
                history = await read_thread(self.client, self.channel, self.thread_ts)
            except Exception as read_error:
                log.warning("Slack: could not check thread %s %s (%s): not posting again, to post no duplicate",
                            self.channel, self.thread_ts, _describe(read_error))
                raise exc from None
            found = find_post(history, self.me, text, after=self.after,
                              known=lambda ts: self.posted.get((self.channel, ts)) is not None)
            if found is not None:
                log.info("Slack: the message had been posted after all (%s)", found)
                self.posted.put((self.channel, found), True)
                return found
            response = await self.client.chat_postMessage(**args)
        ts = str(response["ts"])
        self.posted.put((self.channel, ts), True)
        return ts

    async def edit(self, message_id: str, text: str) -> None:
        await self.client.chat_update(**update_args(self.channel, message_id, text))

    async def delete(self, message_id: str) -> None:
        await self.client.chat_delete(channel=self.channel, ts=message_id)


class SlackAdapter:
    """Answers Slack mentions, DMs and follow-ups in threads it answered in, with the engine's jobs."""

    name = "slack"

    def __init__(self, settings: SlackSettings, engine: JobSubmitter) -> None:
        self.settings = settings
        self.engine = engine
        self.me: BotIdentity | None = None
        self.client: AsyncWebClient | None = None
        self.style = StreamStyle(limit=settings.message_limit, edit_interval_s=settings.edit_interval_s,
                                 render=markdown_to_mrkdwn)
        self._limiter = RateLimiter(settings.rate_limit_per_user, settings.rate_limit_period_s)
        self._seen: Recent[tuple[str, str], bool] = Recent(SEEN_TTL_S, 20_000)
        self._threads: Recent[tuple[str, str], bool] = Recent(THREADS_TTL_S, 20_000)  # thread -> bot posted in it
        self._posted: Recent[tuple[str, str], bool] = Recent(SEEN_TTL_S, 20_000)  # (channel, ts) of our posts
        self._tasks: set[asyncio.Task[None]] = set()
        self._session: aiohttp.ClientSession | None = None
        self._socket: _SocketModeHandler | None = None
        self._runner: web.AppRunner | None = None
        self._taking = False

    def __repr__(self) -> str:
        return f"<SlackAdapter mode={self.settings.mode} connected={self.connected} in_flight={self.in_flight}>"

    @property
    def in_flight(self) -> int:
        """Events being handled now (most of them: answers being streamed)."""
        return len(self._tasks)

    @property
    def connected(self) -> bool:
        """Socket Mode: the WebSocket is open; HTTP mode: the server is listening."""
        if not self._taking:
            return False
        if self._socket is not None:
            session = self._socket.client.current_session
            return session is not None and not session.closed and not self._socket.client.closed
        return self._runner is not None

    @property
    def http_port(self) -> int | None:
        """The port the HTTP server listens on (SLACK_HTTP_PORT=0 picks a free one)."""
        if self._runner is None or not self._runner.addresses:
            return None
        return int(self._runner.addresses[0][1])

    async def start(self) -> None:
        """Check the tokens, then connect Socket Mode (or start the HTTP server); returns once events can
        arrive. Raises ``ConfigError`` naming the token Slack rejected, ``SlackConnectError`` when Slack cannot
        be reached."""
        self._session = aiohttp.ClientSession()
        self.client = web_client(self.settings, self._session)
        try:
            auth = await self._call("SLACK_BOT_TOKEN", self.settings.bot_token, self.client.auth_test())
            self.me = BotIdentity(user_id=str(auth["user_id"]), bot_id=auth.get("bot_id"))
            app = self._bolt_app(self.client)
            if self.settings.mode == "socket":
                await self._connect_socket(app)
            else:
                await self._serve_http(app)
        except BaseException:
            await self._close_clients()
            raise
        self._taking = True
        log.info("Slack: connected as bot user %s (%s mode, API %s)", self.me.user_id, self.settings.mode,
                 self.settings.api_url)

    async def _call(self, variable: str, token: str, call: Coroutine[Any, Any, Any]) -> Any:
        """Await a call that checks ``token``, mapping Slack's and the network's errors to ours."""
        try:
            return await call
        except SlackApiError as exc:
            error = exc.response.get("error") if isinstance(exc.response.data, dict) else None
            if error in ("invalid_auth", "not_authed", "account_inactive", "token_revoked", "token_expired",
                         "not_allowed_token_type"):
                raise ConfigError(variable, mask(variable, token), f"Slack rejected the token: {error}") from None
            raise SlackConnectError(f"Slack answered {error or exc.response.status_code} to a check of {variable}"
                                    ) from None
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            raise SlackConnectError(f"cannot reach the Slack API at {self.settings.api_url}: "
                                    f"{type(exc).__name__}: {exc}") from None

    def _bolt_app(self, client: AsyncWebClient) -> AsyncApp:
        app = AsyncApp(
            client=client,
            # bolt names loggers after the app and sets their level to its own logger's on every event: a name
            # inside slack_bolt's hierarchy keeps its hands off ours ("engbot" would silence engbot.* below WARNING)
            name=BOLT_APP_NAME,
            logger=logging.getLogger("slack_bolt"),
            signing_secret=self.settings.signing_secret,
            request_verification_enabled=self.settings.mode == "http",
        )

        async def on_event(body: dict[str, Any]) -> None:
            # bolt has acked (or will ack) the event; the answer runs on its own task either way
            self._spawn(self._on_event(body, time.monotonic()))

        async def on_error(error: Exception) -> BoltResponse:
            # bolt's own middleware trips over some malformed payloads: log, and ack so Slack does not retry it
            log.warning("Slack: skipped an event slack-bolt could not process: %s: %s", type(error).__name__, error)
            log.debug("Slack: the error was", exc_info=error)
            return BoltResponse(status=200, body="")

        app.event("app_mention")(on_event)
        app.event("message")(on_event)
        app.error(on_error)
        return app

    async def _connect_socket(self, app: AsyncApp) -> None:
        assert self.client is not None and self.settings.app_token is not None
        # Ask for the first socket URL ourselves: the socket client retries a rejected app token forever.
        opened = await self._call("SLACK_APP_TOKEN", self.settings.app_token,
                                  self.client.apps_connections_open(app_token=self.settings.app_token))
        self._socket = _SocketModeHandler(app, app_token=self.settings.app_token, web_client=self.client,
                                              logger=logging.getLogger("slack_sdk.socket_mode"))
        self._socket.client.wss_uri = str(opened["url"])
        try:
            await asyncio.wait_for(self._socket.connect_async(), CONNECT_TIMEOUT_S)  # type: ignore[no-untyped-call]
        except TimeoutError:
            raise SlackConnectError(f"the Socket Mode connection did not open within {CONNECT_TIMEOUT_S:.0f} s"
                                    ) from None

    async def _serve_http(self, app: AsyncApp) -> None:
        async def events(request: web.Request) -> web.Response:
            try:
                return await to_aiohttp_response(await app.async_dispatch(await to_bolt_request(request)))
            except Exception as exc:
                log.warning("Slack: skipped a request slack-bolt could not process: %s: %s", type(exc).__name__, exc)
                return web.Response(status=200)

        web_app = web.Application()
        web_app.router.add_post(EVENTS_PATH, events)
        self._runner = web.AppRunner(web_app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.settings.http_host, self.settings.http_port)
        try:
            await site.start()
        except OSError as exc:
            raise SlackConnectError(f"cannot listen on {self.settings.http_host}:{self.settings.http_port} "
                                    f"(SLACK_HTTP_HOST/SLACK_HTTP_PORT): {exc}") from None
        log.info("Slack: receiving events at http://%s:%d%s", self.settings.http_host, self.http_port, EVENTS_PATH)

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def stop_intake(self) -> None:
        """Take no more events: close the socket (or stop the HTTP server). Replies in flight go on."""
        self._taking = False
        if self._socket is not None:
            with contextlib.suppress(Exception):
                await self._socket.close_async()  # type: ignore[no-untyped-call]
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()

    async def close(self, timeout_s: float = 60.0) -> None:
        """Stop intake, wait up to ``timeout_s`` for the replies in flight (an engine shutting down ends them
        with a final "restarting" edit), then close the HTTP clients."""
        await self.stop_intake()
        if self._tasks:
            _, pending = await asyncio.wait(set(self._tasks), timeout=timeout_s)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        await self._close_clients()

    async def _close_clients(self) -> None:
        if self._socket is not None and not self._socket.client.closed:
            with contextlib.suppress(Exception):
                await self._socket.close_async()  # type: ignore[no-untyped-call]
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()
        if self._session is not None:
            await self._session.close()

    # ---- one event ----

    async def _on_event(self, body: Any, received: float) -> None:
        assert self.me is not None and self.client is not None
        try:
            parsed = parse_message(event_of(body), self.me)
        except MalformedEvent as exc:
            event_id = body.get("event_id") if isinstance(body, Mapping) else None
            log.warning("Slack: skipped a malformed event %s: %s", event_id or "(no id)", exc)
            return
        if isinstance(parsed, Ignored):
            return
        message = parsed
        if not self._seen.first_time(message.key, True):
            log.debug("Slack: %s %s delivered again; answered once", message.channel, message.ts)
            return
        thread = SlackThread(self.client, message.channel, message.reply_thread_ts, self.me, after=message.ts,
                             posted=self._posted)
        handle: JobHandle | None = None
        placeholder: str | None = None
        try:
            history: list[Any] | None = None
            decision = decide(message, self.me, self.settings.policy)
            if isinstance(decision, CheckThread):
                thread_key = (message.channel, message.reply_thread_ts)
                ours = self._threads.get(thread_key)
                if ours is None:
                    history = await self._history(message)
                    ours = history is not None and bot_in_thread(history, self.me)
                    if history is not None:  # a failed read is no answer: ask again next time
                        self._threads.put(thread_key, ours)
                decision = decide(message, self.me, self.settings.policy, thread_is_ours=ours)
            if isinstance(decision, Ignore):
                return
            if isinstance(decision, Deny):
                log.info("Slack: not answering: %s", decision.reason)
                return
            if isinstance(decision, Notice):
                await self._reply(message, thread, decision.text)
                return
            assert isinstance(decision, Question)
            wait = self._limiter.check(message.user)
            if wait:
                log.info("Slack: user %s is over the rate limit", message.user)
                await self._reply(message, thread, Messages.RATE_LIMITED.format(seconds=math.ceil(wait)))
                return
            if message.in_thread and history is None:
                history = await self._history(message)
            job = build_job(message, thread_turns(history or [], message, decision.text, self.me,
                                                  allowed_users=self.settings.allowed_users))
            outcome = await asubmit(self.engine, job)
            if isinstance(outcome, str):
                if outcome:
                    await self._reply(message, thread, outcome)
                return
            handle = outcome
            text = Messages.QUEUED.format(position=handle.position) if handle.position else Messages.THINKING
            placeholder = await self._reply(message, thread, text)
            log.debug("Slack: placeholder %.0f ms after the event", (time.monotonic() - received) * 1000)
            await stream_reply(handle, thread, placeholder, self.style, placeholder=text)
        except Exception:
            log.exception("Slack: answering %s %s failed", message.channel, message.ts)
            with contextlib.suppress(Exception):
                if placeholder is not None:
                    await thread.edit(placeholder, Messages.FAILED)
                else:
                    await thread.post(Messages.FAILED)
        finally:
            if handle is not None and not handle.done:
                handle.cancel()

    async def _reply(self, message: SlackMessage, thread: SlackThread, text: str) -> str:
        ts = await thread.post(text)
        self._threads.put((message.channel, message.reply_thread_ts), True)
        return ts

    async def _history(self, message: SlackMessage) -> list[Any] | None:
        """The thread's messages, oldest first; None (logged) when Slack does not give them."""
        assert self.client is not None
        try:
            return await read_thread(self.client, message.channel, message.reply_thread_ts)
        except (SlackApiError, aiohttp.ClientError, OSError, TimeoutError) as exc:
            log.warning("Slack: could not read thread %s %s: %s", message.channel, message.reply_thread_ts, exc)
            return None


def _describe(error: BaseException) -> str:
    if isinstance(error, SlackApiError):
        return f"HTTP {error.response.status_code} {error.response.get('error') or ''}".rstrip()
    return f"{type(error).__name__}: {error}" if str(error) else type(error).__name__
