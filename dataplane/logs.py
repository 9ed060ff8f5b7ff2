"""moord's log lines: text for people, or JSON lines (`--log-format json`) for a log pipeline:
ts, level, logger, msg, and the fields a line carries (`extra=`: peer, old, new, reason, ...)."""
from __future__ import annotations

import json
import logging
import time
from typing import TextIO

# a LogRecord's own attributes: everything else on a record was passed as a field
_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime"}
TEXT = "%(asctime)s %(levelname)s %(name)s %(message)s"


class JSONFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        doc = {"ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
               "level": record.levelname, "logger": record.name, "msg": record.getMessage()}
        for k, v in vars(record).items():
            if k not in _STANDARD and k not in doc:
                doc[k] = v
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        return json.dumps(doc, default=str)


def setup(stream: TextIO, fmt: str = "text", verbose: bool = False) -> None:
    """INFO and up (DEBUG with `verbose`) to `stream`, one line per record."""
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JSONFormatter() if fmt == "json" else logging.Formatter(TEXT))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
