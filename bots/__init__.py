"""engbot's chat platforms: one package per platform (``slack/``, ``discord/``, listed in ``registry.py``), and what
they share: the answer flow (``answer.py``), replies with controls (``sink.py``), streaming by edits
(``stream.py``), the bot's texts (``messages.py``), limits and conversation building."""
