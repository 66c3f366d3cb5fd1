"""Per-channel settings (``bots.channels``): the settings file checked with its line numbers, what applies where,
personas set by admins only and stored in SQLite, and the file reloaded only when it is valid."""

from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path

import pytest

from bots.channels.command import PersonaCommand, parse_command, run_command
from bots.channels.config import ChannelConfig, Checks, ConfigFileError, key_lines, load_config
from bots.channels.effective import Defaults, Persona, Place, resolve
from bots.channels.lookup import ChannelSettings
from bots.channels.store import SqlitePersonas
from bots.messages import Messages
from bots.tokens import ContextBudget
from engine.errors import ConfigError
from engine.types import GenParams

CONFIG = '''\
# engbot channel settings
[defaults]
temperature = 0.3
history_chars = 8000

[dm]
system_prompt = "You are a friendly tutor."

[slack]
max_new_tokens = 256

[slack.team.T0001]
system_prompt = "You answer for the Example workspace."

[slack.channel.C0SUPPORT]
system_prompt = """You are the support desk.
Answer briefly."""
allowed_users = ["U0ANN", "U0BOB"]

[discord.guild.111]
show_thinking = "off"

[discord.channel.222]
temperature = 0.9
allowed_roles = ["333", 444]
'''
CHECKS = Checks(ContextBudget(2048), 512, frozenset({"SmolLM2.gguf", "SmolLM2"}))
DEFAULTS = Defaults(system_prompt="You are a helpful assistant.", params=GenParams(max_new_tokens=512),
                    model="SmolLM2.gguf")


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "engbot.toml"
    path.write_text(text)
    return path


def test_what_applies_where_widest_first_then_the_persona(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, CONFIG), CHECKS)
    support = resolve(config, DEFAULTS, Place("slack", "C0SUPPORT", guild="T0001"))
    assert support.system_prompt == "You are the support desk.\nAnswer briefly."
    assert (support.params.temperature, support.params.max_new_tokens, support.history_chars) == (0.3, 256, 8000)
    assert support.sources["system_prompt"] == f"[slack.channel.C0SUPPORT] in {tmp_path / 'engbot.toml'}:16"
    assert support.sources["max_new_tokens"].startswith("[slack] ")
    assert support.allows("U0ANN") and not support.allows("U0EVE")
    team = resolve(config, DEFAULTS, Place("slack", "C0OTHER", guild="T0001"))
    assert team.system_prompt == "You answer for the Example workspace." and team.allows("U0EVE")
    dm = resolve(config, DEFAULTS, Place("slack", "D0001", guild="T0001", dm=True))
    assert dm.system_prompt == "You answer for the Example workspace."  # the team is narrower than [dm]
    assert resolve(config, DEFAULTS, Place("discord", "999", dm=True)).system_prompt == "You are a friendly tutor."
    thread = resolve(config, DEFAULTS, Place("discord", "555", guild="111", parent="222"))
    assert (thread.params.temperature, thread.show_thinking) == (0.9, "off")
    assert thread.allows("1", roles=["444"]) and not thread.allows("1", roles=["7"])
    persona = resolve(config, DEFAULTS, Place("slack", "C0SUPPORT", guild="T0001"), Persona("Be a pirate.", "U0ADM"))
    assert persona.system_prompt == "Be a pirate." and persona.sources["system_prompt"] == "persona set by U0ADM"


def test_the_job_gets_only_what_differs_from_the_engines_defaults() -> None:
    plain = resolve(ChannelConfig(), DEFAULTS, Place("slack", "C1"))
    assert plain.job_system_prompt is None and plain.job_params is None
    persona = resolve(ChannelConfig(), DEFAULTS, Place("slack", "C1"), Persona("Be brief."))
    assert persona.job_system_prompt == "Be brief." and persona.job_params is None
    assert plain.job_model is None and persona.job_model is None


def test_a_channel_names_one_of_several_models(tmp_path: Path, model_path: Path) -> None:
    path = write(tmp_path, "[slack]\nmodel = 'default'\n\n[slack.channel.C0CODE]\nmodel = 'code'\n")
    environ = {"MODELS": f"fast={model_path},code={model_path}", "DEFAULT_MODEL": "fast", "ENGBOT_CONFIG": str(path),
               "STATE_PATH": str(tmp_path / "s.db"), "CONTEXT_LENGTH": "2048", "MODELS_CODE_CONTEXT_LENGTH": "1024",
               "MODELS_CODE_MAX_NEW_TOKENS": "128"}
    settings = ChannelSettings.from_environ(environ)
    code = resolve(settings.config, settings.defaults, Place("slack", "C0CODE"))
    assert code.job_model == "code" and code.sources["model"] == f"[slack.channel.C0CODE] in {path}:5"
    assert settings.budget_for(code).context_tokens == 1024  # (files, personas and summaries plan with it)
    other = resolve(settings.config, settings.defaults, Place("slack", "C0OTHER"))
    assert settings.budget_for(other).context_tokens == 2048
    assert other.model == "default" and other.job_model is None  # DEFAULT_MODEL answers
    discord = resolve(settings.config, settings.defaults, Place("discord", "1"))
    assert discord.model == "fast" and discord.sources["model"] == "DEFAULT_MODEL"
    path.write_text("[slack.channel.C0CODE]\nmodel = 'coder'\n")
    with pytest.raises(ConfigError, match="expected one of the models served") as refused:
        ChannelSettings.from_environ(environ)
    assert "'code', 'default', 'fast'" in str(refused.value) and f"{path}:2" in str(refused.value)


