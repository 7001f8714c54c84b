"""The background tasks a long-running service owns."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Any


class Tasks:
    """Holds a reference to each task while it runs (the event loop keeps only weak ones),
    and cancels and awaits them all when the service stops."""

    def __init__(self) -> None:
        self._running: set[asyncio.Task[Any]] = set()

    def spawn(self, coro: Awaitable[Any]) -> asyncio.Task[Any]:
        task = asyncio.ensure_future(coro)
        self._running.add(task)
        task.add_done_callback(self._running.discard)
        return task

    def connections(self, handler: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]
                    ) -> Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]:  # fmt: skip
        """``handler`` as a server's connection callback whose connections are tasks of this
        set, so stopping ends them; a connection cancelled so ends quietly (Python 3.11's
        streams log a cancelled connection task as an unhandled error with its traceback)."""

        async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            task = asyncio.current_task()
            assert task is not None
            self._running.add(task)
            task.add_done_callback(self._running.discard)
            with contextlib.suppress(asyncio.CancelledError):
                await handler(reader, writer)

        return serve

    def cancel(self) -> None:
        for task in list(self._running):
            task.cancel()

    async def join(self) -> None:
        """Wait for every task to end; their errors are of no use while shutting down."""
        for task in list(self._running):
            with contextlib.suppress(asyncio.CancelledError, Exception):  # shutting down
                await task

    async def stop(self) -> None:
        self.cancel()
        await self.join()
