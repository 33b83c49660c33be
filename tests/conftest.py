"""What every test shares: one thread per xdist worker, a kit cache of the session's own, time limits.

- Under pytest-xdist every worker, and every notebook kernel or CLI process a test starts, uses one
  thread: two workers with torch's default (one thread per core) on a 2-core machine ran the smoke
  reproduction and the paper rehearsal side by side about 20 times slower than either alone.
- Tests never read or write the user's cache (~/.cache/iqa-kit): `kit_cache` points IQA_KIT_CACHE at a
  folder of this session, shared by its xdist workers (and the processes tests start, which inherit the
  variable). Under xdist the synthetic set and the smoke profile's proxy-pretrained encoders are built
  there once, by the first worker, while the others wait, instead of by whichever tests get there first.
- The full run (`-n 2 --dist worksteal`) starts the LONGEST tests side by side, one per worker, instead of
  leaving one of them queued behind the other while the other worker runs out of work.
- pytest-timeout: every test has a limit (pyproject.toml's `timeout`, for fast tests); tests marked
  `slow` get SLOW_TIMEOUT_S unless they set their own with `@pytest.mark.timeout(seconds)`. A hung test
  then fails with its name and stack instead of stalling the run.
"""
import os

import pytest
import torch
from filelock import FileLock

from iqa_utils.system import CACHE_ENV

SLOW_TIMEOUT_S = 900
LONGEST = ["test_rehearsal.py::test_paper_and_quick_rehearsals",            # longest first
           "test_notebooks.py::test_smoke_reproduction_runs_every_notebook"]

if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(1)
    os.environ.setdefault("IQA_KIT_THREADS", "1")      # read by notebook kernels (notebook.setup)
    os.environ.setdefault("OMP_NUM_THREADS", "1")      # and by any other process a test starts


def _chunk_heads(n_items: int, n_workers: int) -> list[int]:
    """Where each worker's first test sits: xdist's worksteal hands worker k the k-th of n even shares of
    the collection (len(pending) // workers left) and later steals only from the ends of the queues."""
    heads, pos, left = [], 0, n_items
    for k in range(n_workers):
        heads.append(pos)
        size = left // (n_workers - k)
        pos, left = pos + size, left - size
    return heads


def _spread_longest(config, items: list) -> None:
    workers = config.getoption("numprocesses", None)
    if config.getoption("dist", "no") != "worksteal" or not isinstance(workers, int) or workers < 2:
        return
    longest = [i for name in LONGEST for i in items if i.nodeid.endswith(name)][:workers]
    if not longest:
        return
    heads = dict(zip(_chunk_heads(len(items), workers), longest))
    others = iter([i for i in items if i not in longest])
    items[:] = [heads[pos] if pos in heads else next(others) for pos in range(len(items))]


@pytest.hookimpl(trylast=True)                          # after -m and -k have deselected
def pytest_collection_modifyitems(config, items):
    for item in items:
        if item.get_closest_marker("slow") and not item.get_closest_marker("timeout"):
            item.add_marker(pytest.mark.timeout(SLOW_TIMEOUT_S))
    _spread_longest(config, items)


def _build_smoke_cache() -> None:
    """What the smoke profile reads from the cache: the synthetic set and the proxy-pretrained encoders."""
    from iqa_utils.config.check import make_config
    from iqa_utils.data.registry import load_manifest
    from iqa_utils.models import create_model
    load_manifest("synthetic")
    for model in ("deiqt", "csfiqa"):                   # LML-IQA's encoder is DEIQT's
        create_model(make_config("smoke", model))


@pytest.fixture(scope="session", autouse=True)
def kit_cache(tmp_path_factory):
    """IQA_KIT_CACHE -> <the session's temporary root>/iqa-kit-cache, for this session only."""
    worker = os.environ.get("PYTEST_XDIST_WORKER")
    root = tmp_path_factory.getbasetemp()
    root = root.parent if worker else root              # xdist: <session>/popen-gw0 -> <session>
    folder = root / "iqa-kit-cache"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(CACHE_ENV, str(folder))
        mp.delenv("IQA_KIT_DATA", raising=False)        # the synthetic set in that cache, not the user's
        if worker:
            with FileLock(str(root / "iqa-kit-cache.lock")):
                if not (folder / ".built").exists():
                    _build_smoke_cache()
                    (folder / ".built").write_text("")
        yield folder
