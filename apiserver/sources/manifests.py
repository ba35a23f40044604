"""Kubernetes objects from YAML files in a directory, watched live.

Every ``*.yaml``, ``*.yml`` and ``*.json`` file below the directory (dotfiles
and dot-directories skipped) may hold several documents; a document is one
object (``apiVersion``, ``kind``, ``metadata.name``) or a ``kind: List``.  Kinds
the apiserver does not use are ignored.

The directory is polled (like the KVStoreMesh config directory: no extra
dependency, and atomic renames and symlink swaps need no special casing).  The
first scan delivers ``replace`` + ``synced`` for every kind; later scans deliver
the differences.  A file that fails to parse is reported once, naming the file
and the problem, and the objects it held before stay published — a typo never
withdraws a service from the mesh.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from clustermesh.clock import REAL_CLOCK, Clock

from . import KINDS_BY_NAME, Kind, Obj, ObjectSink, ReportedOnce, object_key

log = logging.getLogger(__name__)

_SUFFIXES = (".yaml", ".yml", ".json")
ObjectId = tuple[str, str, str]  # (kind, namespace, name)


class ManifestError(ValueError):
    pass


def parse_manifest(text: str, *, source: Path) -> list[dict[str, Any]]:
    """The objects in one file; ManifestError names the file, document and problem."""
    try:
        documents = list(yaml.safe_load_all(text))
    except yaml.YAMLError as exc:
        raise ManifestError(f"{source}: invalid YAML: {exc}") from None
    objects: list[dict[str, Any]] = []
    for index, doc in enumerate(documents, start=1):
        if doc is None:
            continue
        items = doc.get("items") if isinstance(doc, dict) and doc.get("kind") == "List" else [doc]
        for obj in items or []:
            if not isinstance(obj, dict):
                raise ManifestError(f"{source}: document {index}: not a Kubernetes object")
            kind = obj.get("kind")
            name = (obj.get("metadata") or {}).get("name") if isinstance(
                obj.get("metadata"), dict) else None
            if not isinstance(kind, str) or not isinstance(name, str) or not name:
                raise ManifestError(
                    f"{source}: document {index}: needs 'kind' and 'metadata.name'")
            objects.append(obj)
    return objects


class ManifestSource:
    def __init__(self, directory: Path, *, interval: float = 1.0,
                 clock: Clock = REAL_CLOCK) -> None:
        self.directory = directory
        self.interval = interval
        self._clock = clock
        self._by_file: dict[Path, tuple[str, list[dict[str, Any]]]] = {}  # path -> (hash, objs)
        self._problems: ReportedOnce[Path] = ReportedOnce(log.error)

    def scan(self) -> dict[ObjectId, dict[str, Any]]:
        """Read the directory; returns every object by (kind, namespace, name)."""
        files = sorted(p for p in self.directory.rglob("*")
                       if p.suffix in _SUFFIXES and p.is_file()
                       and not any(part.startswith(".") for part in
                                   p.relative_to(self.directory).parts))
        seen: dict[Path, tuple[str, list[dict[str, Any]]]] = {}
        for path in files:
            try:
                raw = path.read_bytes()
            except OSError as exc:
                self._problems.report(path, "unreadable", "%s: cannot read: %s", path, exc)
                if path in self._by_file:
                    seen[path] = self._by_file[path]
                continue
            digest = hashlib.sha256(raw).hexdigest()
            cached = self._by_file.get(path)
            if cached is not None and cached[0] == digest:
                seen[path] = cached
                continue
            try:
                objects = parse_manifest(raw.decode("utf-8", errors="replace"), source=path)
            except ManifestError as exc:
                self._problems.report(path, digest, "%s; keeping the objects it held before",
                                      exc)
                if cached is not None:
                    seen[path] = cached
                continue
            self._problems.resolved(path)
            seen[path] = (digest, objects)
        self._by_file = seen
        result: dict[ObjectId, dict[str, Any]] = {}
        for path, (_, objects) in seen.items():
            for obj in objects:
                ns, name = object_key(obj)
                oid = (obj["kind"], ns, name)
                if oid in result:
                    log.warning("%s: %s %s/%s is defined more than once; the last one wins",
                                path, *oid)
                result[oid] = obj
        return result

    async def run(self, sink: ObjectSink, kinds: Sequence[Kind]) -> None:
        wanted = {k.name: k for k in kinds}
        if not self.directory.is_dir():
            log.warning("manifests directory %s does not exist (yet); publishing nothing",
                        self.directory)
        current = await asyncio.to_thread(self._scan_wanted, wanted)
        for kind in kinds:
            sink.replace(kind, [o for (k, _, _), o in current.items() if k == kind.name])
            sink.synced(kind)
        while True:
            await self._clock.sleep(self.interval)
            new = await asyncio.to_thread(self._scan_wanted, wanted)
            for oid in current.keys() - new.keys():
                sink.delete(KINDS_BY_NAME[oid[0]], oid[1], oid[2])
            for oid, obj in new.items():
                if current.get(oid) != obj:
                    sink.upsert(KINDS_BY_NAME[oid[0]], obj)
            current = new

    def _scan_wanted(self, wanted: dict[str, Kind]) -> dict[ObjectId, Obj]:
        if not self.directory.is_dir():
            return {}
        return {oid: obj for oid, obj in self.scan().items() if oid[0] in wanted}
