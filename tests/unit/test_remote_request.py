"""The remote backend's pure parts: a job as a request, what the server's errors mean, its settings."""

from __future__ import annotations

import httpx2
import openai
import pytest

from engine.errors import ConfigError
from engine.remote.request import CONTINUE_PROMPT, effective_params, judge, messages, sampling, trimmed
from engine.remote.settings import RemoteSettings
from engine.types import FailureKind, GenParams, Job, Turn

URL = "http://vllm:8000/v1/chat/completions"


def status_error(status: int, body: object, headers: dict[str, str] | None = None) -> openai.APIStatusError:
    """The error the openai client raises when the server answers so (its transport a function: httpx's
    MockTransport)."""
    transport = httpx2.MockTransport(lambda request: httpx2.Response(status, json=body, headers=headers or {}))
    client = openai.OpenAI(api_key="x", base_url="http://vllm:8000/v1", max_retries=0,
                           http_client=httpx2.Client(transport=transport))
    with pytest.raises(openai.APIStatusError) as info:
        client.chat.completions.create(model="m", messages=[{"role": "user", "content": "q"}])
    return info.value


def test_messages_for_a_question_a_conversation_and_continue() -> None:
    turns = (Turn("user", "Hi"), Turn("assistant", "Hello!"), Turn("user", "List three colours."))
    assert messages(turns[:1], "Be brief.") == [{"role": "system", "content": "Be brief."},
                                                {"role": "user", "content": "Hi"}]
    assert messages(turns[:1], "") == [{"role": "user", "content": "Hi"}]  # SYSTEM_PROMPT empty: none
    prefill = messages(turns, "S", "1. Red", "prefill")
    assert prefill[-1] == {"role": "assistant", "content": "1. Red"} and len(prefill) == 5
    ask = messages(turns, "S", "1. Red", "ask")
    assert ask[-2:] == [{"role": "assistant", "content": "1. Red"}, {"role": "user", "content": CONTINUE_PROMPT}]


def test_trimming_drops_the_oldest_turns_and_starts_with_a_question() -> None:
    turns = (Turn("user", "a"), Turn("assistant", "b"), Turn("user", "c"), Turn("assistant", "d"), Turn("user", "e"))
    assert trimmed(turns, 1) == turns[2:]  # never an answer first
    assert trimmed(turns, 3) == turns[4:]
    assert trimmed(turns[4:], 1) is None  # the newest message alone: nothing more can go


def test_sampling_fields() -> None:
    greedy = GenParams(max_new_tokens=64, temperature=0.0, seed=-1)
    assert sampling(greedy, continuing=False, continue_mode="prefill") == {
        "max_tokens": 64, "temperature": 0.0, "top_p": 0.95}  # standard fields only: no top_k, no seed
    seeded = sampling(GenParams(temperature=0.5, seed=42), continuing=False, continue_mode="prefill")
    assert seeded["seed"] == 42
    assert isinstance(sampling(GenParams(temperature=0.5), continuing=False, continue_mode="ask")["seed"], int)
    cont = sampling(greedy, continuing=True, continue_mode="prefill")
    assert cont["extra_body"] == {"continue_final_message": True, "add_generation_prompt": False}
    assert "extra_body" not in sampling(greedy, continuing=True, continue_mode="ask")
    bench = sampling(GenParams(ignore_eos=True), continuing=False, continue_mode="prefill")
    assert bench["extra_body"] == {"ignore_eos": True}
    regen = effective_params(Job.ask("q", resample=True), GenParams(temperature=0.0, seed=5), 0.7)
    assert regen.temperature == 0.7 and regen.seed == -1


def test_what_the_servers_errors_mean() -> None:
    busy = judge(status_error(429, {"error": {"message": "slow down"}}, {"Retry-After": "3"}), started=False,
                 attempt=0)
    assert busy.kind is FailureKind.BUSY and busy.retry_after == 3.0 and "429" in busy.reason
    assert busy.detail == "slow down"
    assert judge(status_error(429, {}, {"Retry-After": "600"}), started=False, attempt=0).retry_after == 30.0
    unavailable = judge(status_error(503, {"detail": "loading"}), started=False, attempt=3)
    assert unavailable.retry_after is not None and 3 <= unavailable.retry_after <= 6  # backoff: 0.5 x 2^3, +-25%
    overflow = judge(status_error(400, {"error": {"message": "This model's maximum context length is 2048 tokens.",
                                                  "code": "context_length_exceeded"}}), started=False, attempt=0)
    assert overflow.trim and overflow.kind is FailureKind.PROMPT_TOO_LONG
    vllm = judge(status_error(400, {"object": "error", "message": "This model's maximum context length is 4096 "
                                    "tokens. However, you requested 5000 tokens"}), started=False, attempt=0)
    assert vllm.trim
    assert not judge(status_error(400, {"error": {"message": "bad temperature"}}), started=False, attempt=0).trim
    key = judge(status_error(401, {"detail": "Invalid API key"}), started=False, attempt=0)
    assert key.kind is FailureKind.ERROR and "OPENAI_API_KEY" in key.reason and key.log
    assert "OPENAI_MODEL" in judge(status_error(404, {}), started=False, attempt=0).reason
    request = httpx2.Request("POST", URL)
    lost = openai.APIConnectionError(request=request)
    assert judge(lost, started=False, attempt=0).retry_after is not None  # before any text: try again
    broke = judge(lost, started=True, attempt=0)
    assert broke.kind is FailureKind.UNAVAILABLE and broke.retry_after is None  # the user saw part of it
    assert broke.reason == "broke off the answer"
    assert judge(status_error(429, {}), started=True, attempt=0).retry_after is None


def test_remote_settings() -> None:
    s = RemoteSettings.from_environ({"OPENAI_BASE_URL": "http://vllm:8000/v1/", "OPENAI_API_KEY": "sk-secret-123"})
    assert s.base_url == "http://vllm:8000/v1" and s.max_inflight == 4 and s.continue_mode == "prefill"
    assert "sk-secret-123" not in repr(s)
    for env, name in (({}, "OPENAI_BASE_URL"), ({"OPENAI_BASE_URL": "vllm:8000"}, "OPENAI_BASE_URL"),
                      ({"OPENAI_BASE_URL": "http://x/v1", "REMOTE_MAX_INFLIGHT": "0"}, "REMOTE_MAX_INFLIGHT"),
                      ({"OPENAI_BASE_URL": "http://x/v1", "REMOTE_CONTINUE": "maybe"}, "REMOTE_CONTINUE"),
                      ({"OPENAI_BASE_URL": "http://x/v1", "REMOTE_RETRY_S": "-1"}, "REMOTE_RETRY_S")):
        with pytest.raises(ConfigError) as info:
            RemoteSettings.from_environ(env)
        assert info.value.name == name
    with pytest.raises(ConfigError) as info:
        RemoteSettings.from_environ({"OPENAI_BASE_URL": "ftp://user:hunter2@x/v1"})
    assert "hunter2" not in str(info.value)
