"""The benchmark scripts run (at a toy size) against the package as it is: a renamed function or a
changed signature breaks this test, not a user's first GPU session."""
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
TOY = {
    "bench_train.py": ["--steps", "1", "--warmup", "0", "--repeat", "1", "--images", "16", "--batch", "8",
                       "--amp", "off"],
    "bench_store.py": ["--images", "6", "--side", "96", "--crop", "48", "--crops", "32", "--baseline-crops", "8",
                       "--rounds", "1"],
    "bench_cache.py": ["--n", "8", "--side", "96", "--crop", "48", "--epochs", "1", "--rounds", "1"],
}


def test_every_benchmark_is_covered():
    assert {p.name for p in (ROOT / "benchmarks").glob("bench_*.py")} == set(TOY)


@pytest.mark.slow
@pytest.mark.parametrize("script", sorted(TOY))
def test_benchmark_prints_its_table(script):
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), *TOY[script]], cwd=ROOT,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    table = [line for line in proc.stdout.splitlines() if line.startswith("|")]
    assert len(table) >= 3, proc.stdout[-2000:]
    assert "failed" not in proc.stdout, proc.stdout[-2000:]    # bench_train prints a failure as a row, goes on
