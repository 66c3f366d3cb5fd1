"""Memory of an idle LOAD_ON_FLY engine in a fresh process (what `engbot run` holds between questions).

Run as ``python -m bench.idle``; prints "rss_mib pss_mib replicas_alive" after one answer and the unload.
"""

from __future__ import annotations

import asyncio
import gc

import psutil

from engine.config import EngineSettings
from engine.local import Engine
from engine.types import GenParams, Job


async def main() -> None:
    settings = EngineSettings.from_environ({"NUM_WORKERS": "2", "LOAD_ON_FLY": "true", "KEEP_ALIVE_S": "0"})
    async with Engine(settings) as engine:
        await engine.submit_nowait(Job.ask("Say hello.", params=GenParams(max_new_tokens=16))).result()
        while any(r.alive for r in engine.replicas):
            await asyncio.sleep(0.05)
        gc.collect()
        info = psutil.Process().memory_full_info()
        alive = sum(r.alive for r in engine.replicas)
        print(f"{info.rss / 2**20:.1f} {info.pss / 2**20:.1f} {alive}")


if __name__ == "__main__":
    asyncio.run(main())
