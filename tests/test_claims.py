"""Claims: one holder at a time, stale ones taken over (dead pid here, silent heartbeat elsewhere)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time

import pytest

from iqa_utils.runs import claims
from iqa_utils.system import read_jsonl


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def _plant(path, **info):
    """A claim file as another process would have left it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"pid": 1, "host": claims.HOST, "boot": claims.BOOT, "started": None,
                                "time": time.time(), "token": "theirs", **info}))


def test_one_holder_at_a_time(tmp_path):
    target, log = tmp_path / "run.json", tmp_path / "claims.jsonl"
    path = target.with_suffix(".claim")
    mine = claims.claim_output(target)
    assert mine is not None and path.is_file()
    mine.log(log, target.stem)                                  # what runs.run_or_load does once trained
    assert claims.try_claim(path) is None                       # held by a live process (this one)
    mine.release()
    assert not path.exists()
    again = claims.claim_output(target)
    assert again is not None
    again.log(log, target.stem)
    target.write_text("{}")
    again.release()
    assert claims.claim_output(target) is None                   # done: nothing to claim, nothing logged
    assert [e["event"] for e in read_jsonl(log)] == ["claimed", "claimed"]


def test_a_dead_process_claim_is_taken_over(tmp_path):
    target, log = tmp_path / "run.json", tmp_path / "claims.jsonl"
    path = target.with_suffix(".claim")
    dead = _dead_pid()
    _plant(path, pid=dead)
    mine = claims.claim_output(target, wait=False)
    assert mine is not None and json.loads(path.read_text())["pid"] == os.getpid()
    mine.log(log, target.stem)
    event = read_jsonl(log)[-1]
    assert event["event"] == "took over" and event["previous"]["pid"] == dead
    mine.release()
    # a live pid that is another process than the one that claimed (its start time differs): stale too
    if claims._started(os.getpid()) is not None:
        _plant(path, pid=os.getpid(), started="1")
        assert claims.try_claim(path) is not None


def test_another_machine_claim_goes_stale_without_heartbeat(tmp_path):
    path = tmp_path / "run.claim"
    _plant(path, pid=12345, host="elsewhere", boot="other")
    assert claims.try_claim(path) is None                      # fresh: its owner may be training
    old = time.time() - claims.STALE_AFTER_S - 5
    os.utime(path, (old, old))
    assert claims.try_claim(path) is not None                  # silent for too long: taken over


def test_heartbeat_and_loss(tmp_path, monkeypatch):
    monkeypatch.setattr(claims, "HEARTBEAT_S", 0.05)
    path = tmp_path / "run.claim"
    mine = claims.try_claim(path)
    old = time.time() - 100
    os.utime(path, (old, old))
    time.sleep(0.3)
    assert path.stat().st_mtime > old + 50                      # touched by the heartbeat
    _plant(path, token="someone else")                        # taken over behind its back
    with pytest.warns(UserWarning, match="taken over"):
        deadline = time.time() + 5
        while not mine.lost and time.time() < deadline:
            time.sleep(0.05)
    assert mine.lost
    mine.release()
    assert path.exists()                                      # not this process's claim any more: kept


def test_claim_output_waits_for_the_other_process(tmp_path):
    target = tmp_path / "record.json"
    other = claims.try_claim(target.with_suffix(".claim"))
    assert claims.claim_output(target, wait=False) is None     # a pool worker moves on

    def finish():
        time.sleep(0.3)
        target.write_text("{}")
        other.release()
    threading.Thread(target=finish).start()
    t0 = time.time()
    assert claims.claim_output(target, wait=True, poll=0.05) is None      # the record appeared
    assert 0.2 < time.time() - t0 < 5 and not target.with_suffix(".claim").exists()
