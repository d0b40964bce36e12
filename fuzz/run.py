"""Run one fuzz target under atheris (libFuzzer), or all of them for a bounded time.

    python fuzz/make_seeds.py                          # seed corpora + tiny model -> fuzz/_corpus/
    python fuzz/run.py safetensors -runs=1000000       # one target; extra args go to libFuzzer
    python fuzz/run.py --all 60                        # every target, 60 s in total (CI)
    python fuzz/run.py tokenizer crash-1234abcd        # replay a reproducer
    python fuzz/run.py --long torch 1000000 OUT_DIR    # a long run that counts findings
    python fuzz/run.py --table OUT_DIR...              # its results as a Markdown table

With one target, the corpus directory fuzz/_corpus/<target> is used (and grown) unless a path is
given; findings are written as crash-*/timeout-*/oom-* files in the current directory, and the
exit status is non-zero. Defaults: -timeout=20 (seconds per input: a hang is a finding),
-rss_limit_mb=3072 (a memory bomb is a finding), -max_len=65536.

--long TARGET RUNS OUT_DIR runs TARGET for RUNS executions in total and does not stop at the first
finding: an unexpected Python exception is recorded (one reproducer and traceback per distinct
exception type and raising line, in OUT_DIR) and fuzzing continues in the same process; a hard
finding (crash, sanitizer report, timeout, out-of-memory) ends the process, its reproducer is kept
and the run resumes from the grown corpus. SIGTERM stops it early, keeping the count.
OUT_DIR/summary.json holds the executions, time and
findings (the README's table comes from these files).

--all SECONDS runs the targets one after another in child processes, each for its share of the
time, on a copy of the seeds (the committed tree and fuzz/_corpus are not modified), and fails if
any target reports a finding.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
import time
import traceback
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
CORPUS = os.path.join(HERE, "_corpus")
DEFAULTS = ["-timeout=20", "-rss_limit_mb=3072", "-max_len=65536"]
ORDER = ["safetensors", "torch", "torchscript", "tokenizer", "image"]


class _Recorder:
    """Keep-going mode: unexpected Python exceptions are findings to record, not to stop at."""

    def __init__(self, target, out_dir: str):
        self.target = target
        self.out_dir = out_dir
        self.path = os.path.join(out_dir, "python-findings.json")
        self.findings = {}
        if os.path.exists(self.path):
            with open(self.path) as f:
                self.findings = json.load(f)

    def __call__(self, data: bytes) -> None:
        try:
            self.target(data)
        except Exception as exc:  # noqa: BLE001 -- every unexpected exception is a finding
            frame = traceback.extract_tb(exc.__traceback__)[-1]
            sig = f"{type(exc).__name__} at {os.path.basename(frame.filename)}:{frame.lineno}"
            entry = self.findings.get(sig)
            if entry is None:
                name = "finding-" + hashlib.sha1(data).hexdigest()[:16]
                with open(os.path.join(self.out_dir, name), "wb") as f:
                    f.write(data)
                with open(os.path.join(self.out_dir, name + ".txt"), "w") as f:
                    f.write("".join(traceback.format_exception(exc)))
                entry = self.findings[sig] = {"count": 0, "reproducer": name,
                                              "message": str(exc)[:300]}
                print(f"\nfuzz: new finding {sig}: {str(exc)[:200]} -> {name}", flush=True)
            entry["count"] += 1
            if entry["count"] in (1, 10, 100, 1000, 10000) or entry["count"] % 100000 == 0:
                with open(self.path, "w") as f:
                    json.dump(self.findings, f, indent=1)


def _fuzz_one(name: str, args: list[str]) -> None:
    import atheris

    sys.path.insert(0, ROOT)
    with atheris.instrument_imports(include=["ovs", "fuzz"]):
        import ovs  # noqa: F401
        import ovs.weights  # noqa: F401
        import ovs.tokenizer  # noqa: F401
        import ovs.segment  # noqa: F401
        import ovs.model  # noqa: F401
        import ovs.image  # noqa: F401
        from fuzz import targets
    target = targets.TARGETS[name]
    keep = os.environ.get("OVS_FUZZ_KEEP_GOING")
    if keep:
        target = _Recorder(target, keep)
    flags = [a for a in args if a.startswith("-")]
    paths = [a for a in args if not a.startswith("-")]
    if not paths:
        paths = [os.path.join(CORPUS, name)]
        if not os.path.isdir(paths[0]):
            sys.exit(f"no seed corpus at {paths[0]}: run fuzz/make_seeds.py first")
    given = {f.split("=")[0] for f in flags}
    flags = [d for d in DEFAULTS if d.split("=")[0] not in given] + flags
    atheris.Setup([sys.argv[0]] + flags + paths, target)
    atheris.Fuzz()


def _run_all(seconds: float) -> int:
    per = max(5, int(seconds / len(ORDER)))
    failed = []
    with tempfile.TemporaryDirectory(prefix="ovs-fuzz-") as tmp:
        for name in ORDER:
            seeds = os.path.join(CORPUS, name)
            if not os.path.isdir(seeds):
                print(f"fuzz: no seed corpus for {name}: run fuzz/make_seeds.py first")
                return 2
            work = os.path.join(tmp, name)
            shutil.copytree(seeds, work)
            cmd = [sys.executable, os.path.abspath(__file__), name, work,
                   f"-max_total_time={per}", "-print_final_stats=1",
                   f"-artifact_prefix={os.path.join(os.getcwd(), 'fuzz-' + name + '-')}"]
            print(f"fuzz: {name} for {per} s", flush=True)
            proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                  preexec_fn=_limit_address_space)
            lines = proc.stdout.splitlines()
            stats = [ln for ln in lines if ln.startswith(("stat::number_of_executed_units",
                                                          "Done "))]
            print("\n".join(stats), flush=True)
            if proc.returncode != 0:
                print("\n".join(lines[-60:]))
                failed.append(name)
    if failed:
        print(f"fuzz: FINDINGS in {', '.join(failed)} (reproducers: fuzz-<target>-crash-*, "
              "-timeout-*, -oom-*; replay with: python fuzz/run.py <target> <file>)")
        return 1
    print("fuzz: no findings")
    return 0


def _limit_address_space() -> None:
    """8 GiB of address space for a long-run child: a request for more (e.g. a pickle memo
    index of 10^9) fails at once with MemoryError, recorded as a finding, instead of zeroing
    gigabytes of a machine shared with other work."""
    import resource

    limit = int(os.environ.get("OVS_FUZZ_AS_LIMIT_MB", "8192")) << 20
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


def _long(name: str, runs: int, out_dir: str) -> int:
    out_dir = os.path.abspath(out_dir)
    corpus = os.path.join(out_dir, "corpus")
    if not os.path.isdir(corpus):
        shutil.copytree(os.path.join(CORPUS, name), corpus)
    summary_path = os.path.join(out_dir, "summary.json")
    summary = {"target": name, "executions": 0, "seconds": 0.0, "restarts": 0, "hard": []}
    if os.path.exists(summary_path):
        with open(summary_path) as f:
            summary = json.load(f)
    env = dict(os.environ, OVS_FUZZ_KEEP_GOING=out_dir)
    stop = []

    def on_term(signum, frame):  # stop early: let the child print its final stats first
        stop.append(signum)
        if child:
            child[0].send_signal(signal.SIGINT)

    child: list = []
    signal.signal(signal.SIGTERM, on_term)
    while summary["executions"] < runs and not stop:
        t0 = time.time()
        cmd = [sys.executable, os.path.abspath(__file__), name, corpus,
               f"-runs={runs - summary['executions']}", "-print_final_stats=1",
               f"-artifact_prefix={out_dir}/"]
        log = os.path.join(out_dir, f"run-{summary['restarts']:03d}.log")
        with open(log, "w") as f:
            child[:] = [subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=env,
                                         preexec_fn=_limit_address_space)]
            rc = child[0].wait()
            child.clear()
        with open(log, errors="replace") as f:
            out = f.read()
        m = re.findall(r"stat::number_of_executed_units:\s*(\d+)", out)
        summary["executions"] += int(m[-1]) if m else 0
        summary["seconds"] += time.time() - t0
        if rc != 0 and not stop:
            art = re.findall(r"Test unit written to (\S+)", out)
            kind = re.findall(r"ERROR: libFuzzer: ([\w -]+)|ERROR: AddressSanitizer: ([\w-]+)", out)
            summary["hard"].append({"reproducer": art[-1] if art else None,
                                    "kind": " ".join(k for k in (kind[0] if kind else ()) if k),
                                    "exit": rc, "after": summary["executions"]})
            summary["restarts"] += 1
            if summary["restarts"] > 50 or not m:
                print(out[-5000:])
                break
        with open(summary_path, "w") as f:
            json.dump(summary, f, indent=1)
    summary["stopped_early"] = bool(stop)
    py = os.path.join(out_dir, "python-findings.json")
    summary["python_findings"] = json.load(open(py)) if os.path.exists(py) else {}
    with open(summary_path, "w") as f:
        json.dump(summary, f, indent=1)
    print(json.dumps(summary, indent=1))
    return 0 if not summary["hard"] and not summary["python_findings"] else 1


def _table(dirs: list[str]) -> int:
    """The README's long-run table from --long output directories."""
    print("| target | executions | time (rate) | unexpected exceptions | crashes | hangs / OOM |")
    print("|---|---|---|---|---|---|")
    for d in dirs:
        with open(os.path.join(d, "summary.json")) as f:
            s = json.load(f)
        py = s.get("python_findings")
        if py is None and os.path.exists(os.path.join(d, "python-findings.json")):
            with open(os.path.join(d, "python-findings.json")) as f:
                py = json.load(f)
        exc = "; ".join(f"{k} ×{v['count']}" for k, v in (py or {}).items()) or "0"
        crashes = sum(1 for h in s["hard"] if "timeout" not in h["kind"] and "memory" not in h["kind"])
        hangs = sum(1 for h in s["hard"] if "timeout" in h["kind"] or "memory" in h["kind"])
        rate = s["executions"] / max(s["seconds"], 1e-9)
        print(f"| {s['target']} | {s['executions']:,} | {s['seconds'] / 60:.0f} min ({rate:.0f}/s) "
              f"| {exc} | {crashes} | {hangs} |")
    return 0


def main(argv: list[str]) -> int:
    if len(argv) >= 2 and argv[0] == "--table":
        return _table(argv[1:])
    if len(argv) >= 1 and argv[0] == "--long":
        if len(argv) != 4 or argv[1] not in ORDER:
            print(__doc__)
            return 2
        return _long(argv[1], int(argv[2]), argv[3])
    if len(argv) >= 1 and argv[0] == "--all":
        return _run_all(float(argv[1]) if len(argv) > 1 else 60.0)
    if not argv or argv[0] not in ORDER:
        print(__doc__)
        print(f"targets: {', '.join(ORDER)}")
        return 2
    _fuzz_one(argv[0], argv[1:])
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
