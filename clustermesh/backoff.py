"""The one retry policy: exponential backoff with jitter, as client-go's backoff manager.

A :class:`Backoff` hands out delays ``initial * factor**n`` capped at ``maximum``,
each stretched by a random factor in ``[1, 1 + jitter)`` (client-go's ``wait.Jitter``)
so that many clients failing together — 500 KVStoreMesh sessions after a network
blip — do not retry in lockstep.  It starts over from ``initial`` after
:meth:`Backoff.reset` (the caller made progress) or by itself once ``reset_after``
seconds have passed since the last delay (a healthy period, as client-go's
``NewExponentialBackoffManager``'s reset duration).

The policies, declared once here and named where they are used:

============================  =======  =======  ======  ======  ===========
policy                        initial  maximum  factor  jitter  reset after
============================  =======  =======  ======  ======  ===========
:data:`ETCD_REQUEST`           0.05 s    1 s      2      0.5      10 s
:data:`ETCD_CONNECT`           0.5 s    10 s      2      0.2      60 s
:data:`LOCAL_WRITE`            0.1 s    10 s      2      0.5      60 s
:data:`REMOTE_SESSION`         1 s      30 s      2      0.2      60 s
:data:`CLUSTER_REMOVAL`        2 s      30 s      2      0.2      never
:data:`WAIT_FOR_DATA`          1 s      10 s      2      0.2      never
:data:`KUBERNETES`             0.8 s    30 s      2      0.5      60 s
:data:`USER_MANAGEMENT`        1 s      60 s      2      0.5      60 s
:data:`ETCD_STARTING`          0.05 s   0.5 s     2      0        never
:data:`LEADER_ELECTION`        0.5 s    5 s       2      0.2      60 s
============================  =======  =======  ======  ======  ===========

What is never retried: an error that a retry cannot fix.  The etcd client's one
retry path (:class:`clustermesh.etcd.retry.Attempts`, taken by unary calls, the lease
keepalive and watches, with :data:`ETCD_REQUEST` between failovers) retries only
transient errors — unavailable, timeouts, an expired token, an auth revision race —
and raises permission denied (a watch retries it once with a fresh token: etcd 3.5.1
reports an expired token that way), invalid arguments, a bad configuration
(:class:`~clustermesh.etcd.config.EtcdConfigError`) and TLS verification failures at
once.  The loops above a call (a remote's session, the Kubernetes source, cluster
users) do retry those, with their own, slower policy, because they wait for a person
to fix a file, a role or a certificate; each such failure is counted and shown in
the status, never retried silently.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from .clock import REAL_CLOCK, Clock


@dataclass(frozen=True, slots=True, kw_only=True)
class BackoffPolicy:
    initial: float
    maximum: float
    factor: float = 2.0
    jitter: float = 0.2  # each delay is stretched by a random factor in [1, 1 + jitter)
    reset_after: float | None = 60.0  # seconds without a delay that start over; None: never
    # (counted from the end of the last delay: how long the retried attempt lasted)

    def __post_init__(self) -> None:
        if not 0 < self.initial <= self.maximum or self.factor < 1 or self.jitter < 0:
            raise ValueError(f"invalid backoff policy {self}")


ETCD_REQUEST = BackoffPolicy(initial=0.05, maximum=1.0, jitter=0.5, reset_after=10.0)
ETCD_CONNECT = BackoffPolicy(initial=0.5, maximum=10.0)
LOCAL_WRITE = BackoffPolicy(initial=0.1, maximum=10.0, jitter=0.5)
REMOTE_SESSION = BackoffPolicy(initial=1.0, maximum=30.0)
CLUSTER_REMOVAL = BackoffPolicy(initial=2.0, maximum=30.0, reset_after=None)
WAIT_FOR_DATA = BackoffPolicy(initial=1.0, maximum=10.0, reset_after=None)
KUBERNETES = BackoffPolicy(initial=0.8, maximum=30.0, jitter=0.5)
USER_MANAGEMENT = BackoffPolicy(initial=1.0, maximum=60.0, jitter=0.5)
LEADER_ELECTION = BackoffPolicy(initial=0.5, maximum=5.0)  # a campaign failed on etcd
# etcd coming up beside etcdinit (its sidecar, or its own child): poll fast; one client,
# nobody to desynchronise from.
ETCD_STARTING = BackoffPolicy(initial=0.05, maximum=0.5, jitter=0.0, reset_after=None)


class Backoff:
    """Delays of one retry loop under ``policy`` (see the module docstring).

    ``rng`` is for tests that want reproducible jitter; ``clock`` tells the healthy
    period and does the waiting in :meth:`wait`.
    """

    def __init__(self, policy: BackoffPolicy, *, clock: Clock = REAL_CLOCK,
                 rng: random.Random | None = None) -> None:
        self.policy = policy
        self.failures = 0  # delays handed out since the last reset
        self._clock = clock
        self._random = (rng or random).random
        self._retried_at: float | None = None  # clock time the last delay ends

    def reset(self) -> None:
        """The caller made progress: the next delay is ``initial`` again."""
        self.failures = 0
        self._retried_at = None

    def next_delay(self) -> float:
        """The delay before the next attempt (and one more failure counted)."""
        p = self.policy
        now = self._clock.monotonic()
        if (p.reset_after is not None and self._retried_at is not None
                and now - self._retried_at >= p.reset_after):
            self.failures = 0  # the last attempt ran that long before failing: healthy
        base = min(p.initial * p.factor ** min(self.failures, 64), p.maximum)
        self.failures += 1
        delay = base * (1.0 + self._random() * p.jitter)
        self._retried_at = now + delay
        return delay

    async def wait(self) -> None:
        """Sleep :meth:`next_delay` on the clock."""
        await self._clock.sleep(self.next_delay())
