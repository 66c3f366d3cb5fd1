"""CPU features and the choice of ctransformers' prebuilt library (the ``LLM_LIB`` setting).

ctransformers ships one shared library per instruction set (``lib/avx2``, ``lib/avx``, ``lib/basic``). Its own
auto-detection costs about a second per load, and loading a variant the CPU cannot run dies with "illegal
instruction", so the choice is made here from /proc/cpuinfo.
"""

from __future__ import annotations

import functools
import importlib.util
from pathlib import Path

from engine.errors import ConfigError

LLM_LIB_CHOICES = ("auto", "avx2", "avx", "basic")

# ctransformers' builds: avx2 is compiled with -mavx2 -mfma -mf16c -mavx, avx with -mf16c -mavx.
_REQUIRED_FLAGS = {"avx2": frozenset({"avx2", "fma", "f16c", "avx"}), "avx": frozenset({"f16c", "avx"})}


@functools.cache
def cpu_flags(cpuinfo: str = "/proc/cpuinfo") -> frozenset[str]:
    """The instruction-set flags of the first CPU listed in ``cpuinfo``; empty if it cannot be read."""
    try:
        text = Path(cpuinfo).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return frozenset()
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip() in ("flags", "Features"):
            return frozenset(value.split())
    return frozenset()


def pick_llm_lib(setting: str, flags: frozenset[str] | None = None) -> str:
    """The ctransformers variant for an ``LLM_LIB`` value: ``auto`` picks the best one ``flags`` allow.

    ``flags`` defaults to this machine's ``cpu_flags()``. Explicit variants are returned as given (checked by
    ``ctransformers_lib_path``).
    """
    choice = setting.strip().lower()
    if choice not in LLM_LIB_CHOICES:
        raise ConfigError("LLM_LIB", setting, "one of " + ", ".join(LLM_LIB_CHOICES))
    if choice != "auto":
        return choice
    have = cpu_flags() if flags is None else flags
    for variant in ("avx2", "avx"):
        if _REQUIRED_FLAGS[variant] <= have:
            return variant
    return "basic"


def ctransformers_lib_path(variant: str, flags: frozenset[str] | None = None) -> Path:
    """The absolute path of ctransformers' ``lib/<variant>/libctransformers.so``.

    Raises ``ConfigError`` naming ``LLM_LIB`` if ctransformers or that library is missing, or if the CPU lacks
    an instruction set the variant needs. When the CPU flags cannot be read at all, the choice is trusted.
    """
    if variant not in _REQUIRED_FLAGS and variant != "basic":
        raise ConfigError("LLM_LIB", variant, "one of avx2, avx, basic")
    have = cpu_flags() if flags is None else flags
    missing = sorted(_REQUIRED_FLAGS.get(variant, frozenset()) - have)
    if have and missing:
        raise ConfigError(
            "LLM_LIB", variant, f"this CPU lacks {', '.join(missing)} (see /proc/cpuinfo); use auto or basic"
        )
    spec = importlib.util.find_spec("ctransformers")
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError("LLM_LIB", variant, "the ctransformers package is not installed")
    package = Path(next(iter(spec.submodule_search_locations))).resolve()
    path = package / "lib" / variant / "libctransformers.so"
    if not path.is_file():
        raise ConfigError("LLM_LIB", variant, f"{path} is missing; reinstall ctransformers' prebuilt wheel")
    return path
