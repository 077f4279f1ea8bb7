"""bench/topup.py runs and prints its figures: planning time and a query count that does not grow with the fleet."""
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_the_top_up_benchmark_prints_time_and_a_constant_query_count():
    result = subprocess.run(
        [sys.executable, "bench/topup.py", "--reefs", "60"], cwd=ROOT, capture_output=True, text=True, timeout=240
    )
    assert result.returncode == 0, result.stderr[-3000:]
    output = result.stdout
    small = re.search(r"plan 6 reefs × 3 kinds: (\d+) ms, (\d+) queries", output)
    large = re.search(r"plan 60 reefs × 3 kinds: (\d+) ms, (\d+) queries", output)
    assert small and large, output
    assert small.group(2) == large.group(2)
    assert re.search(r"planning 60 reefs: [\d.]+ s, \d+ queries \(aim: under 1 s and constant: yes\)", output), output
    assert "the second 0" in output  # a second pass orders nothing
