"""The metrics of a replica served by several worker processes (`serve --workers N`, see
`supervisor.py`): a scrape of `/metrics`, whichever worker answers it, reports every
worker, each sample labelled `worker` with the id of the worker it counts.

Owns where the workers keep their metrics and how one scrape reads them all:

- Counters and histograms keep their values in memory-mapped files, one set per worker
  (prometheus_client's multiprocess storage, `MultiProcessValue`), in a directory the
  supervisor makes and removes. Every increment is in the file as it is made, with no
  system call (the file is mapped), so a scrape counts every request any worker answered:
  a worker killed outright loses none of its counts. The files are named by the worker's
  id rather than its pid, so a restarted worker continues the counts of the one it
  replaces instead of starting a new series at zero (no counter reset for Prometheus).
- Gauges and collectors that read the process at scrape time (requests in flight, open
  connections, upstream health as this worker's passive health sees it) are what
  prometheus_client's multiprocess mode cannot do (it drops custom collectors, cannot call
  a gauge's function in another process, and would need a mode per gauge). Each worker
  reads its own and publishes them to a file of its own every `PUBLISH_INTERVAL_S`, off the
  request path; the supervisor deletes a dead worker's. A scrape reads the scraped
  worker's own values now and its siblings' as last published (at most a second old).
- A scrape is answered from the files alone: a sibling that is busy, hung or restarting
  cannot delay or fail it.

Why files rather than asking the siblings over a local socket at scrape time: a worker
killed with SIGKILL would take the counts it held with it, and a scrape would wait on (or
miss) a worker that is slow to answer. The cost is one mapped write per counter update
(histograms: two), under prometheus_client's lock.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator, Iterable, Iterator
from pathlib import Path
from typing import Any

from aiohttp import web
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Histogram,
    Summary,
    generate_latest,
    values,
)
from prometheus_client.metrics_core import Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector
from prometheus_client.samples import Sample
from structlog.typing import FilteringBoundLogger

# prometheus_client's names for the kinds of value it keeps in files, as the files' prefix.
DURABLE_TYPES = ("counter", "histogram", "summary")
DURABLE_METRICS = (Counter, Histogram, Summary)
# The supervisor's own counts (worker restarts) carry their own `worker` label.
SUPERVISOR = "supervisor"
PUBLISH_INTERVAL_S = 1.0
_LIVE = "live"
_MULTIPROC_DIR = "PROMETHEUS_MULTIPROC_DIR"


def keep_counts_in(directory: Path, identity: str) -> None:
    """From now on, counters and histograms created in this process keep their values in
    `directory`, in files named by `identity` (a worker id, or SUPERVISOR); gauges stay in
    memory. Called by each worker before it builds its app (prometheus_client picks the
    storage of a value when the value is created, from a module-level class)."""
    os.environ[_MULTIPROC_DIR] = str(directory)  # where MultiProcessValue opens its files
    in_files = values.MultiProcessValue(process_identifier=lambda: identity)  # type: ignore[no-untyped-call]

    def value_class(typ: str, *args: Any, **kwargs: Any) -> Any:
        if typ in DURABLE_TYPES:
            return in_files(typ, *args, **kwargs)
        return values.MutexValue(typ, *args, **kwargs)  # type: ignore[no-untyped-call]

    values.ValueClass = value_class


def forget_worker(directory: Path, identity: str) -> None:
    """What a dead worker published about its state: gone with it (the supervisor's part).
    Its counts stay, for its replacement to continue."""
    for path in (_live_file(directory, identity), _live_file(directory, identity, ".tmp")):
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def _live_file(directory: Path, identity: str, suffix: str = "") -> Path:
    return directory / f"{_LIVE}_{identity}.prom{suffix}"


class Registry(CollectorRegistry):
    """prometheus_client's registry, keeping the list of what was registered in it: a
    worker publishes the part of it that is not in files."""

    def __init__(self) -> None:
        super().__init__(auto_describe=True)
        self.collectors: list[Collector] = []

    def register(self, collector: Collector) -> None:
        super().register(collector)
        self.collectors.append(collector)

    def unregister(self, collector: Collector) -> None:
        super().unregister(collector)
        self.collectors.remove(collector)


class _Families:
    """Metric families as a collector, for generate_latest()."""

    def __init__(self, families: Iterable[Metric]) -> None:
        self._families = families

    def collect(self) -> Iterable[Metric]:
        return self._families


class _Live:
    """The part of a worker's registry read from the process: everything but the
    counters and histograms (those are in files)."""

    def __init__(self, registry: Registry) -> None:
        self._registry = registry

    def collect(self) -> Iterator[Metric]:
        for collector in list(self._registry.collectors):
            if not isinstance(collector, DURABLE_METRICS):
                yield from collector.collect()


class ReplicaMetrics:
    """One worker's side of the replica's metrics: it publishes its live part, and
    answers a scrape for all the workers (see the module docstring)."""

    def __init__(
        self, directory: Path, worker: str, registry: Registry, log: FilteringBoundLogger
    ) -> None:
        self.directory = directory
        self.worker = worker
        self._live = _Live(registry)
        self._log = log
        self._published = True

    def exposition(self) -> bytes:
        families: dict[str, Metric] = {}
        for identity, files in sorted(self._durable_files().items()):
            merged: Iterable[Metric] = MultiProcessCollector.merge(files, accumulate=True)  # type: ignore[no-untyped-call]
            _add(families, merged, identity)
        _add(families, self._live.collect(), self.worker)
        for path in sorted(self.directory.glob(f"{_LIVE}_*.prom")):
            identity = _identity(path)
            if identity == self.worker:
                continue
            try:
                text = path.read_text()
            except FileNotFoundError:  # that worker died since the glob
                continue
            _add(families, text_string_to_metric_families(text), identity)
        return generate_latest(_Families(families.values()))

    def _durable_files(self) -> dict[str, list[str]]:
        files: dict[str, list[str]] = {}
        for path in self.directory.glob("*.db"):
            kind, _, identity = path.stem.partition("_")
            if kind in DURABLE_TYPES:
                files.setdefault(identity, []).append(str(path))
        return files

    def publish(self) -> None:
        """This worker's live part, replaced whole (a reader sees the old or the new)."""
        temporary = _live_file(self.directory, self.worker, ".tmp")
        temporary.write_bytes(generate_latest(self._live))
        temporary.replace(_live_file(self.directory, self.worker))

    async def publishing(self, app: web.Application) -> AsyncIterator[None]:
        """A cleanup context: publishes at start-up, then every PUBLISH_INTERVAL_S."""
        self.publish()
        task = asyncio.create_task(self._publish_forever())
        yield
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    async def _publish_forever(self) -> None:
        while True:
            await asyncio.sleep(PUBLISH_INTERVAL_S)
            try:
                self.publish()
            except OSError as error:
                # The siblings report this worker's last published state meanwhile; said
                # once per failing spell, not every second.
                if self._published:
                    self._log.warning("metrics_not_published", error=str(error))
                self._published = False
            else:
                self._published = True


def _identity(path: Path) -> str:
    return path.name.removesuffix(".prom").partition("_")[2]


def _add(families: dict[str, Metric], metrics: Iterable[Metric], identity: str) -> None:
    """`metrics` of one worker (or of the supervisor) into `families`, labelled."""
    worker = {} if identity == SUPERVISOR else {"worker": identity}
    for metric in metrics:
        family = families.get(metric.name)
        if family is None:
            family = families[metric.name] = Metric(
                metric.name, metric.documentation, metric.type, metric.unit
            )
        family.samples += [
            Sample(s.name, {**s.labels, **worker}, s.value, s.timestamp) for s in metric.samples
        ]