@pytest.mark.parametrize("text,line,key,why", [
    ("[defaults]\ntemperature = 9\n", 2, "defaults.temperature", "expected a number from 0 to 5, not 9"),
    ("[slack.channel.C01]\n\nmax_new_tokens = 4096\n", 3, "slack.channel.C01.max_new_tokens", "less than the context"),
    ("[slack]\ncolour = 'blue'\n", 2, "slack.colour", "unknown key; expected one of system_prompt"),
    ("[slack.channel.general]\ntemperature = 1\n", 1, "slack.channel.general", "expected a Slack channel ID"),
    ("[discord.channel.1]\nallowed_users = ['bob']\n", 2, "discord.channel.1.allowed_users", "Discord user IDs"),
    ("[slack.channel.C01]\nallowed_roles = ['1']\n", 2, "slack.channel.C01.allowed_roles", "Slack has no roles"),
    ("[defaults]\nmodel = 'llama-70b'\n", 2, "defaults.model", "expected one of the models served"),
    ("[defaults]\nshow_thinking = 'maybe'\n", 2, "defaults.show_thinking", "collapsed, off, on"),
    ("[defaults]\nsystem_prompt = '''" + "word " * 2000 + "'''\n", 2, "defaults.system_prompt",
     "and at most 736 tokens fit: the context holds 2,048 tokens, 512 are kept for the answer"),
    ("[teams]\nx = 1\n", 1, "teams", "unknown table"),
    ("[slack.rooms.C1]\nx = 1\n", 1, "slack.rooms", "unknown table; expected [slack.team.<id>]"),
], ids=lambda value: value.split("\n")[0][:40] if isinstance(value, str) else str(value))
def test_a_bad_value_names_the_file_the_line_and_the_key(tmp_path: Path, text: str, line: int, key: str,
                                                         why: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigFileError) as caught:
        load_config(path, CHECKS)
    assert str(caught.value).startswith(f"ENGBOT_CONFIG: {path}:{line}: {key}: ")
    assert why in str(caught.value)
    assert isinstance(caught.value, ConfigError)  # the CLI prints it and exits 2


def test_a_syntax_error_gets_tomllibs_line_and_column(tmp_path: Path) -> None:
    path = write(tmp_path, "[defaults]\ntemperature = = 1\n")
    with pytest.raises(ConfigFileError, match=r"is not valid TOML: .*\(at line 2, column 15\)"):
        load_config(path, CHECKS)


def test_key_lines_skip_multi_line_strings() -> None:
    lines = key_lines('[a]\nx = """\nfake = 1\n"""\ny = 2\n[b.c]\nz = 3\n')
    assert lines[(("a",), "x")] == 2 and lines[(("a",), "y")] == 5 and (("a",), "fake") not in lines
    assert lines[(("b", "c"), "z")] == 7 and lines[(("b",), "c")] == 6


def test_commands_parse() -> None:
    assert parse_command("persona set  You answer in French. ") == PersonaCommand("set", "You answer in French.")
    assert parse_command("PERSONA show") == PersonaCommand("show")
    assert parse_command("persona reset") == PersonaCommand("reset")
    assert parse_command("") == PersonaCommand("help") == parse_command("persona dance")


async def test_personas_are_for_admins_survive_a_restart_and_too_long_ones_are_refused(tmp_path: Path) -> None:
    store = SqlitePersonas(tmp_path / "state" / "engbot.db")
    store.open()
    settings = ChannelSettings(defaults=DEFAULTS, store=store)
    place = Place("slack", "C0001", guild="T0001")

    async def run(text: str, admin: bool = True) -> str:
        return await run_command(settings, place, parse_command(text), user="U0ADM", admin=admin,
                                 admin_setting="SLACK_ADMIN_USERS", command_name="/engbot",
                                 mention=lambda u: f"<@{u}>")

    assert await run("persona set Be a pirate.", admin=False) == Messages.PERSONA_ADMINS_ONLY.format(
        setting="SLACK_ADMIN_USERS")
    assert "is set (12 characters)" in await run("persona set Be a pirate.")
    reopened = SqlitePersonas(tmp_path / "state" / "engbot.db")  # another process, after a restart
    later = await ChannelSettings(defaults=DEFAULTS, store=reopened).effective(place)
    assert later.system_prompt == "Be a pirate." and later.persona is not None and later.persona.set_by == "U0ADM"
    assert "set by <@U0ADM> on " in await run("persona show")
    refused = await run("persona set " + "arr " * 3000)
    assert refused.startswith("That persona is too long for the model: it is about 4,000 tokens (11,999 "
                              "characters), and at most 736 tokens fit")
    assert (await settings.effective(place)).system_prompt == "Be a pirate."
    assert "from SYSTEM_PROMPT again" in await run("persona reset")
    assert await run("persona reset") == Messages.PERSONA_WAS_NONE
    assert "No persona is set" in await run("persona show")


