"""Files shared in a Slack message, as ``bots.files`` reads them: ``files[]`` of the event, ``files.info`` where
Slack sends only ``file_access: check_file_info`` (Slack Connect), the download from ``url_private_download``
with the bot token (``files:read``), the size checked before and during the download. Slack answers a download
without a valid token with its HTML sign-in page (status 200): that is taken as the failed authorization it is."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import aiohttp
from slack_sdk.web.async_client import AsyncWebClient

from bots.files.read import FetchError, Incoming
from bots.files.sniff import size_text
from bots.slack.client import api_error, describe_error

log = logging.getLogger("engbot.slack")

DOWNLOAD_TIMEOUT_S = 60.0
NO_SCOPE = "the bot may not read files (add the files:read scope to the Slack app and reinstall it)"


@dataclass(frozen=True, slots=True)
class SlackFile:
    """A file of a message event, as far as the bot cares."""

    id: str
    name: str
    mimetype: str = ""
    size: int | None = None
    url: str | None = None  # url_private_download
    mode: str = "hosted"  # "hosted", "snippet", "external" (Google Drive...), "tombstone" (deleted)
    check_info: bool = False  # the event carries only the id: ask files.info

    @classmethod
    def parse(cls, item: Mapping[str, Any]) -> SlackFile | None:
        ident = item.get("id")
        if not isinstance(ident, str) or not ident:
            return None
        size = item.get("size")
        url = item.get("url_private_download") or item.get("url_private")
        return cls(id=ident, name=str(item.get("name") or item.get("title") or ident),
                   mimetype=str(item.get("mimetype") or ""), size=size if isinstance(size, int) else None,
                   url=url if isinstance(url, str) and url else None, mode=str(item.get("mode") or "hosted"),
                   check_info=item.get("file_access") == "check_file_info")


def files_of(event: Mapping[str, Any]) -> list[SlackFile]:
    """The files of a message (or app_mention) event, in order."""
    items = event.get("files")
    if not isinstance(items, list):
        return []
    return [f for item in items if isinstance(item, Mapping) and (f := SlackFile.parse(item)) is not None]


class SlackDownloads:
    """Downloads of one adapter: its Web API client, HTTP session and bot token, which goes only to Slack."""

    def __init__(self, client: AsyncWebClient, session: aiohttp.ClientSession, token: str, api_url: str) -> None:
        self.client, self.session, self.token = client, session, token
        self.api_host = urlsplit(api_url).hostname or ""

    async def incoming(self, files: Sequence[SlackFile]) -> list[Incoming]:
        """The files as ``bots.files`` reads them; those the event names only by id are looked up first
        (``files.info``), so their names and sizes are known before any download."""
        out = []
        for file in files:
            failed: FetchError | None = None
            if file.check_info:
                try:
                    file = await self._info(file)
                except FetchError as exc:
                    failed = exc
            out.append(Incoming(file.name, file.size, file.mimetype, self._fetcher(file, failed)))
        return out

    def _fetcher(self, file: SlackFile, failed: FetchError | None = None) -> Callable[[int], Awaitable[bytes]]:
        async def fetch(max_bytes: int) -> bytes:
            if failed is not None:
                raise failed
            return await self.fetch(file, max_bytes)

        return fetch

    async def fetch(self, file: SlackFile, max_bytes: int) -> bytes:
        if file.mode == "tombstone":
            raise FetchError("it was deleted")
        if file.mode == "external":
            raise FetchError("it is stored outside Slack")
        if file.check_info or file.url is None:
            file = await self._info(file)
        if file.size is not None and file.size > max_bytes:
            raise FetchError(f"it is {size_text(file.size)}: files over {size_text(max_bytes)} are not read")
        if file.url is None:
            raise FetchError("Slack gave no download link for it")
        if not self._trusted(file.url):
            log.warning("Slack: not sending the bot token to %s (a file's download link)", urlsplit(file.url).hostname)
            raise FetchError("its download link is not on Slack")
        try:
            async with self.session.get(file.url, headers={"Authorization": f"Bearer {self.token}"},
                                        timeout=aiohttp.ClientTimeout(total=DOWNLOAD_TIMEOUT_S)) as response:
                if response.status != 200:
                    raise FetchError(f"Slack refused the download (HTTP {response.status})")
                if response.content_type == "text/html" and not file.mimetype.startswith("text/html"):
                    log.warning("Slack: a file download came back as an HTML page: the bot token was not accepted "
                                "for files (files:read scope missing?)")
                    raise FetchError(NO_SCOPE)
                data = bytearray()
                async for chunk in response.content.iter_chunked(65536):
                    data += chunk
                    if len(data) > max_bytes:
                        raise FetchError(f"it is larger than {size_text(max_bytes)}: files over "
                                         f"{size_text(max_bytes)} are not read")
                return bytes(data)
        except (aiohttp.ClientError, TimeoutError) as exc:
            log.warning("Slack: downloading file %s failed: %s: %s", file.id, type(exc).__name__, exc)
            raise FetchError("it could not be downloaded from Slack") from None

    async def _info(self, file: SlackFile) -> SlackFile:
        try:
            response = await self.client.files_info(file=file.id)
        except Exception as exc:
            code = api_error(exc)
            log.warning("Slack: files.info for %s failed: %s", file.id, describe_error(exc))
            if code in ("missing_scope", "not_allowed_token_type", "no_permission"):
                raise FetchError(NO_SCOPE) from None
            if code in ("file_not_found", "file_deleted"):
                raise FetchError("it is no longer there") from None
            raise FetchError("Slack did not say where to download it") from None
        item = response.get("file")
        parsed = SlackFile.parse(item) if isinstance(item, Mapping) else None
        if parsed is None:
            raise FetchError("Slack did not say where to download it")
        return parsed

    def _trusted(self, url: str) -> bool:
        host = urlsplit(url).hostname or ""
        return host == self.api_host or host == "slack.com" or host.endswith(".slack.com")
