"""What the remote backend checks at start (and ``engbot doctor`` shows): the server answers at OPENAI_BASE_URL,
takes OPENAI_API_KEY, and serves OPENAI_MODEL. A wrong setting stops start-up with a message naming it."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import openai

from engine.config import mask
from engine.errors import ConfigError, ModelServerUnavailable
from engine.remote.request import cause_of, server_message
from engine.remote.settings import RemoteSettings

log = logging.getLogger("engbot.remote")


@dataclass(frozen=True, slots=True)
class ServerInfo:
    model: str  # what requests name: OPENAI_MODEL, or the server's only model
    served: tuple[str, ...]  # what GET /models lists (empty when the server has no such route)
    note: str = ""  # worth telling: e.g. the model is not listed but answered anyway


async def check_server(client: openai.AsyncOpenAI, remote: RemoteSettings) -> ServerInfo:
    """Ask the server for its models (and, if OPENAI_MODEL is not among them, for one token of it). Raises
    ``ConfigError`` naming OPENAI_API_KEY (401/403), OPENAI_MODEL (404, or unset with several models) or
    OPENAI_BASE_URL (no API there), and ``ModelServerUnavailable`` when nothing answers."""
    url = remote.base_url_masked
    listed: tuple[str, ...] | None
    try:
        page = await client.models.list()
        listed = tuple(m.id for m in page.data)
    except openai.NotFoundError:
        listed = None  # a server (or proxy) without GET /models: the model is tried directly
    except Exception as exc:
        raise _start_error(exc, remote, "GET /models") from None
    model = remote.model
    if not model:
        if listed is None:
            raise ConfigError("OPENAI_BASE_URL", url, "no OpenAI API answers there (404 for /models): the URL "
                              "usually ends with /v1; or set OPENAI_MODEL if the server has no /models")
        if len(listed) != 1:
            served = ", ".join(listed) or "none"
            raise ConfigError("OPENAI_MODEL", "", f"not set, and the server at {url} serves {len(listed)} models "
                              f"({served}): name one")
        return ServerInfo(listed[0], listed)
    if listed is not None and model in listed:
        return ServerInfo(model, listed)
    try:  # not listed (or no list): one token says whether the server takes the name
        await client.chat.completions.create(model=model, messages=[{"role": "user", "content": "Hi"}],
                                             max_tokens=1)
    except openai.NotFoundError:
        if listed is None:
            raise ConfigError("OPENAI_BASE_URL", url, "no OpenAI API answers there (404 for /models and "
                              "/chat/completions): the URL usually ends with /v1") from None
        raise ConfigError("OPENAI_MODEL", model, f"the server at {url} does not serve it (404); it serves: "
                          + (", ".join(listed) or "no models")) from None
    except Exception as exc:
        raise _start_error(exc, remote, "POST /chat/completions") from None
    note = f"OPENAI_MODEL={model!r} is not among the models the server lists ({', '.join(listed)}), but it " \
        "answered to it" if listed else ""
    return ServerInfo(model, listed or (), note)


def _start_error(exc: Exception, remote: RemoteSettings, what: str) -> Exception:
    url = remote.base_url_masked
    if isinstance(exc, openai.AuthenticationError | openai.PermissionDeniedError):
        key = mask("OPENAI_API_KEY", remote.api_key) if remote.api_key else ""
        hint = "" if remote.api_key else ": set it" if exc.status_code == 401 else ""
        return ConfigError("OPENAI_API_KEY", key, f"the server at {url} refused it ({exc.status_code}: "
                           f"{server_message(exc)}){hint}")
    if isinstance(exc, openai.APIConnectionError):
        return ModelServerUnavailable(f"cannot reach the model server at OPENAI_BASE_URL={url} ({cause_of(exc)})")
    if isinstance(exc, openai.APIStatusError):
        return ModelServerUnavailable(f"the model server at OPENAI_BASE_URL={url} answered {exc.status_code} to "
                                      f"{what}: {server_message(exc)}")
    return ModelServerUnavailable(f"the model server at OPENAI_BASE_URL={url} could not be used: "
                                  f"{type(exc).__name__}: {exc}")
