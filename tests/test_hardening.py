"""Regression tests for the defects of a hostile-input review (issue 7 §1): weight files changed
under a loaded model, thread settings across Python threads, odd paths (FIFOs, devices), huge or
float images, non-finite outputs and precise error messages. Each test failed before its fix.

Tests that crash or block by nature (SIGBUS, a FIFO that never gets a writer) or that measure the
process (threads, peak RSS) run a short script in a fresh interpreter.
"""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

import ovs
from ovs.weights import load_state_dict, save_safetensors

ROOT = Path(__file__).resolve().parent.parent


def run_script(code: str, timeout: float = 120, **env) -> subprocess.CompletedProcess:
    """Run `code` in a fresh interpreter that imports this checkout's ovs."""
    e = dict(os.environ)
    e["PYTHONPATH"] = str(ROOT) + os.pathsep + e.get("PYTHONPATH", "")
    e.pop("OMP_NUM_THREADS", None)
    e.update({k: str(v) for k, v in env.items()})
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                          text=True, timeout=timeout, cwd=str(ROOT), env=e)


def check(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 0, (f"exit code {proc.returncode}\nstdout:\n{proc.stdout}\n"
                                  f"stderr:\n{proc.stderr[-3000:]}")
    return proc.stdout


# ------------------------------------------------------------------------------ threads
def test_set_num_threads_is_process_wide():
    """ovs.set_num_threads(n) called on one Python thread sets the OpenMP team size of the
    parallel regions run by every other thread (omp_set_num_threads alone is per thread). The
    team size is observed as the OS threads that a worker's first parallel region creates."""
    code = """
        import os, sys, threading, numpy as np, ovs
        from ovs import _core

        n, where = int(sys.argv[1]), sys.argv[2]
        x = np.ones((4000, 1000), np.float32)
        res = {}

        def tasks():
            return len(os.listdir("/proc/self/task"))

        def work():
            if where == "worker":
                ovs.set_num_threads(n)
            before = tasks()
            for _ in range(3):
                _core.op_softmax(x)
            res["new"] = tasks() - before

        if where == "main":
            ovs.set_num_threads(n)
        t = threading.Thread(target=work)
        t.start()
        t.join()
        print(res["new"], ovs.get_num_threads())
    """
    got = {}
    for n, where in ((1, "main"), (3, "main"), (4, "worker")):
        proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code), str(n), where],
                              capture_output=True, text=True, timeout=120, cwd=str(ROOT),
                              env={**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "2"})
        got[n, where] = tuple(int(v) for v in check(proc).split())
    assert got == {(1, "main"): (0, 1), (3, "main"): (2, 3), (4, "worker"): (3, 4)}, (
        "(extra OS threads started by a worker thread's parallel region, get_num_threads()) "
        f"after set_num_threads(n) on the main thread or on the worker: {got}")
