"""The buttons under an answer as discord.py ``DynamicItem``s: nothing is kept per message, and a press reaches the
bot by its ``custom_id`` alone (``engbot:<action>:<job id>``), after a restart too.

    view(reply)                          # a reply's controls as a view of AnswerButtons (sink.py sends it)
    client.add_dynamic_items(AnswerButton)   # in setup_hook: presses on any message come back to us
    # a press: AnswerButton.callback -> client.pressed(interaction, custom_id)   (the adapter's client)

discord.py keeps a view's ordinary buttons in its view store, per message, until the view times out (180 s by
default) or the process ends; a press it does not find there is dropped. A dynamic item is found by matching its
``custom_id`` against the registered template instead, and rebuilt from the pressed message's components.
"""

from __future__ import annotations

import logging
import re
from typing import Any, Protocol, runtime_checkable

import discord

from bots.sink import Control, Reply

log = logging.getLogger("engbot.discord")

TEMPLATE = re.compile(r"engbot:(?P<action>[a-z]+):(?P<job>[0-9a-f]{1,64})")  # bots.presses: the ids we make
MAX_BUTTONS = 25  # 5 action rows of 5 buttons
LABEL_MAX = 80  # (a custom_id the template matches is at most 7 + 1 + len(action) + 64 characters, within 100)
STYLES = {"default": discord.ButtonStyle.secondary, "primary": discord.ButtonStyle.primary,
          "danger": discord.ButtonStyle.danger}


@runtime_checkable
class PressReceiver(Protocol):
    """The client a press is handed to (the adapter's): it must answer Discord within 3 s and never raise."""

    async def pressed(self, interaction: discord.Interaction[Any], custom_id: str) -> None: ...


class AnswerButton(discord.ui.DynamicItem[discord.ui.Button[discord.ui.View]], template=TEMPLATE):
    """One control of an answer. discord.py builds one from the pressed message's button for every press whose
    ``custom_id`` matches ``TEMPLATE`` (``from_custom_id``), then runs ``callback``."""

    def __init__(self, button: discord.ui.Button[discord.ui.View]) -> None:
        super().__init__(button)  # (raises ValueError when the custom_id does not match the template)

    @classmethod
    def of(cls, control: Control) -> AnswerButton | None:
        """The button for ``control``; None when its id is not one a press could bring back to us."""
        if TEMPLATE.fullmatch(control.custom_id) is None:
            return None
        return cls(discord.ui.Button(label=control.label[:LABEL_MAX], custom_id=control.custom_id,
                                     style=STYLES[control.style]))

    @classmethod
    async def from_custom_id(cls, interaction: discord.Interaction[Any], item: discord.ui.Item[Any],
                             match: re.Match[str], /) -> AnswerButton:
        if not isinstance(item, discord.ui.Button):
            raise TypeError(f"a press on a {type(item).__name__} with a button's id")
        return cls(item)

    async def callback(self, interaction: discord.Interaction[Any]) -> None:
        client = interaction.client
        if not isinstance(client, PressReceiver):
            log.warning("a press on %s reached a client that does not take presses", self.custom_id)
            return
        try:
            await client.pressed(interaction, self.custom_id)
        except Exception:  # (the receiver handles its own errors: this is the last guard)
            log.exception("a press on %s failed", self.custom_id)


def view(reply: Reply) -> discord.ui.View | None:
    """A reply's controls as buttons (legacy action rows, so the message's ``content`` stays editable), 5 to a
    row, at most 25. None (no components; on an edit: take them away) without controls. A control whose id no
    press could bring back is left out, with a warning: Discord would show it, and its presses would fail."""
    buttons = [b for b in (AnswerButton.of(c) for c in reply.controls) if b is not None]
    if len(buttons) < len(reply.controls):
        log.warning("left out controls whose ids are not engbot:<action>:<job id>: %s",
                    [c.custom_id[:100] for c in reply.controls if TEMPLATE.fullmatch(c.custom_id) is None])
    if not buttons:
        return None
    shown = discord.ui.View(timeout=None)
    for button in buttons[:MAX_BUTTONS]:
        shown.add_item(button)
    return shown
