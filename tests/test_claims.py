"""Claims: one holder at a time, stale ones taken over (dead pid here, silent heartbeat elsewhere)."""
from __future__ import annotations

import errno
import json
import os
import threading
import time

import pytest

from iqa_utils import cli
from iqa_utils.runs import claims
from iqa_utils.system import KitError, read_jsonl

from helpers import dead_pid, plant_claim


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
    dead = dead_pid()
    plant_claim(path, pid=dead)
    mine = claims.claim_output(target, wait=False)
    assert mine is not None and json.loads(path.read_text())["pid"] == os.getpid()
    mine.log(log, target.stem)
    event = read_jsonl(log)[-1]
    assert event["event"] == "took over" and event["previous"]["pid"] == dead
    mine.release()
    # a live pid that is another process than the one that claimed (its start time differs): stale too
    if claims._started(os.getpid()) is not None:
        plant_claim(path, pid=os.getpid(), started="1")
        assert claims.try_claim(path) is not None


def test_another_machine_claim_goes_stale_without_heartbeat(tmp_path):
    path = tmp_path / "run.claim"
    plant_claim(path, pid=12345, host="elsewhere", boot="other")
    assert claims.try_claim(path) is None                      # fresh: its owner may be training
    old = time.time() - claims.STALE_AFTER_S - 5
    os.utime(path, (old, old))
    assert claims.try_claim(path) is not None                  # silent for too long: taken over


def test_heartbeat_and_loss(tmp_path, monkeypatch):
    """Waits on the heartbeat's own calls (events), not on wall time."""
    monkeypatch.setattr(claims, "HEARTBEAT_S", 0.05)
    path = tmp_path / "run.claim"
    touched, utime = threading.Event(), os.utime
    monkeypatch.setattr(claims.os, "utime", lambda p, *a, **kw: (utime(p, *a, **kw), touched.set()))
    mine = claims.try_claim(path)
    old = time.time() - 100
    utime(path, (old, old))
    touched.clear()
    assert touched.wait(30)
    assert path.stat().st_mtime > old + 50                      # touched by the heartbeat
    plant_claim(path, token="someone else")                        # taken over behind its back
    with pytest.warns(UserWarning, match="taken over"):
        mine._beat.join(30)                                   # the heartbeat sees it, warns and stops
    assert mine.lost and not mine._beat.is_alive()
    mine.release()
    assert path.exists()                                      # not this process's claim any more: kept


def test_claim_output_waits_for_the_other_process(tmp_path, monkeypatch):
    """The waiting process is refused while the other holds the claim; the other finishes only once it
    has been refused (an event, not a sleep); then the waiter sees the record and claims nothing."""
    target = tmp_path / "record.json"
    other = claims.try_claim(target.with_suffix(".claim"))
    assert claims.claim_output(target, wait=False) is None     # a pool worker moves on
    refused, events, real = threading.Event(), [], claims.try_claim

    def try_claim(path):
        claim = real(path)
        events.append("refused" if claim is None else "claimed")
        refused.set()
        return claim
    monkeypatch.setattr(claims, "try_claim", try_claim)

    def finish():
        refused.wait(30)
        target.write_text("{}")
        other.release()
        events.append("released")
    finisher = threading.Thread(target=finish)
    finisher.start()
    assert claims.claim_output(target, wait=True, poll=0.01) is None      # the record appeared
    finisher.join(30)
    assert events[0] == "refused" and "released" in events and not target.with_suffix(".claim").exists()


@pytest.mark.parametrize("content", ["", '{"pid": 4', "[]"])
def test_an_empty_or_cut_short_claim_is_stale_at_once(tmp_path, content):
    """A claim whose write failed (a full disk) is taken over once it is WRITE_GRACE_S old, not after
    STALE_AFTER_S (10 minutes)."""
    path = tmp_path / "run.claim"
    path.write_text(content)
    assert claims.try_claim(path) is None                      # just made: may be being written
    old = time.time() - claims.WRITE_GRACE_S - 1
    os.utime(path, (old, old))
    mine = claims.try_claim(path)
    assert mine is not None and json.loads(path.read_text())["pid"] == os.getpid()
    mine.release()


def test_a_full_disk_leaves_no_empty_claim(tmp_path, monkeypatch):
    def full(fd, data):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(claims.os, "write", full)
    with pytest.raises(KitError, match="run.claim: cannot write: no space left on the device"):
        claims.try_claim(tmp_path / "run.claim")
    assert not (tmp_path / "run.claim").exists()


def test_waiting_names_the_holder_and_ctrl_c_says_how_to_clear_it(tmp_path, monkeypatch, capsys):
    """A live holder (this process, as another command would be): the wait says who and since when;
    Ctrl-C says the same and how to clear a stale claim, and the CLI prints it as its one line."""
    target = tmp_path / "record.json"
    other = claims.try_claim(target.with_suffix(".claim"))

    def ctrl_c(seconds):
        raise KeyboardInterrupt
    monkeypatch.setattr(claims.time, "sleep", ctrl_c)
    with pytest.raises(claims.WaitInterrupted) as e:
        claims.claim_output(target, wait=True)
    waiting = capsys.readouterr().out
    for text in (f"pid {os.getpid()} on {claims.HOST}", "claimed 20", f"delete {target.with_suffix('.claim')}"):
        assert text in waiting and text in str(e.value)
    other.release()
    monkeypatch.setattr(cli, "decisions", lambda args: (_ for _ in ()).throw(e.value))
    assert cli.main(["decisions"]) == 130
    err = capsys.readouterr().err
    assert err.startswith("iqa-kit: interrupted while waiting for record, held by pid") and err.count("\n") == 1
