"""Background work that must outlive the request that started it (releasing a rate-limit
lease after a client left, reconciling tokens): named, referenced until done, its failures
logged, and awaited on shutdown."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any

from structlog.typing import FilteringBoundLogger

from gateway.observability.logs import where_it_failed


class BackgroundTasks:
    def __init__(self, log: FilteringBoundLogger) -> None:
        self._log = log
        self._tasks: set[asyncio.Task[None]] = set()

    def spawn(self, coroutine: Coroutine[Any, Any, None], name: str) -> None:
        task = asyncio.get_running_loop().create_task(coroutine, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._finished)

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and (exc := task.exception()) is not None:
            self._log.error(
                "background_task_failed", task=task.get_name(), where=where_it_failed(exc)
            )

    @property
    def pending(self) -> int:
        return len(self._tasks)

    async def drain(self, seconds: float) -> None:
        """Wait for pending tasks (they are short), cancelling any still running after."""
        if not self._tasks:
            return
        _, still_running = await asyncio.wait(set(self._tasks), timeout=seconds)
        for task in still_running:
            task.cancel()
