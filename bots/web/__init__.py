"""The web playground: chat with the bot in a browser, through the same answer flow as Slack and Discord (the
queue, the rate limit, Stop, Regenerate, Continue and feedback), with no chat platform set up.

``engbot run`` serves it on HTTP_PORT: as its only platform when none is configured (open to this machine when
HTTP_HOST is a loopback address), and behind PLAYGROUND_TOKEN otherwise. Settings: PLAYGROUND_TOKEN and the shared
RATE_LIMIT_* in .env.example.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # (the package itself imports nothing: its modules import each other, never it)
    from bots.channels.lookup import ChannelSettings
    from bots.web.access import Access
    from bots.web.adapter import WebAdapter
    from bots.web.settings import WebSettings
    from engine.api import Submitter


def settings_from_environ(environ: Mapping[str, str]) -> WebSettings:
    """The playground's settings, checked (``ConfigError`` naming the variable). Never None: it always exists."""
    from bots.web.settings import WebSettings

    return WebSettings.from_environ(environ)


def make_adapter(settings: WebSettings, submitter: Submitter, access: Access,
                 channels: ChannelSettings | None = None) -> WebAdapter:
    from bots.web.adapter import WebAdapter

    return WebAdapter(settings, submitter, access, channels)
