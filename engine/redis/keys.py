"""Every Redis name the queue uses, under one prefix (REDIS_KEY_PREFIX, ``engbot:`` by default)."""

from __future__ import annotations

from dataclasses import dataclass

RELEASED = "released"  # the consumer that holds jobs a stopping host handed back


@dataclass(frozen=True, slots=True)
class Keys:
    """Every Redis name the queue uses, under one prefix."""

    prefix: str

    @property
    def jobs(self) -> str:
        return f"{self.prefix}jobs"

    @property
    def group(self) -> str:
        return f"{self.prefix}workers"

    def events(self, job_id: str) -> str:
        return f"{self.prefix}events:{job_id}"

    def dedup(self, key: str) -> str:
        return f"{self.prefix}dedup:{key}"

    def job(self, job_id: str) -> str:
        return f"{self.prefix}job:{job_id}"

    def cancel(self, job_id: str) -> str:
        return f"{self.prefix}cancel:{job_id}"

    def attempt(self, entry_id: str = "") -> str:
        return f"{self.prefix}attempt:{entry_id}"

    def wake(self, submitter_id: str) -> str:
        return f"{self.prefix}wake:{submitter_id}"

    def holder(self, conversation: str) -> str:
        """The host (consumer name) whose cache holds ``conversation``'s prompt: it answered its last turn."""
        return f"{self.prefix}holder:{conversation}"

    def room(self, consumer: str) -> str:
        """How many more jobs the host ``consumer`` takes at once (expires when the host stops saying so)."""
        return f"{self.prefix}room:{consumer}"

    def inbox(self, consumer: str) -> str:
        """Jobs other hosts passed to ``consumer``, the host holding their conversation's prompt."""
        return f"{self.prefix}inbox:{consumer}"
