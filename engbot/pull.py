"""``engbot pull <owner/repo>[:<quant or file>]``: a GGUF model from the Hugging Face Hub into MODELS_DIR.

huggingface_hub does the talking (``HfApi.model_info`` lists the repository's files with their sizes and sha256,
``get_hf_file_metadata`` reads the file's ``X-Linked-Etag``/``X-Linked-Size`` and where it is served from,
``http_get`` streams it with its progress bar and retries a cut connection with a ``Range`` request). It honours
HF_ENDPOINT, HF_TOKEN and HF_HUB_OFFLINE from the environment or .env.

The download goes to ``<repo>/.engbot/<file>.partial`` in MODELS_DIR and is kept when it breaks off (Ctrl-C, a
dead connection, a reboot): the same command resumes it where it stopped. (``hf_hub_download`` would not:
huggingface_hub 2.x writes to a temporary file of its own process and deletes it on any failure.) Only a file
whose size and sha256 match what the hub reports becomes a model, by a rename; a full disk removes the partial
file, since keeping it would hold the space everything else on the disk needs.
"""

from __future__ import annotations

import errno
import hashlib
import shutil
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx2
from huggingface_hub import HfApi, get_hf_file_metadata, get_token, hf_hub_url
from huggingface_hub.errors import (
    GatedRepoError,
    HfHubHTTPError,
    OfflineModeIsEnabled,
    RemoteEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from huggingface_hub.file_download import REGEX_SHA256, http_get
from huggingface_hub.utils.tqdm import tqdm as hf_tqdm

from engine.config import TRUE
from engine.models.refs import Choice, ModelRef, RefError, RemoteFile, choose, parse_ref
from engine.models.store import ModelStore

DEFAULT_ENDPOINT = "https://huggingface.co"
HASH_CHUNK = 8 << 20
DISK_FULL = (errno.ENOSPC, errno.EFBIG, errno.EDQUOT)


class PullError(Exception):
    """``engbot pull`` cannot go on; the message says why and what to do. ``exit_code`` 2: the reference or the
    access must change; 1: the download failed (network, checksum, disk)."""

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.exit_code = exit_code


@dataclass(frozen=True, slots=True)
class HubSettings:
    """Where models come from: HF_ENDPOINT (a mirror, or a fake in tests), HF_TOKEN (gated and private repos),
    HF_HUB_OFFLINE (no network: only what MODELS_DIR has)."""

    endpoint: str = DEFAULT_ENDPOINT
    token: str | None = field(default=None, repr=False)
    offline: bool = False

    @classmethod
    def from_environ(cls, environ: Mapping[str, str]) -> HubSettings:
        offline = (environ.get("HF_HUB_OFFLINE") or environ.get("TRANSFORMERS_OFFLINE") or "").strip().lower()
        return cls(endpoint=(environ.get("HF_ENDPOINT") or DEFAULT_ENDPOINT).strip().rstrip("/"),
                   token=(environ.get("HF_TOKEN") or "").strip() or None, offline=offline in TRUE)


@dataclass(frozen=True, slots=True)
class Pulled:
    """What ``pull`` left in MODELS_DIR: the model's first file, and whether it was downloaded now."""

    ref: ModelRef
    path: Path
    downloaded: bool
    size: int


class ProgressBar(hf_tqdm):
    """huggingface_hub's progress bar, shown also when stderr is no terminal (a container's log, CI) at most
    every second there; HF_HUB_DISABLE_PROGRESS_BARS still turns it off."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs["disable"] = False
        if not sys.stderr.isatty():
            kwargs.setdefault("mininterval", 1.0)
        super().__init__(*args, **kwargs)  # type: ignore[no-untyped-call]


def pull(text: str, store: ModelStore, hub: HubSettings, *, revision: str | None = None,
         bar: type[hf_tqdm] = ProgressBar, say: Callable[[str], None] = print) -> Pulled:
    """Download the model ``text`` names (``owner/repo[:quant or file]``) into ``store``. Raises ``PullError``;
    a KeyboardInterrupt leaves the partial download for the next pull to resume."""
    try:
        ref = parse_ref(text)
    except RefError as exc:
        raise PullError(str(exc), 2) from None
    if hub.offline:
        return _offline(ref, store)
    api = HfApi(endpoint=hub.endpoint, token=hub.token, library_name="engbot")
    try:
        info = api.model_info(ref.repo, revision=revision, files_metadata=True)
    except Exception as exc:
        raise _hub_error(exc, ref, hub) from None
    commit = info.sha or revision or "main"
    files = [RemoteFile(s.rfilename, s.lfs.size if s.lfs else s.size, s.lfs.sha256 if s.lfs else None)
             for s in info.siblings or []]
    try:
        choice = choose(ref.repo, files, ref.selector)
    except RefError as exc:
        raise PullError(str(exc), 2) from None
    model_ref = ModelRef(ref.repo, ref.selector or (choice.quant.lower() or choice.first.path))
    say(f"{model_ref}: {describe(choice)}")
    downloaded = False
    for part in choice.files:
        downloaded |= _fetch(model_ref, commit, part, store, hub, bar, say)
    return Pulled(model_ref, store.model_path(ref.repo, choice.first.path), downloaded, choice.size)


def _offline(ref: ModelRef, store: ModelStore) -> Pulled:
    found = store.find(str(ref))
    if len(found) == 1:
        return Pulled(ref, found[0].path, False, found[0].size)
    raise PullError(f"offline mode (HF_HUB_OFFLINE) is on and MODELS_DIR ({store.root}) has no model {ref}: "
                    "unset HF_HUB_OFFLINE to download it", 2)


def _fetch(ref: ModelRef, commit: str, part: RemoteFile, store: ModelStore, hub: HubSettings,
           bar: type[hf_tqdm], say: Callable[[str], None]) -> bool:
    """One file of the model: skip it if it is here already, else download (resuming), check, move in place."""
    repo = ref.repo
    url = hf_hub_url(repo, part.path, revision=commit, endpoint=hub.endpoint)
    try:
        meta = get_hf_file_metadata(url, token=hub.token, library_name="engbot", endpoint=hub.endpoint)
    except Exception as exc:
        raise _hub_error(exc, ref, hub, part.path) from None
    sha256 = meta.etag if meta.etag and REGEX_SHA256.fullmatch(meta.etag) else part.sha256
    size = meta.size if meta.size is not None else part.size
    if size is None:
        raise PullError(f"the hub reports no size for {repo}/{part.path}: cannot check the download", 1)
    final = store.model_path(repo, part.path)
    meta_path = store.meta_path(repo, part.path)
    done = store.read_meta(meta_path)
    if final.is_file() and done and done.get("sha256") == sha256 and final.stat().st_size == size:
        say(f"{part.path}: up to date ({_mib(size)})")
        return False
    partial = store.partial_path(repo, part.path)
    partial_meta = partial.with_name(partial.name + ".json")
    record = {"ref": str(ref), "repo": repo, "file": part.path, "commit": meta.commit_hash or commit,
              "sha256": sha256, "size": size}
    before = store.read_meta(partial_meta)
    if partial.exists() and (before is None or before.get("sha256") != sha256 or partial.stat().st_size > size):
        partial.unlink()  # another version of the file, or not ours: start again
    resume = partial.stat().st_size if partial.exists() else 0
    partial.parent.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(partial.parent).free
    if free < size - resume:
        raise PullError(f"not enough space in MODELS_DIR ({store.root}): {part.path} needs {_mib(size - resume)} "
                        f"more, {_mib(free)} is free", 1)
    store.write_meta(partial_meta, record)
    if resume:
        say(f"{part.path}: resuming at {_mib(resume)} of {_mib(size)}")
    token = hub.token or get_token()  # (HF_TOKEN, or the one `hf auth login` stored)
    download_headers = {}
    if token and _origin(meta.location) == _origin(url):  # served from a CDN: the token stays with the hub
        download_headers["authorization"] = f"Bearer {token}"
    try:
        with partial.open("r+b" if resume else "wb") as f:
            f.seek(resume)
            http_get(meta.location, f, resume_size=resume, headers=download_headers, expected_size=size,
                     displayed_filename=part.name, tqdm_class=bar)
    except HfHubHTTPError as exc:  # (an OSError too)
        raise _broke_off(exc, part, partial, size) from None
    except OSError as exc:
        if exc.errno in DISK_FULL:
            _discard(partial, partial_meta)
            limit = "the file size limit of this process (ulimit -f)" if exc.errno == errno.EFBIG else \
                "no space left on the device"
            raise PullError(f"the disk is full while downloading {part.path} into MODELS_DIR ({store.root}): "
                            f"{limit}. The partial download was removed; free {_mib(size)} and pull again", 1) from None
        if "Consistency check failed" in str(exc):
            _discard(partial, partial_meta)
            raise PullError(f"{part.path}: the hub sent {_mib(_size(partial))} instead of {_mib(size)}; "
                            "the download was removed, pull again", 1) from None
        raise _broke_off(exc, part, partial, size) from None
    except httpx2.HTTPError as exc:
        raise _broke_off(exc, part, partial, size) from None
    _check(part, partial, partial_meta, size, sha256, bar, say)
    final.parent.mkdir(parents=True, exist_ok=True)
    partial.replace(final)
    store.write_meta(meta_path, {**record, "pulled_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})
    partial_meta.unlink(missing_ok=True)
    return True


def _check(part: RemoteFile, partial: Path, partial_meta: Path, size: int, sha256: str | None,
           bar: type[hf_tqdm], say: Callable[[str], None]) -> None:
    """The downloaded file must have the size and sha256 the hub reports; else it is removed."""
    got = _size(partial)
    if got != size:
        _discard(partial, partial_meta)
        raise PullError(f"{part.path}: downloaded {got} bytes, the hub says {size}; the download was removed, "
                        "pull again", 1)
    if sha256 is None:
        say(f"{part.path}: the hub reports no sha256 for it: only its size was checked")
        return
    digest = hashlib.sha256()
    with partial.open("rb") as f, bar(total=size, unit="B", unit_scale=True, desc="verifying sha256") as progress:
        while chunk := f.read(HASH_CHUNK):
            digest.update(chunk)
            progress.update(len(chunk))
    if digest.hexdigest() != sha256:
        _discard(partial, partial_meta)
        raise PullError(f"{part.path}: checksum mismatch (sha256 {digest.hexdigest()[:16]}..., the hub says "
                        f"{sha256[:16]}...): the download was damaged on its way and was removed; pull again", 1)


def _broke_off(exc: Exception, part: RemoteFile, partial: Path, size: int) -> PullError:
    have = _size(partial)
    return PullError(f"the download of {part.path} broke off at {_mib(have)} of {_mib(size)} "
                     f"({type(exc).__name__}: {exc}); run the same command again to resume it", 1)


def _hub_error(exc: Exception, ref: ModelRef, hub: HubSettings, file: str = "") -> PullError:
    """What an error of the hub means for the user."""
    page = f"{DEFAULT_ENDPOINT if hub.endpoint == DEFAULT_ENDPOINT else hub.endpoint}/{ref.repo}"
    if isinstance(exc, GatedRepoError):
        if exc.response is not None and exc.response.status_code == 403:
            return PullError(f"{ref.repo} is gated and the account of HF_TOKEN has not been granted access: "
                             f"ask for it at {page}", 2)
        token = "set HF_TOKEN to a token of an account that has accepted them" if not hub.token else \
            "HF_TOKEN was refused: check it (a read token of an account that has accepted them)"
        return PullError(f"{ref.repo} is gated (401): accept its conditions at {page}, then {token}", 2)
    if isinstance(exc, RevisionNotFoundError):
        return PullError(f"{ref.repo} has no such revision", 2)
    if isinstance(exc, RemoteEntryNotFoundError):
        return PullError(f"{ref.repo} has no file {file}", 2)
    if isinstance(exc, RepositoryNotFoundError):
        private = "" if hub.token else " (a private one needs HF_TOKEN)"
        return PullError(f"no model repository {ref.repo} at {hub.endpoint}{private}", 2)
    if isinstance(exc, OfflineModeIsEnabled):
        return PullError("offline mode (HF_HUB_OFFLINE) is on: unset it to download", 2)
    if isinstance(exc, HfHubHTTPError):
        status = exc.response.status_code if exc.response is not None else "?"
        if status == 401:
            return PullError(f"the hub refused HF_TOKEN (401) for {ref.repo}: check the token", 2)
        return PullError(f"the hub at {hub.endpoint} answered {status} for {ref.repo}: {exc}".splitlines()[0], 1)
    if isinstance(exc, httpx2.HTTPError | OSError):
        return PullError(f"cannot reach the hub at HF_ENDPOINT={hub.endpoint} ({type(exc).__name__}: {exc})", 1)
    raise exc


def _discard(*paths: Path) -> None:
    for path in paths:
        path.unlink(missing_ok=True)


def _size(path: Path) -> int:
    return path.stat().st_size if path.exists() else 0


def _origin(url: str) -> tuple[str, str, int | None]:
    parts = urlsplit(url)
    return parts.scheme, parts.hostname or "", parts.port


def _mib(n: int) -> str:
    return f"{n / 2**20:,.1f} MiB"


def describe(choice: Choice) -> str:
    """The file (and parts) a reference chose, in words."""
    parts = f" in {len(choice.files)} parts" if len(choice.files) > 1 else ""
    return f"{choice.first.path}{parts} ({choice.quant or 'unknown quantization'}, {_mib(choice.size)})"
