"""A step/undo runner: every step of an ADD registers how to undo it; when a step fails, the
steps so far (the failing one included) are undone in reverse order, so a failed ADD leaves
nothing behind."""
from __future__ import annotations

import sys
from .spec.record import record, field

TYPE_CHECKING = False
if TYPE_CHECKING:  # importing typing costs ~4 ms of plugin start-up; annotations are strings
    from typing import Callable, Optional, TypeVar

    T = TypeVar("T")



class InjectedFailure(Exception):
    """Raised by a failpoint: tests use it to prove each step's undo."""


@record
class Steps:
    failpoint: Optional[str] = None  # name of the step after which to fail (tests)
    pause: Optional[str] = None  # "STEP:SECONDS": sleep after that step (tests: make calls overlap)
    done: list[tuple[str, Callable[[], object]]] = field(default_factory=list)
    names: list[str] = field(default_factory=list)  # every step that ran, in order
    undo_errors: list[str] = field(default_factory=list)

    def run(self, name: str, do: Callable[[], T], undo: Optional[Callable[[], object]] = None) -> T:
        """Run a step. Its undo is registered *before* it runs, so a step that fails half-way
        (an IPAM plugin that allocated and then printed garbage) is undone too: every undo must
        therefore be idempotent, undoing whatever part of its step happened."""
        if undo is not None:
            self.done.append((name, undo))
        value = do()
        self.names.append(name)
        self.point(name)
        return value

    def point(self, name: str) -> None:
        """A named point for tests (MOOR_PAUSE, MOOR_FAILPOINT), also inside a step: where a
        SIGKILL or a failure leaves the node half-changed."""
        if self.pause and self.pause.partition(":")[0] == name:
            import time
            time.sleep(float(self.pause.partition(":")[2] or 1))
        if self.failpoint == name:
            raise InjectedFailure(f"failpoint after step {name!r}")

    def rollback(self) -> None:
        """Undo finished steps in reverse; an undo that fails is recorded, the rest still run."""
        while self.done:
            name, undo = self.done.pop()
            try:
                undo()
            except Exception as e:  # keep undoing: a partial rollback is worse than a noisy one
                self.undo_errors.append(f"undo {name}: {e}")
                print(f"moor: undo of step {name} failed: {e}", file=sys.stderr)

    def __enter__(self) -> "Steps":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self.rollback()
