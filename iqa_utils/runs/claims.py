"""Claims: one process trains a run at a time, and a run left behind by a dead process is taken over.

    results/runs/<model>/<dataset>/<key>-s<seed>.claim     beside the record: pid, host, boot id, token
    results/claims.jsonl                                   who claimed (or took over) which run, and when

A process claims a run by creating its claim file with O_CREAT|O_EXCL, which exactly one process can
do; it trains, writes the record, then deletes the claim. While it holds the claim a thread touches the
file every HEARTBEAT_S seconds. Another process that finds the claim judges it stale:
- on the same machine (same host name and boot id): when its process is gone (pid, and its start time
  where /proc has it, so a reused pid is not mistaken for the owner);
- from another machine: when the file has not been touched for STALE_AFTER_S seconds;
- empty or not JSON for longer than WRITE_GRACE_S (its owner writes it in one call right after creating
  it, so such a file was cut short, e.g. by a full disk): at once, wherever it came from.
A process waiting on a live claim says which process holds it (pid, host, since when) and how to clear
it if that process is not training the run; Ctrl-C while waiting says the same (`WaitInterrupted`).
A stale claim is taken over under a takeover lock (a second O_EXCL file held for milliseconds): the
claim is read again under the lock and replaced only if it is still the stale one, and the new claim is
again created with O_EXCL, so two processes never both take one over. Works on local disks and NFS;
a takeover lock left by a process killed inside those milliseconds is cleared after LOCK_STALE_S.
"""
from __future__ import annotations

import json
import os
import socket
import threading
import time
import uuid
import warnings
from pathlib import Path

from ..system import append_jsonl, os_error

HEARTBEAT_S = 30.0
STALE_AFTER_S = 600.0
LOCK_STALE_S = 60.0
POLL_S = 10.0
WRITE_GRACE_S = 2.0


class WaitInterrupted(KeyboardInterrupt):
    """Ctrl-C while waiting for another process's run; the message names that process and the claim."""


