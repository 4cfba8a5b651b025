"""Is the network there? A quick answer before any download.

huggingface_hub and urllib retry a failed request with back-off for up to a minute; a failed DNS
lookup answers at once and means the same thing, so every download path asks here first.
"""

from __future__ import annotations

import os
import socket
import threading


def offline_forced(*extra_vars: str) -> str | None:
    """The reason when the user asked for offline mode (``TRANSFERKIT_OFFLINE`` or one of ``extra_vars``)."""
    for var in ("TRANSFERKIT_OFFLINE", *extra_vars):
        if os.environ.get(var, "") not in ("", "0"):
            return f"offline mode is set ({var})"
    return None


def unreachable_reason(host: str, *, timeout: float = 3.0) -> str | None:
    """Why ``host`` cannot be reached now, or ``None`` when its name resolves.

    ``TRANSFERKIT_OFFLINE=1`` forces the offline answer without a lookup.
    """
    forced = offline_forced()
    if forced:
        return forced
    outcome: list[str | None] = []

    def _lookup() -> None:
        try:
            socket.getaddrinfo(host, 443)
            outcome.append(None)
        except OSError as exc:
            outcome.append(f"cannot resolve {host} ({exc.strerror or exc}), so there is no internet connection")

    t = threading.Thread(target=_lookup, daemon=True)  # getaddrinfo has no timeout of its own
    t.start()
    t.join(timeout)
    return outcome[0] if outcome else f"no answer looking up {host} within {timeout:g} s"
