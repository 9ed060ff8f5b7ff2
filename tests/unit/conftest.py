"""Fixtures shared by the unit tests that talk to a real (private) etcd on loopback."""
from __future__ import annotations

import pytest

from tests import etcd_server


@pytest.fixture(scope="module")
def etcd(tmp_path_factory):
    """A private etcd for the module; skips, naming why, where etcd-server is not installed."""
    try:
        e = etcd_server.start(tmp_path_factory.mktemp("etcd") / "data")
    except FileNotFoundError as err:
        pytest.skip(str(err))
    yield e
    e.stop()
