"""Tests for kvstoremesh.configdir: polling the --clustermesh-config directory."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from kvstoremesh.configdir import IGNORE, ClusterFile, ConfigDirectory, ConfigHandler

INTERVAL = 0.05
TIMEOUT = 5.0
LOGGER = "test.configdir"

Event = tuple[str, str, str | None]  # ("upsert", name, digest) | ("remove", name, None)


def config(n: int = 1) -> str:
    return f"endpoints:\n- https://cluster.mesh:{2379 + n}\ntrusted-ca-file: /var/lib/ca.crt\n"


def digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def write(path: Path, text: str) -> None:
    """Replace ``path`` atomically (temporary dotfile + rename), as Kubernetes does."""
    tmp = path.with_name(f".tmp-{path.name}")
    tmp.write_text(text)
    os.replace(tmp, path)


class Recorder:
    """ConfigHandler that records calls on a queue; optionally fails for some names."""

    def __init__(self, *, fail: Callable[[str], bool] = lambda name: False) -> None:
        self.events: asyncio.Queue[Event] = asyncio.Queue()
        self.fail = fail

    async def cluster_upserted(self, file: ClusterFile) -> None:
        assert file.path.name == file.name
        self.events.put_nowait(("upsert", file.name, file.digest))
        if self.fail(file.name):
            raise RuntimeError(f"boom {file.name}")

    async def cluster_removed(self, name: str) -> None:
        self.events.put_nowait(("remove", name, None))
        if self.fail(name):
            raise RuntimeError(f"boom {name}")

    async def next(self) -> Event:
        return await asyncio.wait_for(self.events.get(), TIMEOUT)

    async def expect_quiet(self, directory: Path, name: str = "zz-sentinel") -> None:
        """Prove no event is pending: add a sentinel, its event must come next."""
        write(directory / name, config(99))
        assert await self.next() == ("upsert", name, digest(config(99)))
        (directory / name).unlink()
        assert await self.next() == ("remove", name, None)


class Running:
    def __init__(self, watcher: ConfigDirectory, recorder: Recorder, task: asyncio.Task[None]):
        self.watcher = watcher
        self.recorder = recorder
        self.task = task


def make_watcher(path: Path, *, local: str = "local") -> ConfigDirectory:
    return ConfigDirectory(
        path, local_cluster_name=local, interval=INTERVAL, logger=logging.getLogger(LOGGER)
    )


async def start(watcher: ConfigDirectory, recorder: ConfigHandler) -> asyncio.Task[None]:
    ready = asyncio.Event()
    task = asyncio.create_task(watcher.run(recorder, ready=ready))
    await asyncio.wait_for(ready.wait(), TIMEOUT)
    return task


@pytest.fixture
async def running(tmp_path: Path) -> AsyncIterator[Running]:
    watcher = make_watcher(tmp_path)
    recorder = Recorder()
    task = await start(watcher, recorder)
    yield Running(watcher, recorder, task)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


def records(caplog: pytest.LogCaptureFixture, level: int, needle: str) -> list[str]:
    return [
        r.getMessage() for r in caplog.records
        if r.name == LOGGER and r.levelno == level and needle in r.getMessage()
    ]


# --- scan() -------------------------------------------------------------------


def test_scan_rules(tmp_path: Path) -> None:
    write(tmp_path / "cluster2", config(2))
    write(tmp_path / "cluster1", config(1))
    (tmp_path / "cluster2.etcd-client.crt").write_text("-----BEGIN CERTIFICATE-----\n")
    (tmp_path / "cluster2.etcd-client.key").write_text("endpoints")  # no colon
    (tmp_path / ".hidden").write_text(config(3))
    (tmp_path / "subdir").mkdir()
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
    os.mkfifo(tmp_path / "fifo")
    (tmp_path / "via-link").symlink_to(tmp_path / "cluster1")

    found = make_watcher(tmp_path).scan()

    assert found == {
        "cluster1": ClusterFile("cluster1", tmp_path / "cluster1", digest(config(1))),
        "cluster2": ClusterFile("cluster2", tmp_path / "cluster2", digest(config(2))),
        "via-link": ClusterFile("via-link", tmp_path / "via-link", digest(config(1))),
    }


def test_scan_unreadable_file_is_ignored(tmp_path: Path) -> None:
    if os.geteuid() == 0:
        pytest.skip("root can read files without read permission")
    write(tmp_path / "cluster1", config(1))
    (tmp_path / "cluster1").chmod(0)
    assert make_watcher(tmp_path).scan() == {}


def test_scan_missing_directory_logged_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger=LOGGER)
    watcher = make_watcher(tmp_path / "absent")
    assert watcher.scan() == {}
    assert watcher.scan() == {}
    assert len(records(caplog, logging.WARNING, "does not exist")) == 1


def test_scan_path_is_a_file(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger=LOGGER)
    (tmp_path / "file").write_text(config())
    watcher = make_watcher(tmp_path / "file")
    assert watcher.scan() == {}
    assert len(records(caplog, logging.WARNING, "is not a directory")) == 1


def test_invalid_interval(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="interval"):
        ConfigDirectory(tmp_path, local_cluster_name="local", interval=0)


# --- run() --------------------------------------------------------------------


async def test_initial_set_sorted_then_ready(tmp_path: Path) -> None:
    for name in ("cluster3", "cluster1", "cluster2"):
        write(tmp_path / name, config(int(name[-1])))
    watcher = make_watcher(tmp_path)
    ready = asyncio.Event()
    order: list[str] = []

    class Handler:
        async def cluster_upserted(self, file: ClusterFile) -> None:
            assert not ready.is_set()
            order.append(file.name)

        async def cluster_removed(self, name: str) -> None:
            raise AssertionError(name)

    task = asyncio.create_task(watcher.run(Handler(), ready=ready))
    try:
        await asyncio.wait_for(ready.wait(), TIMEOUT)
        assert order == ["cluster1", "cluster2", "cluster3"]
        assert dict(watcher.known) == {
            n: ClusterFile(n, tmp_path / n, digest(config(int(n[-1])))) for n in order
        }
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert task.cancelled()


async def test_ready_with_empty_directory(running: Running) -> None:
    assert dict(running.watcher.known) == {}
    assert running.recorder.events.empty()


async def test_add_change_remove(running: Running, tmp_path: Path) -> None:
    rec = running.recorder
    write(tmp_path / "cluster1", config(1))
    assert await rec.next() == ("upsert", "cluster1", digest(config(1)))
    assert running.watcher.known["cluster1"].digest == digest(config(1))

    write(tmp_path / "cluster1", config(2))
    assert await rec.next() == ("upsert", "cluster1", digest(config(2)))
    assert running.watcher.known["cluster1"].digest == digest(config(2))

    (tmp_path / "cluster1").unlink()
    assert await rec.next() == ("remove", "cluster1", None)
    assert "cluster1" not in running.watcher.known


async def test_same_content_rewritten_is_no_event(running: Running, tmp_path: Path) -> None:
    rec = running.recorder
    write(tmp_path / "cluster1", config(1))
    assert await rec.next() == ("upsert", "cluster1", digest(config(1)))
    write(tmp_path / "cluster1", config(1))
    os.utime(tmp_path / "cluster1", (1, 1))
    await rec.expect_quiet(tmp_path)


async def test_losing_endpoints_is_removal(running: Running, tmp_path: Path) -> None:
    rec = running.recorder
    write(tmp_path / "cluster1", config(1))
    assert await rec.next() == ("upsert", "cluster1", digest(config(1)))
    write(tmp_path / "cluster1", "trusted-ca-file: /var/lib/ca.crt\n")
    assert await rec.next() == ("remove", "cluster1", None)
    write(tmp_path / "cluster1", config(1))
    assert await rec.next() == ("upsert", "cluster1", digest(config(1)))


async def test_non_config_files_ignored(running: Running, tmp_path: Path) -> None:
    (tmp_path / "cluster2.etcd-client.crt").write_text("-----BEGIN CERTIFICATE-----\n")
    (tmp_path / "cluster2.etcd-client.key").write_text("-----BEGIN PRIVATE KEY-----\n")
    (tmp_path / ".dotfile").write_text(config(1))
    (tmp_path / "..data").mkdir()
    (tmp_path / "a-directory").mkdir()
    await running.recorder.expect_quiet(tmp_path)
    assert dict(running.watcher.known) == {}


@pytest.mark.parametrize("name", ["Cluster_1", "c" * 33, "-cluster", "cluster-"])
async def test_invalid_name_refused_and_logged_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, name: str
) -> None:
    caplog.set_level(logging.DEBUG, logger=LOGGER)
    write(tmp_path / name, config(1))
    watcher = make_watcher(tmp_path)
    rec = Recorder()
    task = await start(watcher, rec)
    try:
        # Several passes happen while each sentinel is added and removed.
        await rec.expect_quiet(tmp_path, "sentinel-a")
        await rec.expect_quiet(tmp_path, "sentinel-b")
        warnings = records(caplog, logging.WARNING, name)
        assert len(warnings) == 1, warnings
        assert str(tmp_path / name) in warnings[0]
        assert "cluster name" in warnings[0]  # the reason from validate_cluster_name
        assert name not in watcher.known

        # New content is a new situation: reported once more.
        write(tmp_path / name, config(2))
        await rec.expect_quiet(tmp_path, "sentinel-c")
        await rec.expect_quiet(tmp_path, "sentinel-d")
        assert len(records(caplog, logging.WARNING, name)) == 2
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


async def test_local_cluster_ignored(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger=LOGGER)
    write(tmp_path / "local", config(1))
    write(tmp_path / "remote", config(2))
    watcher = make_watcher(tmp_path, local="local")
    rec = Recorder()
    task = await start(watcher, rec)
    try:
        assert await rec.next() == ("upsert", "remote", digest(config(2)))
        await rec.expect_quiet(tmp_path, "sentinel-a")
        await rec.expect_quiet(tmp_path, "sentinel-b")
        infos = records(caplog, logging.INFO, "local cluster")
        assert len(infos) == 1, infos
        assert str(tmp_path / "local") in infos[0]
        assert set(watcher.known) == {"remote"}
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


def make_secret_volume(root: Path, version: str, files: dict[str, str]) -> None:
    """Write a Kubernetes Secret-volume payload dir and point ``..data`` at it."""
    payload = root / version
    payload.mkdir()
    for name, text in files.items():
        (payload / name).write_text(text)
    tmp_link = root / "..data_tmp"
    tmp_link.symlink_to(version)
    os.replace(tmp_link, root / "..data")  # atomic swap, as the kubelet does
    for name in files:
        link = root / name
        if not link.is_symlink():
            link.symlink_to(Path("..data") / name)


async def test_secret_volume_swap(tmp_path: Path) -> None:
    ca = "-----BEGIN CERTIFICATE-----\n"
    make_secret_volume(
        tmp_path, "..2024_01_01", {"cluster1": config(1), "cluster1.etcd-client-ca.crt": ca}
    )
    watcher = make_watcher(tmp_path)
    rec = Recorder()
    task = await start(watcher, rec)
    try:
        assert await rec.next() == ("upsert", "cluster1", digest(config(1)))
        assert watcher.known["cluster1"].path == tmp_path / "cluster1"

        make_secret_volume(
            tmp_path, "..2024_01_02", {"cluster1": config(2), "cluster1.etcd-client-ca.crt": ca}
        )
        assert await rec.next() == ("upsert", "cluster1", digest(config(2)))
        await rec.expect_quiet(tmp_path)  # exactly one event for the swap

        # Swap to a payload without cluster1: the visible symlink dangles.
        make_secret_volume(tmp_path, "..2024_01_03", {"cluster2": config(3)})
        events = {await rec.next(), await rec.next()}
        assert events == {
            ("remove", "cluster1", None),
            ("upsert", "cluster2", digest(config(3))),
        }
        assert set(watcher.known) == {"cluster2"}
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


async def test_directory_created_later(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger=LOGGER)
    directory = tmp_path / "config"
    watcher = make_watcher(directory)
    rec = Recorder()
    task = await start(watcher, rec)
    try:
        assert dict(watcher.known) == {}
        staging = tmp_path / "staging"
        staging.mkdir()
        write(staging / "cluster2", config(2))
        write(staging / "cluster1", config(1))
        os.rename(staging, directory)
        assert [await rec.next(), await rec.next()] == [
            ("upsert", "cluster1", digest(config(1))),
            ("upsert", "cluster2", digest(config(2))),
        ]
        assert len(records(caplog, logging.WARNING, "does not exist")) == 1
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


async def test_handler_errors_do_not_stop_the_loop(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger=LOGGER)
    write(tmp_path / "bad", config(1))
    watcher = make_watcher(tmp_path)
    rec = Recorder(fail=lambda name: name == "bad")
    task = await start(watcher, rec)
    try:
        assert await rec.next() == ("upsert", "bad", digest(config(1)))
        errors = records(caplog, logging.ERROR, "bad")
        assert len(errors) == 1 and "bad" in errors[0]

        # The failed change is not retried: the next event is someone else's.
        write(tmp_path / "good", config(2))
        assert await rec.next() == ("upsert", "good", digest(config(2)))
        await rec.expect_quiet(tmp_path)

        # A new change to the failing file is delivered again.
        write(tmp_path / "bad", config(3))
        assert await rec.next() == ("upsert", "bad", digest(config(3)))
        (tmp_path / "bad").unlink()
        assert await rec.next() == ("remove", "bad", None)
        assert len(records(caplog, logging.ERROR, "bad")) == 3
        await rec.expect_quiet(tmp_path)
        assert set(watcher.known) == {"good"}
        assert not task.done()
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


async def test_cancellation_while_handler_blocked(tmp_path: Path) -> None:
    write(tmp_path / "cluster1", config(1))
    watcher = make_watcher(tmp_path)
    entered = asyncio.Event()

    class Blocking:
        async def cluster_upserted(self, file: ClusterFile) -> None:
            entered.set()
            await asyncio.Event().wait()

        async def cluster_removed(self, name: str) -> None:
            raise AssertionError(name)

    ready = asyncio.Event()
    task = asyncio.create_task(watcher.run(Blocking(), ready=ready))
    await asyncio.wait_for(entered.wait(), TIMEOUT)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert task.cancelled()
    assert not ready.is_set()


async def test_a_followed_directory_is_handed_over_without_a_read(tmp_path: Path) -> None:
    """What a standby followed (``IGNORE``) goes to the next handler as it was known,
    without reading the directory first; the next pass reports what changed since."""
    write(tmp_path / "cluster1", config(1))
    write(tmp_path / "cluster2", config(2))
    watcher = make_watcher(tmp_path)
    standby = await start(watcher, IGNORE)
    standby.cancel()
    with pytest.raises(asyncio.CancelledError):
        await standby
    (tmp_path / "cluster2").unlink()  # gone since the standby's last pass
    write(tmp_path / "cluster3", config(3))
    recorder = Recorder()
    leader = await start(watcher, recorder)
    try:
        assert [await recorder.next(), await recorder.next()] == [
            ("upsert", "cluster1", digest(config(1))), ("upsert", "cluster2", digest(config(2)))]
        assert [await recorder.next(), await recorder.next()] == [
            ("remove", "cluster2", None), ("upsert", "cluster3", digest(config(3)))]
    finally:
        leader.cancel()
        with pytest.raises(asyncio.CancelledError):
            await leader
