"""The entry point of a replica process: load one model, report ``Ready`` (or ``LoadFailed``), then serve jobs
until told to stop (``protocol.py``). Started with the ``spawn`` method: ggml libraries can hang in forked
children."""

from __future__ import annotations

import logging
import os
import signal
from dataclasses import replace
from multiprocessing.connection import Connection
from typing import Any

from engine.backends.factory import make_backend
from engine.backends.llama_batch import BatchedLlama
from engine.config import EngineSettings
from engine.errors import ConfigError, ModelFileError
from engine.prompts import choose_template
from engine.replica.loop_batched import serve_batched
from engine.replica.loop_single import serve_single
from engine.replica.protocol import LoadFailed, Ready
from engine.replica.threads import CpuShare, ThreadShare

log = logging.getLogger("engbot.replica")


def replica_main(index: int, settings: EngineSettings, conn: Connection, cancel: Any,
                 share: CpuShare | None = None) -> None:
    """Entry point of a replica process."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole group; the parent decides
    logging.basicConfig(level=os.environ.get("LOG_LEVEL", "INFO").upper(),
                        format=f"%(asctime)s replica-{index} %(levelname)s %(message)s")
    try:
        backend = make_backend(settings)
        info = backend.load()
        name, template = choose_template(
            settings.prompt_template, info.architecture, info.chat_template, info.bos_token, info.eos_token
        )
    except (ModelFileError, ConfigError) as exc:
        conn.send(LoadFailed(str(exc)))
        return
    except Exception as exc:
        log.exception("loading %s failed", settings.model_path)
        conn.send(LoadFailed(f"loading {settings.model_path} failed: {exc}"))
        return
    conn.send(Ready(replace(info, detail=f"{info.detail} template={name}".strip())))
    threads = ThreadShare(backend, settings, share)
    if isinstance(backend, BatchedLlama):
        serve_batched(backend, info, template, settings, conn, threads)
    else:
        serve_single(backend, info, template, conn, cancel, threads)
    backend.close()
