"""Who may chat in the playground and who may steer from the status page: a pure policy, tested without a server.

- With PLAYGROUND_TOKEN set, whoever presents it (``Authorization: Bearer <token>``) may chat, and stop any
  answer from the status page; everyone else sees the status page only.
- Without it, chat is open only when ``engbot run`` has no other platform and listens on a loopback address
  (``open_without_token``), and only to requests addressed to a loopback name (a web page elsewhere cannot make
  a browser talk to it by DNS rebinding); nobody may stop others' answers.
- State-changing requests must come from the page itself: a JSON body, and an ``Origin`` (when the browser sends
  one) that is this server.
"""

from __future__ import annotations

import hmac
import ipaddress
from dataclasses import dataclass, field
from urllib.parse import urlsplit

LOOPBACK_NAMES = ("localhost",)


def is_loopback(host: str) -> bool:
    """``127.0.0.1``, ``::1``, ``[::1]``, ``localhost``: this machine only."""
    host = host.strip().strip("[]").lower()
    if host in LOOPBACK_NAMES or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def hostname(host_header: str) -> str:
    """The name part of a ``Host`` header: ``127.0.0.1:8080`` -> ``127.0.0.1``, ``[::1]:80`` -> ``::1``."""
    if host_header.startswith("["):
        return host_header[1:].split("]", 1)[0]
    return host_header.rsplit(":", 1)[0] if host_header.count(":") == 1 else host_header


def bearer(authorization: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header."""
    if not authorization:
        return None
    scheme, _, token = authorization.strip().partition(" ")
    return token.strip() or None if scheme.lower() == "bearer" else None


def same_origin(origin: str | None, host_header: str) -> bool:
    """A browser's ``Origin`` names this server (or there is none: not a cross-site browser request)."""
    if origin is None:
        return True
    return urlsplit(origin).netloc.lower() == host_header.lower()


@dataclass(frozen=True, slots=True)
class Access:
    token: str | None = field(default=None, repr=False)
    open_without_token: bool = False
    locked: str = ""  # why chat is closed without the token, for the page

    def chat_refusal(self, presented: str | None, host_header: str) -> str | None:
        """None when the request may chat, else why not (shown on the page)."""
        if self.token is not None:
            if presented is not None and hmac.compare_digest(presented.encode(), self.token.encode()):
                return None
            return "This playground needs its token (PLAYGROUND_TOKEN): enter it to chat." if presented is None \
                else "That token is not this playground's PLAYGROUND_TOKEN."
        if not self.open_without_token:
            return self.locked or "Chat is closed here: set PLAYGROUND_TOKEN to open it."
        if not is_loopback(hostname(host_header)):
            return "Open the playground at a loopback address (http://127.0.0.1:...): it answers only this machine."
        return None

    def admin(self, presented: str | None) -> bool:
        """Whether the request may stop anyone's answer from the status page: it carries PLAYGROUND_TOKEN."""
        return self.token is not None and presented is not None and hmac.compare_digest(presented.encode(),
                                                                                          self.token.encode())
