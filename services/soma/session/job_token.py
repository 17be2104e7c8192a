"""The generation token that signs a session's adaptation jobs.

Mining and training jobs decide which adapter a session is switched to, so only the session's own
adaptation driver may start them. Each session's live record holds a random secret (made when the
session opens, never sent to clients); the driver signs the job of (kind, session, generation)
with an HMAC of it, and the job services recompute the HMAC from the record in the session store
before they enqueue anything. A caller that can reach the job services (another pod with the
service token) but not the session store cannot sign a job, so it cannot pre-empt a session's
idempotent job id with a job of its own making. Pure: no I/O.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

KINDS = ("mine", "train", "forget")


def job_name(kind: str, session_id: str, generation: int) -> str:
    """A job's id, its idempotency key: `{kind}-{session}-{generation}` (soma.jobs.queue checks the parts)."""
    return f"{kind}-{session_id}-{generation}"


def new_secret() -> str:
    """A session's signing secret: 256 random bits, hex."""
    return secrets.token_hex(32)


def job_token(secret: str, kind: str, session_id: str, generation: int) -> str:
    """The token of one job: HMAC-SHA256(secret, "kind:session:generation"), hex."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, not {kind!r}")
    if not secret:
        raise ValueError("the session has no signing secret")
    message = f"{kind}:{session_id}:{generation}".encode()
    return hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()


def token_matches(secret: str, kind: str, session_id: str, generation: int, token: str) -> bool:
    """Whether `token` signs this job (constant-time; False when the session has no secret)."""
    if not secret or not token:
        return False
    # as bytes: compare_digest refuses str with non-ASCII characters, and a token is the caller's input
    return hmac.compare_digest(job_token(secret, kind, session_id, generation).encode(), token.encode())
