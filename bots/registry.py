"""The chat platforms engbot knows. ``engbot run`` starts an adapter for each one whose settings are present, and
``engbot doctor`` checks each one's settings; neither names a platform. Adding one is a folder in ``bots/`` with
``settings_from_environ`` and ``make_adapter``, a line here, and its settings in ``.env.example``
(docs/extending.md)."""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, cast

from engine.api import Submitter

if TYPE_CHECKING:
    from bots.channels.lookup import ChannelSettings


class Adapter(Protocol):
    """What ``engbot run`` needs of a platform's adapter."""

    name: str

    @property
    def connected(self) -> bool:
        """Connected to the platform now (for /readyz)."""
        ...

    @property
    def in_flight(self) -> int:
        """Events being handled now (mostly answers being streamed)."""
        ...

    async def start(self) -> None:
        """Connect; return once events can arrive. ``ConfigError`` (naming the variable) for a token the platform
        refuses; another exception when the platform cannot be reached."""
        ...

    async def stop_intake(self) -> None:
        """Take no new questions; answers in flight go on."""
        ...

    async def close(self) -> None:
        """Wait a while for the answers in flight (the submitter's shutdown ends them), then disconnect."""
        ...


class PlatformModule(Protocol):
    """What a platform's package (``bots/<name>/__init__.py``) provides."""

    def settings_from_environ(self, environ: Mapping[str, str]) -> Any:
        """Its settings, checked (``ConfigError`` naming the variable); None when the platform is not configured."""
        ...

    def make_adapter(self, settings: Any, submitter: Submitter, channels: ChannelSettings | None = None) -> Adapter:
        """The adapter; ``channels``: what applies in each channel (None: defaults only, personas in memory)."""
        ...


@dataclass(frozen=True, slots=True)
class Platform:
    name: str
    package: str  # imported only when used
    env_prefix: str  # its settings' names start with this
    setup: str  # what turns it on, for the message when no platform is configured

    def load(self) -> PlatformModule:
        return cast(PlatformModule, importlib.import_module(self.package))


PLATFORMS = (
    Platform("slack", "bots.slack", "SLACK_", "SLACK_BOT_TOKEN and SLACK_APP_TOKEN for Slack (docs/slack.md)"),
    Platform("discord", "bots.discord", "DISCORD_", "DISCORD_BOT_TOKEN for Discord (docs/discord.md)"),
)


def setup_hint() -> str:
    """How to configure a platform, every one named."""
    return " and/or ".join(platform.setup for platform in PLATFORMS)


def configured(environ: Mapping[str, str]) -> list[tuple[Platform, Any]]:
    """The platforms whose settings are present, with their checked settings (``ConfigError`` for a bad value)."""
    found = []
    for platform in PLATFORMS:
        settings = platform.load().settings_from_environ(environ)
        if settings is not None:
            found.append((platform, settings))
    return found


def adapters_from_environ(environ: Mapping[str, str], submitter: Submitter,
                          channels: ChannelSettings | None = None) -> list[Adapter]:
    """An adapter for every configured platform, all sharing ``channels``."""
    return [platform.load().make_adapter(settings, submitter, channels) for platform, settings in configured(environ)]
