"""The fuzz harness itself (fuzz/run.py, fuzz/targets.py) must not grow the fuzzing process: a
long run treats memory beyond -rss_limit_mb as a finding. atheris hooks the comparison
operators of the modules it instruments (ovs and the harness); comparing NumPy arrays with them
in the tokenizer target grew the process by ~1 KB per execution, an out-of-memory "finding"
after ~6 million executions of a 20-minute campaign that no single input reproduced."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("atheris")
ROOT = Path(__file__).resolve().parent.parent


def test_tokenizer_target_memory_is_flat(tmp_path):
    corpus = tmp_path / "corpus"
    corpus.mkdir()   # libFuzzer starts from an empty input
    # libFuzzer reads its RSS as getrusage's ru_maxrss, which a process inherits from the one
    # that forked it (Linux keeps the old memory's high-water mark across exec): started from a
    # pytest process of several GB, the fuzzer saw that as its own RSS and stopped at once. So
    # it runs as the child of a small intermediate interpreter.
    spawn = "import subprocess, sys; sys.exit(subprocess.call(sys.argv[1:]))"
    p = subprocess.run([sys.executable, "-c", spawn, sys.executable, str(ROOT / "fuzz" / "run.py"),
                        "tokenizer", "-runs=150000", "-print_final_stats=1", "-seed=1", str(corpus)],
                       cwd=tmp_path, capture_output=True, text=True, timeout=300,
                       env={**os.environ, "OMP_NUM_THREADS": "1"})
    log = p.stdout + p.stderr
    assert p.returncode == 0, log[-2000:]
    start = int(re.search(r"INITED.*?rss: (\d+)Mb", log).group(1))
    peak = int(re.search(r"peak_rss_mb:\s+(\d+)", log).group(1))
    # the leak grew it by ~120 MB over these executions; a flat process stays within a few MB
    assert peak - start <= 30, f"RSS grew from {start} to {peak} MB over 150,000 executions"
