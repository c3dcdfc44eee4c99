"""The workspace lock's record: emptied by a clean exit, found by the next holder after a kill."""

from __future__ import annotations

import json

from aider_edge import layout
from aider_edge.workspace_lock import workspace_lock


def test_a_clean_exit_leaves_no_record_and_a_killed_holder_is_reported(tmp_path):
    with workspace_lock(tmp_path, label="first", flow_run_id="run-1") as held:
        assert held.killed is None
        record = json.loads(held.path.read_text())
        assert record["flow_run_id"] == "run-1" and record["label"] == "first"
    assert (tmp_path / layout.FLOW_LOCK).read_text() == ""

    # What `kill -9` leaves: the kernel drops the lock, the record stays.
    (tmp_path / layout.FLOW_LOCK).write_text(json.dumps(record) + "\n")
    with workspace_lock(tmp_path, label="second") as held:
        assert held.killed == record
    with workspace_lock(tmp_path, label="third") as held:
        assert held.killed is None
