"""Background work: the job queue, the converter worker that drains it, and garbage collection.

* ``queue.py``: the database job queue: claim, lease, heartbeat, finish, retry;
* ``worker.py``: the converter worker loop (``registry worker``, or threads in ``registry serve``);
* ``gc.py``: garbage collection of unreferenced blobs and stale uploads (``registry gc``).

``from registry import jobs`` gives the queue (``jobs.claim``, ``jobs.finish``, ...).
"""

from registry.jobs.queue import (
    CONVERT,
    RUNNING,
    SUCCEEDED,
    ClaimedJob,
    claim,
    finish,
    heartbeat,
    retry_later,
)

__all__ = ["CONVERT", "RUNNING", "SUCCEEDED", "ClaimedJob", "claim", "finish", "heartbeat", "retry_later"]
