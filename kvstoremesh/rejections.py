"""What a remote cluster sent that validation kept out of the cache.

One :class:`Rejections` per remote cluster: counts by resource and reason (for
the metric), the latest few examples (for ``status --verbose``), and a bounded
memory of which (key, reason) pairs were already logged, so a remote that keeps
sending the same bad entry produces one log line, not one per update.
"""

from __future__ import annotations

import logging
from collections import Counter, deque
from dataclasses import dataclass

log = logging.getLogger(__name__)

_LOGGED_LIMIT = 10_000  # distinct (key, reason) pairs remembered for log de-duplication


@dataclass(frozen=True, slots=True)
class Rejection:
    resource: str
    key: str
    reason: str


class Rejections:
    def __init__(self, cluster: str, *, examples: int = 5) -> None:
        self.cluster = cluster
        self.counts: Counter[tuple[str, str]] = Counter()  # (resource, reason) -> entries
        self.latest: deque[Rejection] = deque(maxlen=examples)
        self._logged: set[tuple[str, str]] = set()

    def record(self, resource: str, key: str, reason: str) -> None:
        self.counts[(resource, reason)] += 1
        self.latest.append(Rejection(resource, key, reason))
        if (key, reason) in self._logged:
            return
        if len(self._logged) < _LOGGED_LIMIT:
            self._logged.add((key, reason))
            log.warning("cluster %s: %s entry %r rejected: %s", self.cluster, resource, key,
                        reason)
        elif len(self._logged) == _LOGGED_LIMIT:
            self._logged.add(("", ""))
            log.warning("cluster %s: more than %d distinct entries rejected; further ones "
                        "are only counted", self.cluster, _LOGGED_LIMIT)

    @property
    def total(self) -> int:
        return sum(self.counts.values())
