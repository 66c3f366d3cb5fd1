"""The remote backend (MODEL_BACKEND=openai): engbot's queue, limits and controls in front of an OpenAI-compatible
inference server. ``settings.py`` (OPENAI_*, REMOTE_*), ``check.py`` (what start-up checks), ``request.py`` (a
job as a request, errors as decisions: pure), ``submitter.py`` (the ``Submitter``)."""

from engine.remote.settings import RemoteSettings
from engine.remote.submitter import RemoteSubmitter

__all__ = ["RemoteSettings", "RemoteSubmitter"]
