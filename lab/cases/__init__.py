"""The loss cases, one module each, in the order of the design notes' list (then the extra one).
`python -m lab list` shows them with their options; lab/loss.py has what they share."""
from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path
from typing import Any, Optional

from dataplane.nslab import Lab

from ..loss import Case, CaseResult
from .fragment import FragmentGateway
from .host_queue import HostQueue
from .no_listener import NoListener
from .rcvbuf import Rcvbuf
from .session_limit import SessionLimit
from .stale_session import StaleSession

CASES: dict[str, type[Case]] = {c.name: c for c in (FragmentGateway, StaleSession, Rcvbuf, HostQueue, SessionLimit,
                                                     NoListener)}



def options(name: str, **overrides: Any) -> argparse.Namespace:
    """A case's options: its defaults, with `overrides` (by option dest: stale_seconds=40)."""
    p = argparse.ArgumentParser()
    CASES[name].add_options(p)
    o = p.parse_args([])
    for k, v in overrides.items():
        if not hasattr(o, k):
            raise TypeError(f"{name} has no option {k!r}")
        setattr(o, k, v)
    why = CASES[name].check_options(o)
    if why:
        raise ValueError(f"{name}: {why}")
    return o


def run(name: str, tmp: Optional[Path] = None, **overrides: Any) -> CaseResult:
    """Run one case in its own Lab (and temp dir, unless given); everything it made is removed
    when it returns or raises."""
    o = options(name, **overrides)
    own = tmp is None
    tmp = Path(tempfile.mkdtemp(prefix=f"moor-lab-{name}-")) if own else tmp
    lab = Lab()
    try:
        return CASES[name](lab, tmp, o).run()
    finally:
        lab.close(close_pipes=True)
        if own:
            shutil.rmtree(tmp, ignore_errors=True)


__all__ = ["CASES", "options", "run"]
