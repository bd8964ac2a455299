"""The run store on real SQLite files: rows land, commits survive kill -9, report reads them."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from ctc_live.cli import main
from ctc_live.errors import CtcLiveError
from ctc_live.storage import RunStore, read_run


def test_rows_written_and_replaced(tmp_path):
    store = RunStore(tmp_path / "run.sqlite", commit_interval_s=0.1).start()
    store.set("status", "running")
    store.put("pulses", {"pulse_id": 1, "track_id": 7, "target_ns": 5, "outcome": "pending"})
    store.put("pulses", {"pulse_id": 1, "track_id": 7, "target_ns": 5, "outcome": "done",
                         "error_us": 12.5})
    store.put("cells", {"track_id": 7, "decision": "ctc", "p_ctc": 0.97})
    store.event("warning", "late", "track 9: late")
    store.close()
    data = read_run(tmp_path)
    assert data["run"]["status"] == "running"
    assert [p["outcome"] for p in data["pulses"]] == ["done"]
    assert data["cells"][0]["decision"] == "ctc"
    assert data["events"][0]["kind"] == "late"
    assert store.dropped == 0 and store.written == 5


WRITER = """
import sys, time
from ctc_live.storage import RunStore
store = RunStore(sys.argv[1], commit_interval_s=0.2).start()
store.set("status", "running")
store.set("config_name", "sim")
i = 0
while True:
    i += 1
    store.put("cells", {"track_id": i, "decision": "wbc", "latency_ms": 3.0})
    if i == 50:
        print("ready", flush=True)
    time.sleep(0.002)
"""


def test_committed_rows_survive_kill_9(tmp_path, capsys):
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(tmp_path / "run.sqlite")],
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "ready"
    time.sleep(1.0)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    data = read_run(tmp_path)
    assert len(data["cells"]) >= 100  # ~1 s of rows, committed every 0.2 s
    assert main(["report", str(tmp_path), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["status"].startswith("running or crashed")
    assert report["cells"]["total"] == len(data["cells"])


def test_report_on_a_directory_without_a_store(tmp_path):
    with pytest.raises(CtcLiveError, match="no run store"):
        read_run(tmp_path)


def test_a_second_run_in_the_same_directory_is_refused_and_the_first_kept(tmp_path, capsys):
    store = RunStore(tmp_path / "run.sqlite", commit_interval_s=0.1).start()
    store.set("status", "finished")
    store.close()
    (tmp_path / "summary.json").write_text('{"first": true}\n')
    with pytest.raises(CtcLiveError, match="already stored there"):
        RunStore(tmp_path / "run.sqlite")
    assert main(["run", "--headless", "--duration", "1", "--out", str(tmp_path)]) == 2
    assert "already holds a run" in capsys.readouterr().err
    assert read_run(tmp_path)["run"] == {"status": "finished"}
    assert json.loads((tmp_path / "summary.json").read_text()) == {"first": True}
    assert not (tmp_path / "run.log").exists()


def test_default_run_directories_of_the_same_second_differ(tmp_path):
    from ctc_live.cli.run import _new_run_dir

    first = _new_run_dir(tmp_path)
    first.mkdir()
    second = _new_run_dir(tmp_path)
    assert second != first and not second.exists()
    assert second.parent == tmp_path
