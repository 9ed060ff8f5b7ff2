"""NOTIFICATION (RFC 4271 section 4.5)."""
from __future__ import annotations

from dataclasses import dataclass

from ..wire import NOTIFICATION, frame


@dataclass
class Notification:
    code: int
    subcode: int
    data: bytes = b""

    def encode(self) -> bytes:
        return frame(NOTIFICATION, bytes([self.code, self.subcode]) + self.data[:4096 - 21])


def decode(body: bytes) -> Notification:
    return Notification(body[0], body[1], body[2:])
