"""A fake Hugging Face Hub on 127.0.0.1: the routes huggingface_hub calls to pull a file, answering as the hub does.

    async with FakeHub() as hub:                      # HF_ENDPOINT=hub.url
        hub.add_repo("Org/Model-GGUF", {"model-Q4_K_M.gguf": data})
        ...                                           # engbot pull Org/Model-GGUF:q4_k_m

- ``GET /api/models/{repo}[/revision/{rev}]`` (``HfApi.model_info``; ``?blobs=true`` adds each file's size, blob id
  and LFS sha256): 404 with ``X-Error-Code: RepoNotFound`` or ``RevisionNotFound`` as the hub does.
- ``HEAD``/``GET /{repo}/resolve/{rev}/{path}``: an LFS file answers ``302`` to the CDN with ``X-Repo-Commit``,
  ``X-Linked-Etag`` (its sha256, quoted), ``X-Linked-Size`` and an ``ETag`` of its git blob; a small file answers
  200 itself. A missing file is ``404 EntryNotFound`` (with ``X-Repo-Commit``); a gated repository answers ``401``
  (no or unknown token) or ``403`` (a token not granted) with ``X-Error-Code: GatedRepo`` and the hub's message.
- The CDN (a second port: another origin, so huggingface_hub sends it no token) serves ``/cdn/{sha256}`` with
  ``Range`` requests (``206`` and ``Content-Range``).

Faults, for the CDN: ``cut_after`` closes the connection once after that many bytes (mid-body), ``rate`` (bytes/s)
throttles, ``on_sent`` is called with the bytes sent so far after each chunk. ``requests`` records every request.
"""

from __future__ import annotations

import asyncio
import hashlib
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

CHUNK = 256 << 10
GOOD_TOKEN = "hf_engbot_test_token_granted"
OTHER_TOKEN = "hf_engbot_test_token_not_granted"


@dataclass
class HubFile:
    data: bytes
    lfs: bool = True
    reported_sha256: str | None = None  # what the hub says the sha256 is (default: the real one)

    @property
    def sha256(self) -> str:
        return self.reported_sha256 or hashlib.sha256(self.data).hexdigest()

    @property
    def blob_id(self) -> str:
        return hashlib.sha1(b"blob %d\0" % len(self.data) + self.data).hexdigest()


@dataclass
class FakeRepo:
    files: dict[str, HubFile]
    gated: bool = False
    commit: str = field(default_factory=lambda: secrets.token_hex(20))


@dataclass
class Seen:
    """One request as the fake received it."""

    method: str
    path: str
    headers: dict[str, str]
    at: float = field(default_factory=time.monotonic)

    @property
    def range_start(self) -> int | None:
        value = self.headers.get("Range", "")
        return int(value.split("=", 1)[1].split("-", 1)[0]) if value.startswith("bytes=") else None


