"""Small asyncio helpers shared by the SDK and the broker."""

from __future__ import annotations

import asyncio


async def cancel_and_wait(task: asyncio.Future | None) -> None:
    """Cancel a background task and wait until it has ended, whatever it ended with: a closing
    component must not return while its task still runs (it could touch what the caller frees
    next), and the task's own failure was already reported where it happened."""
    if task is None:
        return
    task.cancel()
    try:
        await task
    except (asyncio.CancelledError, Exception):
        pass
