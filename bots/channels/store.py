"""Where channel personas are kept: an SQLite file (``STATE_PATH``) for one host, Redis with ``QUEUE_BACKEND=redis``
so that every ``engbot run`` process sees the same personas. SQLite calls run in a worker thread, never on the
event loop."""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from bots.channels.effective import Persona
from engine.errors import ConfigError

if TYPE_CHECKING:
    from redis.asyncio import Redis


class StoreError(Exception):
    """The store could not be read or written (logged; the persona command tells the admin)."""


class PersonaStore(Protocol):
    async def get(self, platform: str, channel: str) -> Persona | None: ...

    async def put(self, platform: str, channel: str, persona: Persona) -> None: ...

    async def delete(self, platform: str, channel: str) -> bool:
        """Remove the channel's persona; False when it had none."""
        ...

    async def close(self) -> None: ...

    def describe(self) -> str: ...


class MemoryPersonas:
    """Personas in this process only (tests, and adapters started without a store)."""

    def __init__(self) -> None:
        self.personas: dict[tuple[str, str], Persona] = {}

    async def get(self, platform: str, channel: str) -> Persona | None:
        return self.personas.get((platform, channel))

    async def put(self, platform: str, channel: str, persona: Persona) -> None:
        self.personas[(platform, channel)] = persona

    async def delete(self, platform: str, channel: str) -> bool:
        return self.personas.pop((platform, channel), None) is not None

    async def close(self) -> None:
        pass

    def describe(self) -> str:
        return "in memory (lost at a restart)"


_SCHEMA = """CREATE TABLE IF NOT EXISTS personas (
    platform TEXT NOT NULL, channel TEXT NOT NULL, text TEXT NOT NULL, set_by TEXT NOT NULL, set_at REAL NOT NULL,
    PRIMARY KEY (platform, channel))"""
_SQLITE_HEADER = b"SQLite format 3\x00"


class SqlitePersonas:
    """Personas in an SQLite file, created when the first persona is set (``check`` tells at start whether
    it can be, without creating anything: ``engbot doctor`` leaves no file behind). Each call opens its own
    connection in a worker thread (cheap, and safe with several threads); WAL mode lets readers and a writer go on
    together."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._created = False

    def check(self) -> None:
        """``ConfigError`` naming STATE_PATH when the file could not be used: a directory, a file that is not an
        SQLite database or cannot be written, or a missing file whose directory cannot be created or written."""
        path = self.path

        def refuse(why: str) -> ConfigError:
            return ConfigError("STATE_PATH", str(path), f"cannot be used as an SQLite file: {why}")

        if path.is_dir():
            raise refuse("it is a directory")
        if path.exists():
            try:
                with path.open("rb") as file:
                    head = file.read(len(_SQLITE_HEADER))
            except OSError as exc:
                raise refuse(str(exc)) from None
            if head and head != _SQLITE_HEADER:
                raise refuse("it is some other kind of file")
            if not os.access(path, os.W_OK):
                raise refuse("it cannot be written")
            return
        parent = path.parent
        while not parent.exists() and parent != parent.parent:
            parent = parent.parent
        if not parent.is_dir():
            raise refuse(f"{parent} is not a directory")
        if not os.access(parent, os.W_OK | os.X_OK):
            raise refuse(f"the directory {parent} cannot be written")

    def open(self) -> None:
        """Create the file and its table if needed; ``ConfigError`` naming STATE_PATH when that is impossible."""
        try:
            self._create()
        except (OSError, sqlite3.Error) as exc:
            raise ConfigError("STATE_PATH", str(self.path), f"cannot be used as an SQLite file: {exc}") from None

    def _create(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.closing(self._connect()) as db, db:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute(_SCHEMA)
        self._created = True

    def _connect(self) -> sqlite3.Connection:
        return sqlite3.connect(self.path, timeout=5.0)

    async def _run(self, sql: str, args: tuple[object, ...], *, writes: bool = False
                   ) -> list[tuple[object, ...]] | int:
        def run() -> list[tuple[object, ...]] | int:
            if not self._created:
                if not writes and not self.path.exists():
                    return [] if sql.lstrip().upper().startswith("SELECT") else 0  # (no file: no personas yet)
                self._create()  # (two first calls at once both create: the statements allow it)
            with contextlib.closing(self._connect()) as db, db:
                cursor = db.execute(sql, args)
                return cursor.fetchall() if sql.lstrip().upper().startswith("SELECT") else cursor.rowcount

        try:
            return await asyncio.to_thread(run)
        except (OSError, sqlite3.Error) as exc:
            raise StoreError(f"SQLite ({self.path}): {exc}") from exc

    async def get(self, platform: str, channel: str) -> Persona | None:
        rows = await self._run("SELECT text, set_by, set_at FROM personas WHERE platform = ? AND channel = ?",
                               (platform, channel))
        if not isinstance(rows, list) or not rows:
            return None
        text, set_by, set_at = rows[0]
        return Persona(str(text), str(set_by), float(set_at))  # type: ignore[arg-type]

    async def put(self, platform: str, channel: str, persona: Persona) -> None:
        await self._run("INSERT OR REPLACE INTO personas (platform, channel, text, set_by, set_at) "
                        "VALUES (?, ?, ?, ?, ?)", (platform, channel, persona.text, persona.set_by, persona.set_at),
                        writes=True)

    async def delete(self, platform: str, channel: str) -> bool:
        count = await self._run("DELETE FROM personas WHERE platform = ? AND channel = ?", (platform, channel))
        return isinstance(count, int) and count > 0

    async def close(self) -> None:
        pass

    def describe(self) -> str:
        return f"SQLite file {self.path} (STATE_PATH)"


class RedisPersonas:
    """Personas in Redis, one hash per channel (``<prefix>persona:<platform>:<channel>``), shared by every host."""

    def __init__(self, url: str, prefix: str, shown_url: str) -> None:
        self.url, self.prefix, self.shown_url = url, prefix, shown_url
        self._redis: Redis | None = None

    def _client(self) -> Redis:
        if self._redis is None:
            from engine.redis.client import connect

            self._redis = connect(self.url)
        return self._redis

    def _key(self, platform: str, channel: str) -> str:
        return f"{self.prefix}persona:{platform}:{channel}"

    async def get(self, platform: str, channel: str) -> Persona | None:
        from redis.exceptions import RedisError

        try:
            found = await self._client().hgetall(self._key(platform, channel))  # type: ignore[misc]
        except RedisError as exc:
            raise StoreError(f"Redis: {type(exc).__name__}") from exc
        if not found or "text" not in found:
            return None
        return Persona(str(found["text"]), str(found.get("set_by", "")), float(found.get("set_at") or 0))

    async def put(self, platform: str, channel: str, persona: Persona) -> None:
        from redis.exceptions import RedisError

        try:
            await self._client().hset(self._key(platform, channel), mapping={  # type: ignore[misc]
                "text": persona.text, "set_by": persona.set_by, "set_at": str(persona.set_at)})
        except RedisError as exc:
            raise StoreError(f"Redis: {type(exc).__name__}") from exc

    async def delete(self, platform: str, channel: str) -> bool:
        from redis.exceptions import RedisError

        try:
            return bool(await self._client().delete(self._key(platform, channel)))
        except RedisError as exc:
            raise StoreError(f"Redis: {type(exc).__name__}") from exc

    async def close(self) -> None:
        if self._redis is not None:
            await self._redis.aclose()
            self._redis = None

    def describe(self) -> str:
        return f"Redis at {self.shown_url} (QUEUE_BACKEND=redis)"
