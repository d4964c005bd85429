"""Every Redis key host writes, built in one place under one prefix."""

from __future__ import annotations

PREFIX = "host:"

#: List of dead-letter records, newest first (JSON strings), trimmed to HOST_DEADLETTER_KEEP.
DEADLETTER = PREFIX + "deadletter"
#: Hash of dead-letter counts by reason code, plus the field ``total``.
DEADLETTER_COUNTS = PREFIX + "deadletter:counts"
#: Prefix of the keys (one per dead-letter record id, kept an hour) that make writing a record
#: twice (a write that timed out but happened, then written again) keep it once.
DEADLETTER_SEEN = PREFIX + "deadletter:seen:"
#: Hash: worker name -> its health (JSON), as the checker last stored it.
WORKERS = PREFIX + "workers"
#: Stream of audit records: every transition, drain confirmation and operator action.
AUDIT = PREFIX + "audit"
#: Hash: worker name -> its last report, summarised (JSON), for `fleet status`.
REPORTS = PREFIX + "reports"
#: List of operators' requests to the checker (signed JSON), oldest at the right.
OPERATOR_REQUESTS = PREFIX + "operator:requests"


def operator_requests(shard: int = 0) -> str:
    """The list of operators' requests for the workers of one shard (shard 0: the only list of
    an unsharded fleet)."""
    return OPERATOR_REQUESTS if shard == 0 else f"{OPERATOR_REQUESTS}:{shard}"


def operator_reply(request_id: str) -> str:
    """The list the checker pushes its answer to one operator request onto."""
    return f"{PREFIX}operator:reply:{request_id}"


def gate(worker: str) -> str:
    """Set (to the reason) while the checker holds ``worker`` out of rotation; absent otherwise.

    Pool processes check it before starting any work-queue task, so a verdict takes effect
    the moment the checker records it, before the worker has even heard of it.
    """
    return f"{PREFIX}gate:{worker}"


#: The checker lease: "<epoch>:<checker id>" of the leading checker, with a TTL. Only the
#: holder may write states, the audit log and gate keys (every such write checks it).
LEADER = PREFIX + "checker:leader"
#: The fencing counter: incremented each time a checker takes the lease. Workers refuse
#: drain/admit commands signed with an epoch older than this.
EPOCH = PREFIX + "checker:epoch"


def leader(shard: int = 0) -> str:
    """The lease of one shard's leading checker (shard 0: ``LEADER``, as unsharded)."""
    return LEADER if shard == 0 else f"{LEADER}:{shard}"


def epoch(shard: int = 0) -> str:
    """The fencing counter of one shard's lease (shard 0: ``EPOCH``, as unsharded)."""
    return EPOCH if shard == 0 else f"{EPOCH}:{shard}"


def guard(shard: int) -> str:
    """Hash: one shard's guard figures (its size and what it has out, fleet-wide and per
    queue), written by that shard's leader; every shard's admission reads them all."""
    return f"{PREFIX}guard:{shard}"


def guard_ejections(shard: int) -> str:
    """Sorted set: one shard's ejections for wear (scored by time), for the fleet-wide rate."""
    return f"{PREFIX}guard:{shard}:ejections"


def nonce(value: str) -> str:
    """Set once, with a TTL, when a signed command bearing ``value`` is first accepted: every
    receiver checks it, so a command is obeyed at most once fleet-wide, across restarts."""
    return f"{PREFIX}nonce:{value}"


def job(job_id: str) -> str:
    """Hash: a job's definition and progress (input, output, chunks written, state)."""
    return f"{PREFIX}job:{job_id}"


def job_plan(job_id: str) -> str:
    """Hash: chunk id -> the chunk's place in the input and its task (JSON), for resuming."""
    return f"{PREFIX}job:{job_id}:plan"


def job_costs(job_id: str) -> str:
    """List: every chunk's measured cost (JSON), in the order the job collected them."""
    return f"{PREFIX}job:{job_id}:costs"


def job_chunk(job_id: str, chunk_id: int) -> str:
    """A chunk's records and cost (JSON), stored by the worker that ran it (idempotent SET)."""
    return f"{PREFIX}job:{job_id}:chunk:{chunk_id}"


def job_cancelled(job_id: str) -> str:
    """Set when a job is cancelled: workers skip its chunks."""
    return f"{PREFIX}job:{job_id}:cancelled"


#: Sorted set of job ids by creation time, for ``job status`` without an id.
JOBS = PREFIX + "jobs"


#: Hash: API key id -> the key (JSON: name, digest of its secret, scopes, rate, revoked_at).
API_KEYS = PREFIX + "api:keys"


def api_key_counts(key_id: str) -> str:
    """Hash: what one API key sent, by outcome (``accepted``, ``analysed``, ``rejected:<reason>``)."""
    return f"{PREFIX}api:key:{key_id}:counts"


def api_message(message_id: str) -> str:
    """A message the API accepted: its task, its place in it, then its outcome (JSON, expiring)."""
    return f"{PREFIX}api:msg:{message_id}"


def api_idempotency(key_id: str, idempotency_key: str) -> str:
    """What a submission with this Idempotency-Key returned (JSON), kept a day."""
    return f"{PREFIX}api:idem:{key_id}:{idempotency_key}"
