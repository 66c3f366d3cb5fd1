"""The Slack adapter: slack-bolt over Socket Mode (or HTTP); each question answered in its thread through the
shared answer flow (``bots/answer.py``).

    event -> bolt acks it -> our task: parse, deduplicate, decide (``events.py``) -> AnswerFlow -> thread

This module only moves bytes: the decisions are ``events.py``'s, the replies ``sink.py``'s.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from collections.abc import Coroutine, Mapping
from typing import Any

import aiohttp
from aiohttp import web
from slack_bolt.adapter.aiohttp import to_aiohttp_response, to_bolt_request
from slack_bolt.app.async_app import AsyncApp
from slack_bolt.logger.messages import warning_client_prioritized_and_token_skipped
from slack_bolt.response import BoltResponse
from slack_sdk.errors import SlackApiError
from slack_sdk.web.async_client import AsyncWebClient

from bots.answer import AnswerFlow, Asked, Question
from bots.channels.effective import Place
from bots.channels.lookup import ChannelSettings
from bots.decisions import Ask, Ignore, Notice
from bots.limits import RateLimiter, Recent
from bots.presses import Press
from bots.slack.assistant import assistant_event, prompt_args, title_for
from bots.slack.budget import EditBudget
from bots.slack.client import SlackConnectError, SocketModeHandler, describe_error, read_thread, web_client
from bots.slack.commands import SUMMARIZE_CALLBACK, SlackCommands
from bots.slack.events import (
    SUMMARY_EVENT,
    BotIdentity,
    CheckThread,
    Ignored,
    MalformedEvent,
    SlackMessage,
    bot_in_thread,
    decide,
    event_of,
    parse_message,
    parse_press,
    source,
    team_of,
    thread_turns,
)
from bots.slack.files import SlackDownloads, files_of
from bots.slack.native import NativeStreaming
from bots.slack.settings import SlackSettings
from bots.slack.sink import THREADS_TTL_S, SlackTarget, SlackThread
from bots.stream import StreamStyle
from bots.summarize import Summaries
from bots.text import markdown_to_mrkdwn
from engine.api import Submitter
from engine.config import mask
from engine.errors import ConfigError

log = logging.getLogger("engbot.slack")

EVENTS_PATH = "/slack/events"
CONNECT_TIMEOUT_S = 30.0
SEEN_TTL_S = 900.0  # Slack retries an event for about 5 minutes
BOLT_APP_NAME = "slack_bolt.engbot"


def _not_token_skipped(record: logging.LogRecord) -> bool:
    return record.getMessage() != warning_client_prioritized_and_token_skipped()


class SlackAdapter:
    """Answers Slack mentions, DMs and follow-ups in threads it answered in, with the engine's jobs."""

    name = "slack"

    def __init__(self, settings: SlackSettings, submitter: Submitter, channels: ChannelSettings | None = None
                 ) -> None:
        self.settings = settings
        self.submitter = submitter
        self.channels = channels or ChannelSettings()  # what applies in each channel (ENGBOT_CONFIG, personas)
        self.me: BotIdentity | None = None
        self.client: AsyncWebClient | None = None
        self.downloads: SlackDownloads | None = None
        style = StreamStyle(limit=settings.message_limit, edit_interval_s=settings.edit_interval_s,
                            render=markdown_to_mrkdwn)
        self.flow = AnswerFlow("slack", submitter,
                               RateLimiter(settings.rate_limit_per_user, settings.rate_limit_period_s), style,
                               mention=lambda user: f"<@{user}>", thinking_tags=self.channels.tags)
        self.commands = SlackCommands(settings, self.channels, Summaries(self.flow), client=self._client,
                                      me=self._me, thread=self._summary_thread)
        # chat.update is rate tier 3 for the whole workspace: every answer's edits share one budget
        self.update_budget = EditBudget(*settings.update_budget)
        self.native = NativeStreaming(settings, style)  # Slack's own streaming (SLACK_STREAMING), and its budgets
        # assistant threads (assistant_thread_started) whose first question has not given them a title yet
        self._untitled: Recent[tuple[str, str], bool] = Recent(THREADS_TTL_S, 20_000)
        self._with_controls: Recent[tuple[str, str], bool] = Recent(THREADS_TTL_S, 20_000)
        self._seen: Recent[tuple[str, str], bool] = Recent(SEEN_TTL_S, 20_000)
        self._threads: Recent[tuple[str, str], bool] = Recent(THREADS_TTL_S, 20_000)  # thread -> bot posted in it
        self._posted: Recent[tuple[str, str], bool] = Recent(SEEN_TTL_S, 20_000)  # (channel, ts) of our posts
        self._tasks: set[asyncio.Task[None]] = set()
        self._session: aiohttp.ClientSession | None = None
        self._socket: SocketModeHandler | None = None
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
        self.client = web_client(self.settings, self._session, on_rate_limited=self._slowed_down)
        self.downloads = SlackDownloads(self.client, self._session, self.settings.bot_token, self.settings.api_url)
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
        bolt_log = logging.getLogger("slack_bolt")
        # bolt reads SLACK_BOT_TOKEN from the process environment on its own and then warns, on every start, that
        # the client we give it (built from that very token) wins: true, and nothing to act on
        bolt_log.addFilter(_not_token_skipped)
        try:
            app = AsyncApp(
                client=client,
                # bolt names loggers after the app and sets their level to its own logger's on every event: a name
                # inside slack_bolt's hierarchy keeps its hands off ours ("engbot" would silence engbot.* below
                # WARNING)
                name=BOLT_APP_NAME,
                logger=bolt_log,
                signing_secret=self.settings.signing_secret,
                request_verification_enabled=self.settings.mode == "http",
            )
        finally:
            bolt_log.removeFilter(_not_token_skipped)

        async def on_event(body: dict[str, Any]) -> None:
            # bolt has acked (or will ack) the event; the answer runs on its own task either way
            self._spawn(self._on_event(body, time.monotonic()))

        async def on_error(error: Exception) -> BoltResponse:
            # bolt's own middleware trips over some malformed payloads: log, and ack so Slack does not retry it
            log.warning("Slack: skipped an event slack-bolt could not process: %s: %s", type(error).__name__, error)
            log.debug("Slack: the error was", exc_info=error)
            return BoltResponse(status=200, body="")

        async def on_action(ack: Any, body: dict[str, Any]) -> None:
            await ack()  # within Slack's 3 s, before anything that can wait; the press runs on its own task
            self._spawn(self._on_press(body))

        async def on_assistant_event(body: dict[str, Any]) -> None:
            self._spawn(self._on_assistant_event(body))

        async def on_command(ack: Any, body: dict[str, Any], respond: Any) -> None:
            await ack()  # (the reply follows through the response URL, seen by the one who ran it)
            self._spawn(self._guarded("the /engbot command", self.commands.persona(body, respond)))

        async def on_shortcut(ack: Any, body: dict[str, Any]) -> None:
            await ack()
            self._spawn(self._guarded("a thread summary", self.commands.summarize(body)))

        app.event("app_mention")(on_event)
        app.event("message")(on_event)
        # the AI surface: plain listeners rather than bolt's AsyncAssistant, which would take the messages of
        # assistant threads away from the one answer path above (or, left without a user_message listener,
        # only add its thread-context store: chat.update calls on our first reply that we have no use for)
        for name in ("assistant_thread_started", "assistant_thread_context_changed", "app_home_opened"):
            app.event(name)(on_assistant_event)
        app.action(re.compile(r"^engbot:"))(on_action)
        app.command(re.compile(r"^/"))(on_command)  # (only this app's own commands reach it: /engbot)
        app.shortcut(SUMMARIZE_CALLBACK)(on_shortcut)
        app.error(on_error)
        return app

    async def _connect_socket(self, app: AsyncApp) -> None:
        assert self.client is not None and self.settings.app_token is not None
        # Ask for the first socket URL ourselves: the socket client retries a rejected app token forever.
        opened = await self._call("SLACK_APP_TOKEN", self.settings.app_token,
                                  self.client.apps_connections_open(app_token=self.settings.app_token))
        self._socket = SocketModeHandler(app, app_token=self.settings.app_token, web_client=self.client,
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

    async def _guarded(self, what: str, coro: Coroutine[Any, Any, None]) -> None:
        try:
            await coro
        except Exception:
            log.exception("Slack: %s failed", what)

    def _client(self) -> AsyncWebClient:
        assert self.client is not None
        return self.client

    def _me(self) -> BotIdentity:
        assert self.me is not None
        return self.me

    def _summary_thread(self, channel: str, thread_ts: str) -> SlackThread:
        """Where a summary goes: the thread, its posts marked as a summary (the thread does not become one the bot
        follows)."""
        return SlackThread(self._client(), channel, thread_ts, self._me(), posted=self._posted,
                           update_budget=self.update_budget, with_controls=self._with_controls,
                           metadata={"event_type": SUMMARY_EVENT, "event_payload": {"kind": "summary"}})

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
                             posted=self._posted, update_budget=self.update_budget, with_controls=self._with_controls)
        thread_key = (message.channel, message.reply_thread_ts)
        team = team_of(body)
        target = SlackTarget(thread, lambda: self._threads.put(thread_key, True), received,
                             native=lambda: self.native.answer(thread, user=message.user, team=team, dm=message.is_dm))
        try:
            history: list[Any] | None = None
            decision = decide(message, self.me, self.settings.policy)
            if isinstance(decision, CheckThread):
                ours = self._threads.get(thread_key)
                if ours is None:
                    history = await self._history(message)
                    ours = history is not None and bot_in_thread(history, self.me)
                    if history is not None:  # a failed read is no answer: ask again next time
                        self._threads.put(thread_key, ours)
                decision = decide(message, self.me, self.settings.policy, thread_is_ours=ours)
            if isinstance(decision, Ignore):
                if decision.log:
                    log.info("Slack: not answering: %s", decision.reason)
                return
            if isinstance(decision, Notice):
                await target.notice(decision.text)
                return
            assert isinstance(decision, Ask)
            me, prompt, known = self.me, decision.prompt, history
            effective = await self.channels.effective(Place("slack", message.channel, guild=team, dm=message.is_dm))
            if not effective.allows(message.user):
                log.info("Slack: not answering user %s in %s: not in its allowed_users (ENGBOT_CONFIG)", message.user,
                         message.channel)
                return
            if message.is_dm and (not message.in_thread or self._untitled.get(thread_key)):
                self._untitled.put(thread_key, False)  # a new conversation: its first question names it
                self._spawn(self._set_title(message.channel, message.reply_thread_ts, prompt or "Files"))
            files = files_of(event_of(body)) if message.has_files else []

            async def turns() -> Asked:
                read = known if known is not None or not message.in_thread else await self._history(message)
                question, notes = prompt, tuple[str, ...]()
                if files:
                    assert self.downloads is not None
                    incoming = await self.downloads.incoming(files)
                    question, notes = await self.channels.with_files(prompt, incoming, effective)
                return Asked(thread_turns(read or [], message, question, me, allowed_users=self.settings.allowed_users,
                                          max_chars=effective.history_chars), notes)

            await self.flow.answer(Question(user=message.user, source=source(message), turns=turns,
                                            system_prompt=effective.job_system_prompt, params=effective.job_params,
                                            thinking=effective.show_thinking, model=effective.job_model), target)
        except Exception:
            log.exception("Slack: answering %s %s failed", message.channel, message.ts)

    # ---- the AI surface: suggested prompts, titles ----

    async def _on_assistant_event(self, body: Any) -> None:
        """A new assistant thread, or the agent view's Messages tab opened: offer the suggested prompts."""
        assert self.client is not None
        try:
            offer = assistant_event(event_of(body))
        except MalformedEvent as exc:
            log.warning("Slack: skipped a malformed assistant event: %s", exc)
            return
        if offer is None:
            return
        if offer.thread_ts is not None:
            self._untitled.put((offer.channel, offer.thread_ts), True)
        if not self.settings.suggested_prompts:
            return
        try:
            await self.client.assistant_threads_setSuggestedPrompts(
                channel_id=offer.channel, thread_ts=offer.thread_ts,
                prompts=prompt_args(self.settings.suggested_prompts))
        except Exception as exc:
            log.info("Slack: could not set the suggested prompts in %s (%s)", offer.channel, describe_error(exc))

    async def _set_title(self, channel: str, thread_ts: str, question: str) -> None:
        assert self.client is not None
        try:
            await self.client.assistant_threads_setTitle(channel_id=channel, thread_ts=thread_ts,
                                                         title=title_for(question))
        except Exception as exc:
            log.debug("Slack: could not set the title of thread %s %s (%s)", channel, thread_ts, describe_error(exc))

    def _slowed_down(self, method: str, seconds: float) -> None:
        """Slack answered 429: for chat.update, the whole workspace's edits wait (the budget was too generous)."""
        log.warning("Slack: %s is rate limited for %.0f s", method, seconds)
        if method == "chat.update":
            self.update_budget.pause(seconds)

    async def _on_press(self, body: Any) -> None:
        """A press on an answer's button: what it asks, or a word only the presser sees."""
        assert self.client is not None
        press = parse_press(body)
        if press is None:
            log.warning("Slack: skipped a malformed button press")
            return
        client = self.client

        async def tell(text: str) -> None:
            await client.chat_postEphemeral(channel=press.channel, user=press.user, text=text,
                                            thread_ts=press.thread_ts)

        try:
            await self.flow.press(Press(press.action, press.job_id, press.user,
                                        admin=press.user in self.settings.admin_users), tell)
        except Exception:
            log.exception("Slack: a %s press on job %s failed", press.action, press.job_id[:8])

    async def _history(self, message: SlackMessage) -> list[Any] | None:
        """The thread's messages, oldest first; None (logged) when Slack does not give them."""
        assert self.client is not None
        try:
            return await read_thread(self.client, message.channel, message.reply_thread_ts)
        except (SlackApiError, aiohttp.ClientError, OSError, TimeoutError) as exc:
            log.warning("Slack: could not read thread %s %s: %s", message.channel, message.reply_thread_ts, exc)
            return None
