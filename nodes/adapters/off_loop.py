"""Queue-time checks off ComfyUI's event loop.

ComfyUI awaits every node's ``validate_inputs`` inside ``POST /prompt``, on the server's one asyncio
loop: a check that parses a 256 KiB pack, scans a folder or reads a file header there stops every
other request (``/system_stats``, ``/interrupt``, the editor) for as long as it runs. A node whose
check does more than ``stat`` declares ``async def validate_inputs`` and runs the check here, in a
worker thread, so the server keeps answering (``execution._async_map_node_over_list`` awaits it).
"""
from __future__ import annotations

import asyncio
from collections.abc import Callable


async def off_loop(check: Callable[..., bool | str], *args) -> bool | str:
    """``check(*args)`` (True or the refusal text) in a worker thread."""
    return await asyncio.to_thread(check, *args)