def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def _started(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (Linux), to tell a reused pid apart."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


HOST, BOOT = socket.gethostname(), _boot_id()


def _alive(pid: int, started: str | None) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:                 # another user's process: alive
        return True
    now = _started(pid)
    return started is None or now is None or now == started


def owner(path: Path) -> tuple[dict | None, float | None]:
    """(the claim's content, its mtime); content None while it is being written; (None, None) if gone."""
    try:
        mtime = path.stat().st_mtime
        text = path.read_text()
    except FileNotFoundError:
        return None, None
    except OSError as e:
        raise os_error(path, e, "read") from e
    try:
        return json.loads(text or "null"), mtime
    except ValueError:
        return None, mtime


def is_stale(info: dict | None, mtime: float, now: float | None = None) -> bool:
    """A claim whose process is gone (same machine), whose heartbeat stopped (another machine), or that
    is still empty or unreadable WRITE_GRACE_S after it was made (its write failed)."""
    age = (now or time.time()) - mtime
    if not isinstance(info, dict) or "pid" not in info:
        return age > WRITE_GRACE_S
    if info.get("host") == HOST and info.get("boot") == BOOT:
        return not _alive(int(info["pid"]), info.get("started"))
    return age > STALE_AFTER_S


class Claim:
    """A held claim: a heartbeat thread touches the file until `release`. previous: the stale claim it
    replaced, if any."""

    def __init__(self, path: Path, info: dict, previous: dict | None = None):
        self.path, self.info, self.previous, self.lost = path, info, previous, False
        self._stop = threading.Event()
        self._beat = threading.Thread(target=self._heartbeat, name=f"claim {path.name}", daemon=True)
        self._beat.start()

    def _heartbeat(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            info, _ = owner(self.path)
            if not info or info.get("token") != self.info["token"]:
                self.lost = True
                warnings.warn(f"{self.path}: this process's claim was taken over (it stalled for longer than "
                              f"{STALE_AFTER_S:.0f} s?); another process may train the same run")
                return
            try:
                os.utime(self.path)
            except OSError:
                pass

    def log(self, log: Path, run: str) -> None:
        """Append who claimed (or took over) the run to the claims log."""
        event = {"event": "took over" if self.previous is not None else "claimed", "run": run,
                 **{k: self.info[k] for k in ("pid", "host", "time")}}
        if self.previous is not None:
            event["previous"] = {k: self.previous.get(k) for k in ("pid", "host")}
        append_jsonl(event, log)

    def release(self) -> None:
        """Stop the heartbeat and delete the claim, if it is still this process's."""
        self._stop.set()
        info, _ = owner(self.path)
        if info and info.get("token") == self.info["token"]:
            self.path.unlink(missing_ok=True)


def _create(path: Path, previous: dict | None = None) -> Claim | None:
    """The claim, created with O_EXCL; None when the file exists."""
    info = {"pid": os.getpid(), "host": HOST, "boot": BOOT, "started": _started(os.getpid()),
            "time": time.time(), "token": uuid.uuid4().hex}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    except FileExistsError:
        return None
    except OSError as e:
        raise os_error(path, e) from e
    try:
        os.write(fd, json.dumps(info).encode())
    except OSError as e:                      # a full disk: leave no empty claim behind
        path.unlink(missing_ok=True)
        raise os_error(path, e) from e
    finally:
        os.close(fd)
    return Claim(path, info, previous)


def _take_over(path: Path, seen: dict | None) -> Claim | None:
    """Replace the stale claim `seen` by this process's, under the takeover lock; None if another won."""
    lock = path.with_name(path.name + ".takeover")
    try:
        fd = os.open(lock, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    except FileExistsError:
        _, mtime = owner(lock)
        if mtime is not None and time.time() - mtime > LOCK_STALE_S:
            lock.unlink(missing_ok=True)      # left by a process killed while taking over
        return None
    try:
        info, mtime = owner(path)
        if mtime is not None and (info != seen or not is_stale(info, mtime)):
            return None                       # claimed again meanwhile
        path.unlink(missing_ok=True)
        return _create(path, previous=seen or {})
    finally:
        os.close(fd)
        lock.unlink(missing_ok=True)


def try_claim(path: Path) -> Claim | None:
    """This process's claim at `path` (new, or taken over from a stale one), or None if a live process
    holds it."""
    claim = _create(path)
    if claim is not None:
        return claim
    info, mtime = owner(path)
    if mtime is None:                         # released just now: try once more
        return _create(path)
    return _take_over(path, info) if is_stale(info, mtime) else None


def holder(path: Path) -> str:
    """Who holds the claim at path, and how to clear it: one line for a waiting user."""
    info, mtime = owner(path)
    if not isinstance(info, dict) or "pid" not in info:
        return f"a process whose claim {path} is still being written"
    since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(info.get("time") or mtime))
    return (f"pid {info['pid']} on {info.get('host', '?')} (claimed {since}); if that process is not "
            f"training this run any more, delete {path}")


def claim_output(target: Path, wait: bool = True, poll: float | None = None):
    """A held claim for producing `target` (its claim file is target.claim), or None when `target`
    exists (another process wrote it meanwhile) or, with wait=False, when a live process holds it.
    wait=True polls until the claim is free (or stale) or `target` appears. Whoever produced `target`
    then logs it (`Claim.log`)."""
    path, told = target.with_suffix(".claim"), False
    while True:
        claim = try_claim(path)
        if claim is not None and target.exists():     # finished by its previous owner
            claim.release()
            return None
        if claim is not None:
            return claim
        if not wait or target.exists():
            return None
        if not told:
            print(f"[iqa-kit] {target.stem}: trained by {holder(path)}; waiting for its record", flush=True)
            told = True
        pause = POLL_S if poll is None else poll
        if owner(path)[0] is None:                     # empty or cut short: stale after WRITE_GRACE_S
            pause = min(pause, WRITE_GRACE_S)
        try:
            time.sleep(pause)
        except KeyboardInterrupt:
            raise WaitInterrupted(f"interrupted while waiting for {target.stem}, held by {holder(path)}; "
                                  f"a rerun waits again while that process lives") from None
