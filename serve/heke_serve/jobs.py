"""Jobs: a score that the client collects later, kept in memory with bounded count and age.

A job is created when its request is accepted (202) and finishes with the record heke-run
would write, or with the reason it failed. The store keeps at most ``max_jobs`` jobs; a
finished job is forgotten ``ttl_s`` seconds after it finished (then ``GET`` answers 404), and
when the store is full the oldest finished job makes room. Unfinished jobs are never dropped:
when all ``max_jobs`` are unfinished a new one is refused (429), so memory stays bounded
without losing accepted work. Nothing survives a restart (the README says so).
"""

from __future__ import annotations

import secrets
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Literal

JobStatus = Literal["queued", "running", "done", "failed"]


class JobStoreFullError(RuntimeError):
    """Every slot holds an unfinished job."""


@dataclass
class Job:
    id: str
    name: str  # the input as the client named it
    created: float = field(default_factory=time.time)
    status: JobStatus = "queued"
    finished: float | None = None
    record: dict[str, Any] | None = None
    error: str | None = None
    http_status: int | None = None  # what POST /v1/score would have answered

    def view(self) -> dict[str, Any]:
        """The job as ``GET /v1/jobs/{id}`` shows it."""
        data: dict[str, Any] = {
            "id": self.id,
            "status": self.status,
            "input": self.name,
            "created": self.created,
            "finished": self.finished,
        }
        if self.status in ("done", "failed"):
            data |= {"http_status": self.http_status, "error": self.error, "record": self.record}
        return data


class JobStore:
    """Thread-safe: jobs are updated from the event loop and read by requests."""

    def __init__(self, max_jobs: int, ttl_s: float) -> None:
        if max_jobs < 1 or ttl_s <= 0:
            raise ValueError("max_jobs must be at least 1 and ttl_s more than 0")
        self.max_jobs, self.ttl_s = max_jobs, ttl_s
        self.jobs: dict[str, Job] = {}  # insertion order: oldest first
        self.lock = threading.Lock()

    def create(self, name: str) -> Job:
        with self.lock:
            self._expire()
            if len(self.jobs) >= self.max_jobs and not self._drop_oldest_finished():
                raise JobStoreFullError(f"all {self.max_jobs} job slots hold unfinished jobs")
            job = Job(secrets.token_urlsafe(12), name)
            self.jobs[job.id] = job
            return job

    def get(self, job_id: str) -> Job | None:
        with self.lock:
            self._expire()
            return self.jobs.get(job_id)

    def start(self, job: Job) -> None:
        job.status = "running"

    def finish(
        self, job: Job, http_status: int, record: dict[str, Any] | None, error: str | None
    ) -> None:
        with self.lock:
            job.record, job.error, job.http_status = record, error, http_status
            job.status = "done" if http_status == 200 else "failed"
            job.finished = time.time()

    def unfinished(self) -> int:
        with self.lock:
            return sum(job.finished is None for job in self.jobs.values())

    def _expire(self) -> None:
        cutoff = time.time() - self.ttl_s
        for job_id in [i for i, j in self.jobs.items() if j.finished and j.finished < cutoff]:
            del self.jobs[job_id]

    def _drop_oldest_finished(self) -> bool:
        oldest = next((i for i, j in self.jobs.items() if j.finished is not None), None)
        if oldest is None:
            return False
        del self.jobs[oldest]
        return True
