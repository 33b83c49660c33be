"""What every test shares: one thread per xdist worker, a kit cache of the session's own, time limits.

- Under pytest-xdist every worker, and every notebook kernel or CLI process a test starts, uses one
  thread: two workers with torch's default (one thread per core) on a 2-core machine ran the smoke
  reproduction and the paper rehearsal side by side about 20 times slower than either alone.
- Tests never read or write the user's cache (~/.cache/iqa-kit): IQA_KIT_CACHE points at a temporary
  folder of this session (the `kit_cache` fixture), made before xdist starts its workers so that they,
  and the processes tests start, inherit it; it is deleted at the end. Under xdist the synthetic set and
  the smoke profile's proxy-pretrained encoders are built there once, before the workers start, instead
  of by whichever tests of both workers get there first (a test's time limit does not count it).
- The full run (`-n 2 --dist worksteal`) starts the LONGEST tests side by side, one per worker, instead of
  leaving one of them queued behind the other while the other worker runs out of work.
- pytest-timeout: every test has a limit (pyproject.toml's `timeout`, for fast tests); tests marked
  `slow` get SLOW_TIMEOUT_S unless they set their own with `@pytest.mark.timeout(seconds)`. A hung test
  then fails with its name and stack instead of stalling the run.
"""
import os
import shutil
import tempfile
from pathlib import Path

import pytest
import torch

from iqa_utils.system import CACHE_ENV, DATA_ROOT_ENV

SLOW_TIMEOUT_S = 1800                  # the rehearsals' own subprocess limit
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


def pytest_configure(config):
    """The session's kit cache, made by the main process (xdist's controller) before the workers start,
    so they inherit the variable; the data, figures and notebooks of the session's tests see only it."""
    if os.environ.get("PYTEST_XDIST_WORKER"):
        return
    folder = Path(tempfile.mkdtemp(prefix="iqa-kit-test-cache-"))
    config._kit_cache = (folder, os.environ.get(CACHE_ENV), os.environ.get(DATA_ROOT_ENV))
    os.environ[CACHE_ENV] = str(folder)
    os.environ.pop(DATA_ROOT_ENV, None)                  # the synthetic set in that cache, not the user's


def pytest_sessionstart(session):
    """Under xdist, build what the smoke tests read once, here, before the workers start (outside any
    test's time limit), instead of by whichever tests of both workers get there first."""
    if not os.environ.get("PYTEST_XDIST_WORKER") and session.config.getoption("numprocesses", None):
        _build_smoke_cache()


def pytest_unconfigure(config):
    if hasattr(config, "_kit_cache"):
        folder, cache, data = config._kit_cache
        shutil.rmtree(folder, ignore_errors=True)
        for var, value in ((CACHE_ENV, cache), (DATA_ROOT_ENV, data)):
            if value is None:
                os.environ.pop(var, None)
            else:
                os.environ[var] = value


@pytest.fixture(scope="session")
def kit_cache() -> Path:
    """The session's kit cache folder (IQA_KIT_CACHE), shared by its xdist workers."""
    return Path(os.environ[CACHE_ENV])
