"""The client-side rate limit of the Kubernetes client: client-go's token bucket.

Like client-go's default ``tokenBucketRateLimiter`` (``--k8s-client-qps``,
``--k8s-client-burst``; Cilium's defaults 10 and 20), one :class:`TokenBucket` per
source is shared by all its reflectors and a token is taken before every request: each
list page and each watch start, not each watch event (a watch is one request).  It
holds ``burst`` tokens, refills at ``qps`` per second, and a caller that finds it empty
reserves the next token and sleeps until it is due, so waiting callers are served in
order (``golang.org/x/time/rate``'s reservations).  It only matters when many kinds list
at once or relist together; ``qps <= 0`` disables it.  It reads and sleeps on the
injected :class:`~clustermesh.clock.Clock`.
"""

from __future__ import annotations

from clustermesh.clock import REAL_CLOCK, Clock

#: Cilium's ``--k8s-client-qps`` / ``--k8s-client-burst`` defaults (cmdref of
#: ``clustermesh-apiserver clustermesh``).
DEFAULT_CLIENT_QPS = 10.0
DEFAULT_CLIENT_BURST = 20
#: A request held back longer than this by the rate limit is logged (client-go logs
#: "Waited for ... due to client-side throttling" past one second too).
LONG_THROTTLE_SECONDS = 1.0


class TokenBucket:
    """client-go's token bucket rate limiter (see the module docstring): ``burst``
    tokens, refilled at ``qps`` per second; ``qps <= 0`` is unlimited."""

    def __init__(self, *, qps: float, burst: int, clock: Clock = REAL_CLOCK) -> None:
        if qps > 0 and burst < 1:
            raise ValueError("burst must be >= 1 when qps > 0")
        self.qps = qps
        self.burst = burst
        self._clock = clock
        self._tokens = float(burst)  # a new limiter starts full, allowing a burst at once
        self._last = clock.monotonic()

    async def wait(self) -> float:
        """Take one token, sleeping until it is due; returns the seconds slept."""
        if self.qps <= 0:
            return 0.0
        now = self._clock.monotonic()
        self._tokens = min(float(self.burst), self._tokens + (now - self._last) * self.qps)
        self._last = now
        # Taken now even if not yet there: a negative balance is the queue of reservations,
        # so the next caller waits behind this one instead of racing it.
        self._tokens -= 1.0
        if self._tokens >= 0:
            return 0.0
        delay = -self._tokens / self.qps
        await self._clock.sleep(delay)
        return delay