def test_a_state_path_that_cannot_be_used_fails_at_start_and_a_good_one_is_made_when_first_used(
        tmp_path: Path, model_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(ConfigError, match="STATE_PATH"):
        SqlitePersonas(blocker / "engbot.db").open()
    for bad, why in ((blocker / "engbot.db", "is not a directory"), (blocker, "some other kind of file"),
                     (tmp_path, "it is a directory")):
        with pytest.raises(ConfigError, match="STATE_PATH") as refused:
            ChannelSettings.from_environ({"STATE_PATH": str(bad), "MODEL_PATH": str(model_path)})
        assert why in str(refused.value)
    good = tmp_path / "state" / "engbot.db"
    settings = ChannelSettings.from_environ({"STATE_PATH": str(good), "MODEL_PATH": str(model_path)})
    assert not good.exists()  # checked at start, made when the first persona is set
    assert asyncio.run(settings.effective(Place("slack", "C0001"))).persona is None and not good.exists()
    assert not asyncio.run(settings.reset_persona(Place("slack", "C0001"), "U0ADM")) and not good.exists()
    asyncio.run(settings.set_persona(Place("slack", "C0001"), "Be brief.", "U0ADM"))
    assert good.is_file() and asyncio.run(settings.effective(Place("slack", "C0001"))).system_prompt == "Be brief."


def test_from_environ_reads_every_setting(tmp_path: Path, model_path: Path) -> None:
    path = write(tmp_path, CONFIG)
    settings = ChannelSettings.from_environ({"ENGBOT_CONFIG": str(path), "STATE_PATH": str(tmp_path / "s.db"),
                                             "CONTEXT_LENGTH": "1024", "MAX_NEW_TOKENS": "200",
                                             "SHOW_THINKING": "on", "FILE_MAX_COUNT": "2",
                                             "MODEL_PATH": str(model_path)})
    assert settings.budget.context_tokens == 1024 and settings.defaults.params.max_new_tokens == 200
    assert settings.defaults.show_thinking == "on" and settings.files.max_count == 2
    assert settings.config.scopes[("slack", "channel", "C0SUPPORT")].allowed_users == frozenset({"U0ANN", "U0BOB"})
    with pytest.raises(ConfigError, match="ENGBOT_CONFIG"):
        ChannelSettings.from_environ({"ENGBOT_CONFIG": str(tmp_path / "missing.toml"), "MODEL_PATH": str(model_path)})


def test_a_changed_file_is_reloaded_and_a_bad_one_keeps_the_settings(tmp_path: Path,
                                                                     caplog: pytest.LogCaptureFixture) -> None:
    path = write(tmp_path, "[defaults]\ntemperature = 0.1\n")
    settings = ChannelSettings(defaults=DEFAULTS, config_path=path)
    place = Place("discord", "1")
    assert not settings.reload(force=False)  # unchanged
    path.write_text("[defaults]\ntemperature = 0.5\n")
    os.utime(path, ns=(settings.config.mtime_ns + 10**9, settings.config.mtime_ns + 10**9))
    assert settings.reload(force=False) and settings.reloads == 1
    assert resolve(settings.config, DEFAULTS, place).params.temperature == 0.5
    path.write_text("[defaults]\ntemperature = 7\n")
    os.utime(path, ns=(settings.config.mtime_ns + 10**9, settings.config.mtime_ns + 10**9))
    with caplog.at_level(logging.ERROR, logger="engbot.channels"):
        assert not settings.reload(force=False)
    assert f"{path}:2: defaults.temperature" in caplog.text and "keeping the settings loaded before" in caplog.text
    assert resolve(settings.config, DEFAULTS, place).params.temperature == 0.5
    assert not settings.reload(force=False)  # the bad file is not read again until it changes


async def test_the_watch_reloads_a_file_whose_modification_time_changed(tmp_path: Path) -> None:
    path = write(tmp_path, "[defaults]\ntemperature = 0.1\n")
    settings = ChannelSettings(defaults=DEFAULTS, config_path=path, poll_s=0.02)
    watch = asyncio.create_task(settings.watch())
    path.write_text("[defaults]\ntemperature = 0.7\n")
    os.utime(path, ns=(settings.config.mtime_ns + 10**9, settings.config.mtime_ns + 10**9))
    for _ in range(200):
        if settings.reloads:
            break
        await asyncio.sleep(0.02)
    watch.cancel()
    assert settings.reloads == 1
    assert resolve(settings.config, DEFAULTS, Place("slack", "C01")).params.temperature == 0.7
