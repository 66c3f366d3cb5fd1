"""Per-channel settings: the settings file (``ENGBOT_CONFIG``), channel personas and the lookup the adapters use.

``config.py`` reads and checks the file, ``effective.py`` decides what applies where (pure), ``store.py`` keeps
personas (SQLite or Redis), ``lookup.py`` is the ``ChannelSettings`` seam, ``command.py`` the persona command.
"""