class FakeHub:
    """See the module docstring."""

    def __init__(self) -> None:
        self.repos: dict[str, FakeRepo] = {}
        self.requests: list[Seen] = []
        self.cut_after: int | None = None  # bytes of the next CDN download, then the connection is closed (once)
        self.rate: float | None = None  # bytes per second the CDN sends at
        self.on_sent: Callable[[int], None] | None = None
        self.blobs: dict[str, HubFile] = {}
        self._runner: web.AppRunner | None = None
        self.url = self.cdn_url = ""

    async def __aenter__(self) -> FakeHub:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/api/models/{owner}/{name}", self._info)
        app.router.add_get("/api/models/{owner}/{name}/revision/{rev}", self._info)
        app.router.add_route("*", "/{owner}/{name}/resolve/{rev}/{path:.+}", self._resolve)
        app.router.add_get("/cdn/{sha}", self._cdn)
        self._runner = web.AppRunner(app, handle_signals=False)
        await self._runner.setup()
        ports = []
        for _ in range(2):  # the hub, and the CDN on another port (another origin)
            site = web.TCPSite(self._runner, "127.0.0.1", 0)
            await site.start()
            ports.append(site._server.sockets[0].getsockname()[1])  # type: ignore[union-attr]
        self.url, self.cdn_url = (f"http://127.0.0.1:{p}" for p in ports)

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    def add_repo(self, repo_id: str, files: dict[str, bytes | HubFile], *, gated: bool = False) -> FakeRepo:
        repo = FakeRepo({path: f if isinstance(f, HubFile) else HubFile(f) for path, f in files.items()}, gated)
        self.repos[repo_id] = repo
        return repo

    def downloads(self) -> list[Seen]:
        return [r for r in self.requests if r.path.startswith("/cdn/") and r.method == "GET"]

    # ---- routes ----

    def _seen(self, request: web.Request) -> None:
        self.requests.append(Seen(request.method, request.path, dict(request.headers)))

    @staticmethod
    def _error(status: int, code: str, message: str, **headers: str) -> web.Response:
        return web.json_response({"error": message}, status=status,
                                 headers={"X-Error-Code": code, "X-Error-Message": message, **headers})

    def _repo(self, request: web.Request) -> tuple[str, FakeRepo | None]:
        repo_id = f"{request.match_info['owner']}/{request.match_info['name']}"
        return repo_id, self.repos.get(repo_id)

    async def _info(self, request: web.Request) -> web.Response:
        self._seen(request)
        repo_id, repo = self._repo(request)
        if repo is None:
            return self._error(404, "RepoNotFound", "Repository not found")
        rev = request.match_info.get("rev", "main")
        if rev not in ("main", repo.commit):
            return self._error(404, "RevisionNotFound", f"Invalid rev id: {rev}")
        blobs = request.query.get("blobs", "").lower() == "true"
        siblings: list[dict[str, Any]] = []
        for path, f in sorted(repo.files.items()):
            entry: dict[str, Any] = {"rfilename": path}
            if blobs:
                entry.update(size=len(f.data), blobId=f.blob_id)
                if f.lfs:
                    entry["lfs"] = {"size": len(f.data), "sha256": f.sha256, "pointerSize": 134}
            siblings.append(entry)
        return web.json_response({"id": repo_id, "modelId": repo_id, "sha": repo.commit, "private": False,
                                  "gated": "manual" if repo.gated else False, "disabled": False,
                                  "tags": ["gguf"], "siblings": siblings})

    async def _resolve(self, request: web.Request) -> web.StreamResponse:
        self._seen(request)
        repo_id, repo = self._repo(request)
        if repo is None:
            return self._error(404, "RepoNotFound", "Repository not found")
        rev = request.match_info["rev"]
        if rev not in ("main", repo.commit):
            return self._error(404, "RevisionNotFound", f"Invalid rev id: {rev}")
        if repo.gated:
            token = request.headers.get("Authorization", "").removeprefix("Bearer ")
            if token not in (GOOD_TOKEN, OTHER_TOKEN):
                return self._error(401, "GatedRepo", f"Access to model {repo_id} is restricted. You must have "
                                   "access to it and be authenticated to access it. Please log in.")
            if token != GOOD_TOKEN:
                return self._error(403, "GatedRepo", f"Access to model {repo_id} is restricted and you are not in "
                                   f"the authorized list. Visit https://huggingface.co/{repo_id} to ask for access.")
        f = repo.files.get(request.match_info["path"])
        if f is None:
            return self._error(404, "EntryNotFound", "Entry not found", **{"X-Repo-Commit": repo.commit})
        if not f.lfs:
            headers = {"X-Repo-Commit": repo.commit, "ETag": f'"{f.blob_id}"', "Content-Length": str(len(f.data))}
            if request.method == "HEAD":
                return web.Response(status=200, headers=headers)
            return web.Response(body=f.data, headers=headers)
        self.blobs[f.sha256] = f
        location = f"{self.cdn_url}/cdn/{f.sha256}?X-Amz-Expires=3600&X-Amz-Signature={secrets.token_hex(8)}"
        return web.Response(status=302, headers={
            "Location": location, "X-Repo-Commit": repo.commit, "ETag": f'"{f.blob_id}"',
            "X-Linked-Etag": f'"{f.sha256}"', "X-Linked-Size": str(len(f.data)), "Content-Length": "0"})

    async def _cdn(self, request: web.Request) -> web.StreamResponse:
        self._seen(request)
        f = self.blobs.get(request.match_info["sha"])
        if f is None:
            return web.Response(status=403, text="<Error><Code>AccessDenied</Code></Error>")
        data, total = f.data, len(f.data)
        start = Seen(request.method, request.path, dict(request.headers)).range_start
        headers = {"Accept-Ranges": "bytes", "ETag": f'"{f.sha256}"', "Content-Type": "binary/octet-stream"}
        if start is not None and 0 < start < total:
            response = web.StreamResponse(status=206, headers={
                **headers, "Content-Range": f"bytes {start}-{total - 1}/{total}"})
        else:
            start = 0
            response = web.StreamResponse(status=200, headers=headers)
        response.content_length = total - start
        await response.prepare(request)
        cut, self.cut_after = self.cut_after, None
        sent = start
        while sent < total:
            piece = data[sent:sent + CHUNK]
            if cut is not None and sent + len(piece) > cut:
                piece = piece[:max(0, cut - sent)]
                if piece:
                    await response.write(piece)
                assert request.transport is not None
                request.transport.close()  # the connection dies mid-body
                return response
            await response.write(piece)
            sent += len(piece)
            if self.on_sent is not None:
                self.on_sent(sent)
            if self.rate:
                await asyncio.sleep(len(piece) / self.rate)
        await response.write_eof()
        return response
