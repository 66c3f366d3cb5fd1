"""The fake Slack's files, slash commands and shortcuts (``FakeSlack.more``), as Slack does them:

- ``upload`` keeps a file and gives the ``files[]`` object a message event carries (Slack Connect files: only
  ``file_access: check_file_info``). ``files.info`` answers with the whole object; ``url_private_download`` serves
  the bytes to a request with the bot token, and Slack's HTML sign-in page (status 200) to any other, or to every
  request when the app lacks the ``files:read`` scope (``files_read = False``).
- ``slash`` sends a ``slash_commands`` envelope; what the app answers through the ``response_url`` is kept in
  ``responses``.
- ``shortcut`` sends a message shortcut (``message_action``) on one of a channel's messages.
"""

from __future__ import annotations

import itertools
import json
import uuid
from typing import TYPE_CHECKING, Any

from aiohttp import web

if TYPE_CHECKING:
    from testkit.fake_slack import FakeSlack

_IDS = itertools.count(1)
SIGN_IN_PAGE = ("<!DOCTYPE html><html><head><title>Slack</title></head><body><h1>Sign in to Fake</h1>"
                "<form action=\"/signin\"></form></body></html>")


class FakeSlackMore:
    def __init__(self, slack: FakeSlack) -> None:
        self.slack = slack
        self.files: dict[str, dict[str, Any]] = {}  # id -> the whole file object
        self.data: dict[str, bytes] = {}  # id -> its bytes
        self.downloads: list[tuple[str, bool]] = []  # (file id, with the bot token)
        self.responses: list[dict[str, Any]] = []  # what came to response URLs, with "response_url"
        self.files_read = True  # the app has the files:read scope (False: Slack refuses it its files)

    def routes(self, app: web.Application) -> None:
        app.router.add_get("/files-pri/{team}-{file}/download/{name}", self._download)
        app.router.add_post("/respond/{id}", self._respond)

    # ---- files ----

    def upload(self, name: str, data: bytes, mimetype: str = "text/plain", *, check_file_info: bool = False,
               size: int | None = None) -> dict[str, Any]:
        """Keep a file; its object as a message event carries it (``size`` may lie about the bytes)."""
        file_id = f"F{next(_IDS):08d}"
        url = f"http://127.0.0.1:{self.slack.port}/files-pri/{self.slack.team_id}-{file_id}/download/{name}"
        whole = {"id": file_id, "created": 1_700_000_000, "timestamp": 1_700_000_000, "name": name, "title": name,
                 "mimetype": mimetype, "filetype": name.rsplit(".", 1)[-1], "pretty_type": "File",
                 "user": "U0001", "user_team": self.slack.team_id, "editable": False,
                 "size": len(data) if size is None else size, "mode": "hosted", "is_external": False,
                 "external_type": "", "is_public": True, "public_url_shared": False, "display_as_bot": False,
                 "username": "", "url_private": url.replace("/download/", "/"), "url_private_download": url,
                 "permalink": f"https://fake.slack.com/files/U0001/{file_id}/{name}", "file_access": "visible"}
        self.files[file_id], self.data[file_id] = whole, data
        if check_file_info:
            return {"id": file_id, "mode": "file_access", "file_access": "check_file_info"}
        return dict(whole)

    async def _files_info(self, args: dict[str, Any]) -> dict[str, Any]:
        if not self.files_read:
            return {"ok": False, "error": "missing_scope", "needed": "files:read", "provided": "chat:write"}
        found = self.files.get(str(args.get("file")))
        if found is None:
            return {"ok": False, "error": "file_not_found"}
        return {"ok": True, "file": dict(found), "comments": [], "response_metadata": {"next_cursor": ""}}

    async def _download(self, request: web.Request) -> web.StreamResponse:
        file_id = request.match_info["file"]
        authorized = request.headers.get("Authorization") == f"Bearer {self.slack.bot_token}" and self.files_read
        self.downloads.append((file_id, authorized))
        self.slack.changed()
        if not authorized or file_id not in self.data:
            return web.Response(text=SIGN_IN_PAGE, content_type="text/html")  # what Slack answers, status 200
        return web.Response(body=self.data[file_id], content_type="application/octet-stream")

    # ---- slash commands and shortcuts ----

    async def slash(self, text: str, *, user: str = "U0001", channel: str = "C0001",
                    command: str = "/engbot", socket: int = -1) -> str:
        """Run a slash command (sent on the ``socket``-th connection); returns the envelope id."""
        payload = {"token": "verification-token", "team_id": self.slack.team_id, "team_domain": "fake",
                   "channel_id": channel, "channel_name": "directmessage" if channel.startswith("D") else "general",
                   "user_id": user, "user_name": user.lower(), "command": command, "text": text,
                   "api_app_id": "A0001", "is_enterprise_install": "false",
                   "response_url": f"http://127.0.0.1:{self.slack.port}/respond/{uuid.uuid4().hex}",
                   "trigger_id": f"{next(_IDS)}.{uuid.uuid4().hex}"}
        envelope_id = str(uuid.uuid4())
        await self.slack.push_raw(json.dumps({"envelope_id": envelope_id, "type": "slash_commands",
                                              "accepts_response_payload": True, "payload": payload}), envelope_id,
                                  socket=socket)
        return envelope_id

    async def shortcut(self, message_ts: str, *, callback_id: str = "engbot_summarize", user: str = "U0001",
                       channel: str = "C0001") -> str:
        """Run a message shortcut on a channel's message; returns the envelope id."""
        message = next(m for m in self.slack.messages[channel] if m["ts"] == message_ts)
        payload = {"type": "message_action", "token": "verification-token", "action_ts": "1700000000.000001",
                   "team": {"id": self.slack.team_id, "domain": "fake"}, "user": {"id": user, "name": user.lower(),
                                                                                  "team_id": self.slack.team_id},
                   "channel": {"id": channel, "name": "general"}, "is_enterprise_install": False,
                   "callback_id": callback_id, "trigger_id": f"{next(_IDS)}.{uuid.uuid4().hex}",
                   "response_url": f"http://127.0.0.1:{self.slack.port}/respond/{uuid.uuid4().hex}",
                   "message_ts": message_ts, "message": dict(message)}
        envelope_id = str(uuid.uuid4())
        await self.slack.push_raw(json.dumps({"envelope_id": envelope_id, "type": "interactive",
                                              "accepts_response_payload": False, "payload": payload}), envelope_id)
        return envelope_id

    async def _respond(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self.responses.append({**body, "response_url": str(request.url)})
        self.slack.changed()
        return web.Response(text="ok")
