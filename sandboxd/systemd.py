"""sd_notify without libsystemd: READY=1, STOPPING=1 and WATCHDOG=1 to $NOTIFY_SOCKET.

Under the shipped unit (Type=notify, NotifyAccess=main) systemd considers the service started
only on READY=1, which the daemon sends once its canaries have passed. With WatchdogSec= set,
systemd passes WATCHDOG_USEC and restarts the service when the pings stop.
"""

from __future__ import annotations

import asyncio
import os
import socket

__all__ = ["notify", "watchdog_interval_s", "watchdog_forever"]


def notify(state: str) -> bool:
    """Send one state line; False when there is no notify socket or the send failed."""
    addr = os.environ.get("NOTIFY_SOCKET")
    if not addr:
        return False
    if addr.startswith("@"):
        addr = "\0" + addr[1:]  # abstract namespace
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
        try:
            sock.sendto(state.encode(), addr)
        except OSError:
            return False
    return True


def watchdog_interval_s() -> float | None:
    """Half the watchdog timeout systemd asked for, or None when no watchdog is configured
    for this process (WATCHDOG_PID names another process: the variables were inherited)."""
    usec = os.environ.get("WATCHDOG_USEC", "")
    pid = os.environ.get("WATCHDOG_PID", "")
    if not usec.isdigit() or int(usec) == 0:
        return None
    if pid and pid != str(os.getpid()):
        return None
    return int(usec) / 2e6


async def watchdog_forever(interval_s: float) -> None:
    """Ping from the event loop itself: a loop that stops turning stops the pings."""
    while True:
        notify("WATCHDOG=1")
        await asyncio.sleep(interval_s)
