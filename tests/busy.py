"""A busy node for diagnosis tests: a real node is never quiet. While the context is open, the
lab's background runs (lab.loss.Background): another namespace sends UDP to a closed port at
200 datagrams/s (NoPorts, the probe's NO_SOCKET) and namespaces and links come and go (their
ICMPv6 MLD reports and router solicitations are dropped). A doctor asked about the case under
test must still name the case's cause first."""
from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from dataplane.nslab import Lab
from lab.loss import Background


class Busy:
    def __init__(self, lab: Lab, rate: int = 200):
        self.tmp = Path(tempfile.mkdtemp(prefix="moor-busy-"))
        self.bg = Background(lab, self.tmp, rate)

    def __enter__(self) -> "Busy":
        try:
            self.bg.start()
        except BaseException:
            shutil.rmtree(self.tmp, ignore_errors=True)
            raise
        return self

    def __exit__(self, *exc) -> None:
        try:
            self.bg.stop()  # the lab's close() removes its namespaces and stops its sender too
        finally:
            shutil.rmtree(self.tmp, ignore_errors=True)
