"""The ownership tracker: every row of the scenario table of facts §1.2 (IP reuse)."""

from __future__ import annotations

import pytest

from apiserver.ownership import DELETE, KEEP, Ownership

V4 = "cilium/state/ip/v1/default/10.0.0.5"
V6 = "cilium/state/ip/v1/default/fd00:10:244::5"


@pytest.mark.parametrize("key", [V4, V6])
def test_scenario_table(key: str) -> None:
    contests: list[tuple[str, list[object]]] = []
    own = Ownership(on_contested=lambda k, owners: contests.append((k, owners)))
    # A created: A's value (A is primary).
    assert own.claim(key, "A", b"a1") == b"a1"
    # B created: still A's (B pending #1).
    assert own.claim(key, "B", b"b1") is KEEP
    assert contests == [(key, ["A", "B"])]
    assert own.contested == 1
    # B updated: still A's; B's stored entry replaced.
    assert own.claim(key, "B", b"b2") is KEEP
    # A updated: A's new value.
    assert own.claim(key, "A", b"a2") == b"a2"
    # C created: A's (pending = [B, C]).
    assert own.claim(key, "C", b"c1") is KEEP
    assert own.pending(key) == ["B", "C"]
    assert len(contests) == 1  # one log line per conflict episode
    # A deleted (or stops listing the key): B's latest value, no delete.
    assert own.release(key, "A") == b"b2"
    assert own.primary(key) == "B" and own.pending(key) == ["C"]
    assert own.promotions == 1
    # A re-added while B is primary: B's stays; A joins the back of the queue.
    assert own.claim(key, "A", b"a3") is KEEP
    assert own.pending(key) == ["C", "A"]
    # A non-primary deleted: nothing written.
    assert own.release(key, "A") is KEEP
    assert own.pending(key) == ["C"]
    # B deleted: C's value.
    assert own.release(key, "B") == b"c1"
    assert own.contested == 0
    # C deleted: key deleted.
    assert own.release(key, "C") is DELETE
    assert len(own) == 0 and own.primary(key) is None
    assert own.promotions == 2


def test_pending_that_leaves_and_returns_goes_to_the_back() -> None:
    own = Ownership()
    own.claim(V4, "A", b"a")
    own.claim(V4, "B", b"b")
    own.claim(V4, "C", b"c")
    assert own.release(V4, "B") is KEEP
    assert own.claim(V4, "B", b"b2") is KEEP
    assert own.pending(V4) == ["C", "B"]
    assert own.release(V4, "A") == b"c"


def test_release_of_an_unknown_key_or_owner_does_nothing() -> None:
    own = Ownership()
    assert own.release(V4, "A") is KEEP
    own.claim(V4, "A", b"a")
    assert own.release(V4, "Z") is KEEP
    assert own.primary(V4) == "A"


def test_a_new_conflict_episode_is_reported_again() -> None:
    contests: list[str] = []
    own = Ownership(on_contested=lambda k, owners: contests.append(k))
    own.claim(V4, "A", b"a")
    own.claim(V4, "B", b"b")
    own.release(V4, "B")
    own.claim(V4, "B", b"b")
    assert contests == [V4, V4]
    assert own.contested == 1


def test_keys_are_independent() -> None:
    own = Ownership()
    assert own.claim(V4, "A", b"a4") == b"a4"
    assert own.claim(V6, "B", b"b6") == b"b6"
    assert own.claim(V6, "A", b"a6") is KEEP
    assert own.release(V4, "A") is DELETE
    assert own.primary(V6) == "B"


def test_rebuild_keeps_the_exported_claimant_primary() -> None:
    contests: list[list[object]] = []
    own = Ownership(on_contested=lambda k, owners: contests.append(owners))
    # Queue order (creationTimestamp, name) puts A first, but B's value is exported.
    value = own.rebuild(V4, [("A", b"a"), ("B", b"b"), ("C", b"c")],
                        exported=lambda v: v == b"b")
    assert value == b"b"
    assert own.primary(V4) == "B" and own.pending(V4) == ["A", "C"]
    assert contests == [["B", "A", "C"]]
    assert own.release(V4, "B") == b"a"


def test_rebuild_without_an_exported_claimant_takes_the_first() -> None:
    own = Ownership()
    assert own.rebuild(V4, [("A", b"a"), ("B", b"b")], exported=lambda v: False) == b"a"
    assert own.primary(V4) == "A" and own.contested == 1
    assert own.rebuild(V6, [("C", b"c")], exported=lambda v: False) == b"c"
    assert own.contested == 1
