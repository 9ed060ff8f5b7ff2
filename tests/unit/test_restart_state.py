"""The agent's restart state: R only after a real restart, F only on the same boot."""
from __future__ import annotations

import json

from dataplane import restart


def test_first_start_clean_restart_and_crash(tmp_path):
    f = str(tmp_path / "gr.json")
    assert restart.begin(f) == restart.RestartState(False, False)
    restart.end(f)  # a clean shutdown
    assert restart.begin(f) == restart.RestartState(False, False)
    st = restart.begin(f)  # the previous start left its file: killed or a restart stop
    assert st.restarted and st.forwarding and st.previous_pid > 0


def test_another_boot_means_forwarding_was_lost(tmp_path):
    f = tmp_path / "gr.json"
    f.write_text(json.dumps({"bootId": "not-this-boot", "pid": 1}))
    st = restart.begin(str(f))
    assert st.restarted and not st.forwarding
    f.write_text("{garbage")
    st = restart.begin(str(f))
    assert st.restarted and not st.forwarding
