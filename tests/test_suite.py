"""The suite's own machinery (tests/conftest.py): the session's kit cache, the time limits, and the order
that starts the longest tests side by side under `-n 2 --dist worksteal`."""
import os
from pathlib import Path
from types import SimpleNamespace

import conftest
import pytest

from iqa_utils.system import cache_dir


def test_the_kit_cache_is_the_sessions_own(kit_cache):
    assert cache_dir("stores").parent == kit_cache and kit_cache.name.startswith("iqa-kit-test-cache-")
    assert Path.home() / ".cache" not in kit_cache.parents and "IQA_KIT_DATA" not in os.environ


def test_chunk_heads_follow_worksteal_shares():
    """xdist's worksteal gives worker k len(pending) // (workers - k) of what is left, in order."""
    assert conftest._chunk_heads(10, 2) == [0, 5]
    assert conftest._chunk_heads(11, 2) == [0, 5]
    assert conftest._chunk_heads(11, 3) == [0, 3, 7]


def _items(names):
    return [SimpleNamespace(nodeid=f"tests/{n}") for n in names]


def _config(dist, workers):
    return SimpleNamespace(getoption=lambda name, default=None: {"dist": dist, "numprocesses": workers}[name])


def test_the_longest_tests_head_the_workers_queues():
    longest, second = conftest.LONGEST
    items = _items(["test_a.py::t1", second, "test_b.py::t2", longest, "test_c.py::t3", "test_d.py::t4"])
    conftest._spread_longest(_config("worksteal", 2), items)
    ids = [i.nodeid.split("/", 1)[1] for i in items]
    assert ids[0] == longest and ids[3] == second                 # heads of the two shares (6 items: 0, 3)
    assert [i for i in ids if i not in (longest, second)] == ["test_a.py::t1", "test_b.py::t2",
                                                              "test_c.py::t3", "test_d.py::t4"]


@pytest.mark.parametrize("dist, workers", [("load", 2), ("worksteal", None), ("no", None)])
def test_other_runs_keep_the_collection_order(dist, workers):
    names = ["test_a.py::t1", conftest.LONGEST[1], conftest.LONGEST[0]]
    items = _items(names)
    conftest._spread_longest(_config(dist, workers), items)
    assert [i.nodeid.split("/", 1)[1] for i in items] == names


def test_slow_tests_get_the_longer_limit(request):
    item = SimpleNamespace(get_closest_marker=lambda name: name == "slow" or None, markers=[])
    item.add_marker = item.markers.append
    conftest.pytest_collection_modifyitems(_config("no", None), [item])
    assert item.markers[0].args == (conftest.SLOW_TIMEOUT_S,)
