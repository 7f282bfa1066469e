"""Helpers the bench scripts share (each script stays runnable on its own: python bench/NAME.py)."""

from __future__ import annotations

import socket


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
