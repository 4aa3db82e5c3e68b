"""A free TCP port on loopback, for tests that start servers (Ray, a port nothing listens on)."""

from __future__ import annotations

import socket


def free_port(host: str = "127.0.0.1") -> int:
    """A port the OS just handed out and released: free unless something takes it first."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]
