"""What a replica sends about one job: its text, merged into few messages, and its final message."""

from __future__ import annotations

import time
from multiprocessing.connection import Connection

from engine.generation import Ending
from engine.replica.protocol import JobDone, JobFailed, JobText
from engine.types import FailureKind

FLUSH_S = 0.05  # answer text goes to the parent at most this often (after the first piece)


class Outbox:
    """One answer's text on its way to the parent: the first piece at once (time to first token), then at most
    one message per ``FLUSH_S``. Every message wakes the parent process, which then competes for the cores the
    model's threads are spinning on; adapters show the text at most once a second anyway."""

    def __init__(self, conn: Connection, seq: int) -> None:
        self.conn, self.seq = conn, seq
        self.text = ""  # everything added
        self._pending = ""
        self._sent_at: float | None = None

    def add(self, piece: str) -> None:
        self.text += piece
        self._pending += piece
        if self._sent_at is None or time.monotonic() - self._sent_at >= FLUSH_S:
            self.flush()

    def flush(self) -> None:
        if self._pending:
            self.conn.send(JobText(self.seq, self._pending))
            self._pending, self._sent_at = "", time.monotonic()

    def fail(self, kind: FailureKind, reason: str) -> None:
        """End the job without an answer (the text so far goes with it)."""
        self.flush()
        self.conn.send(JobFailed(self.seq, kind, reason, self.text))

    def finish(self, ending: Ending, text: str, prompt_tokens: int, completion_tokens: int,
               timeout_s: float) -> None:
        """The final message: the answer, or why it stopped early (cancelled, or past ``timeout_s``)."""
        self.flush()
        if ending.interrupted is FailureKind.CANCELLED:
            self.conn.send(JobFailed(self.seq, FailureKind.CANCELLED, "cancelled", text))
        elif ending.interrupted is FailureKind.TIMEOUT:
            self.conn.send(JobFailed(self.seq, FailureKind.TIMEOUT, f"the answer took longer than {timeout_s:g} s",
                                     text))
        else:
            self.conn.send(JobDone(self.seq, text, prompt_tokens, completion_tokens, ending.finish_reason))
