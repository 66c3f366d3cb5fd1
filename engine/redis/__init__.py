"""The job queue in Redis (QUEUE_BACKEND=redis): ``engbot run`` processes submit (``RedisSubmitter``), ``engbot
worker`` hosts answer (``RedisHost``). How it works and how it fails: docs/scaling.md.

Keys (``engbot:`` is REDIS_KEY_PREFIX; ``keys.py``):

- ``engbot:jobs``, a stream of jobs, consumer group ``engbot:workers``. One entry per job: ``job`` (JSON) and
  ``deadline`` (Redis clock, ms). Finished entries are XACK'd and XDEL'd, so its length is the number of jobs
  waiting or running, which is what REDIS_MAX_PENDING bounds.
- ``engbot:events:<job id>``, a stream per job carrying its events back, each entry a JSON batch of
  ``{"a": attempt, "n": seq, "t": type, "f": fields}`` (``codec.py``); it expires by itself, and the reader
  deletes it at the end.
- ``engbot:job:<job id>``: the entry id a job was queued as (and how many jobs were waiting ahead of it), or
  ``withdrawn``; it makes submitting idempotent, so a submit whose reply was lost is retried without queueing the
  job twice, and a job whose submit outcome stays unknown is withdrawn (see ``RedisSubmitter.submit``).
- ``engbot:dedup:<dedup key>`` (SET NX EX), ``engbot:cancel:<job id>``, ``engbot:attempt:<entry id>``, and
  ``engbot:wake:<submitter>``, a tiny stream whose only use is to end the reader's blocking XREAD when a job is
  added.

The scripts that change them atomically are in ``lua/`` (``scripts.py``).
"""

from engine.redis.host import RedisHost
from engine.redis.submitter import RedisSubmitter

__all__ = ["RedisHost", "RedisSubmitter"]
