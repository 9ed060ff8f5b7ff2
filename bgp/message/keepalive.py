"""KEEPALIVE (RFC 4271 section 4.4): a header and nothing else."""
from __future__ import annotations

from ..wire import KEEPALIVE, frame

KEEPALIVE_BYTES = frame(KEEPALIVE, b"")
