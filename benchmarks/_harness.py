"""Interleaved A/B timing of ovs ("ours") against torch/open_clip ("peer").

The machine the benchmarks run on is shared and noisy (the same op can take twice as long a
minute later), so a ratio is only trustworthy when both sides are measured alternately under the
same conditions. The parent process (a bench_*.py script) therefore never runs a model itself:

* each side runs in its own persistent worker subprocess started from this file (`--worker`):
  ours imports `ovs` (and never torch), the peer imports torch + open_clip; both get the same
  thread count (ovs.set_num_threads / torch.set_num_threads, and OMP_NUM_THREADS /
  MKL_NUM_THREADS in their environment);
* the parent sends "run case X once" to ours, then to the peer, then to ours... (ABAB), after
  warm-up runs; each worker measures the wall time of the call alone (time.perf_counter around
  it) and reports it with its memory (see below);
* per case the parent reports the median of each side, the median of the per-pair ratios
  ours/peer and the ratio of the medians.

Memory: a worker reports its RSS after imports + model load ("baseline"), then, for every run,
the peak RSS of that run: before each call it resets the kernel's high-water mark (writing "5"
to /proc/self/clear_refs, which resets both VmHWM and getrusage's ru_maxrss) and reads
resource.getrusage(RUSAGE_SELF).ru_maxrss after the call. "delta" = peak - baseline is the
working memory of the call. If the reset is not permitted, ru_maxrss is the lifetime peak
(including model loading) and the JSON says so ("peak_reset": false).

A bench script provides, for the workers, `setup(side, group, params) -> dict[str, Case]` (or
(cases, info), info JSON-able; import heavy modules inside it: the ours worker must not import
torch), and in the parent
builds a list of `Group`s and calls `run_groups`. Each group gets a fresh pair of workers, so
models of different groups never share a process.

Protocol: the parent writes one JSON object per line to the worker's stdin; the worker answers
one JSON object per line on a private copy of its stdout (its fd 1 is redirected to stderr so
library prints cannot corrupt the stream); stderr goes to a log file shown when a worker fails.
"""
from __future__ import annotations

import datetime as _dt
import gc
import importlib.metadata
import importlib.util
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
RESULTS_DIR = BENCH_DIR / "results"
SIDES = ("ours", "peer")
SAMPLE_POINTS = 4096  # values of each output sent to the parent for the ours-vs-peer check


# ============================================================================ worker side
@dataclass
class Case:
    """One measurable call on one side.

    run: the timed call (no arguments); its return value (a numpy array, a torch tensor or None)
        is sampled on the first timed run for the ours-vs-peer check. It may instead return
        Parts(output, parts) to also report the times of its parts (e.g. one per conv layer).
    warmup: an untimed call made before the timed runs (default: run).
    """
    run: Callable[[], Any]
    warmup: Callable[[], Any] | None = None


@dataclass
class Parts:
    output: Any
    parts: list[float]


def _rss_kb() -> int:
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") // 1024


def _maxrss_kb() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux


def _reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _to_numpy(out: Any):
    import numpy as np

    if out is None:
        return None
    if hasattr(out, "detach"):  # a torch tensor (no torch import needed here)
        out = out.detach().cpu().numpy()
    return np.asarray(out)


def _sample(out: Any) -> dict | None:
    import numpy as np

    a = _to_numpy(out)
    if a is None:
        return None
    flat = a.astype(np.float64, copy=False).ravel()
    idx = np.unique(np.linspace(0, flat.size - 1, min(flat.size, SAMPLE_POINTS)).astype(np.int64))
    return {"shape": list(a.shape), "finite": bool(np.isfinite(flat).all()),
            "max_abs": float(np.abs(flat).max()) if flat.size else 0.0,
            "values": flat[idx].tolist()}


def _side_imports(side: str, threads: int) -> dict:
    """Import the side's engine, set its threads, return its versions."""
    import numpy as np

    info: dict[str, Any] = {"python": sys.version.split()[0], "numpy": np.__version__,
                            "threads": threads}
    if side == "ours":
        import ovs
        from ovs import _core

        ovs.set_num_threads(threads)
        info.update(ovs=ovs.__version__, ovs_file=ovs.__file__, build_info=_core.build_info(),
                    ovs_threads=ovs.get_num_threads())
    else:
        import open_clip
        import torch

        if os.environ.get("OVS_BENCH_PEER") == "ort":
            import onnx
            import onnxruntime

            info.update(peer_engine="onnxruntime", onnxruntime=onnxruntime.__version__,
                        onnx=onnx.__version__, ort_providers=onnxruntime.get_available_providers())
        else:
            info.update(peer_engine="torch")
        torch.set_num_threads(threads)
        info.update(torch=torch.__version__, open_clip=open_clip.__version__,
                    torch_threads=torch.get_num_threads(),
                    torch_parallel=[ln.strip() for ln in torch.__config__.parallel_info().splitlines()
                                    if "MKL" in ln or "OpenMP" in ln or "oneDNN" in ln
                                    or "MKL-DNN" in ln][:4])
    return info


def worker_main(script: str, side: str, threads: int) -> int:
    """Serve commands from the parent until "exit" (or end of input)."""
    out = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr

    def reply(**msg):
        out.write(json.dumps(msg) + "\n")

    spec = importlib.util.spec_from_file_location("bench_script", script)
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_script"] = module
    cases: dict[str, Case] = {}
    sampled: set[str] = set()
    peak_reset = _reset_peak()
    for line in sys.stdin:
        msg = json.loads(line)
        op = msg.get("op")
        try:
            if op == "hello":
                info = _side_imports(side, threads)
                spec.loader.exec_module(module)
                reply(ok=True, info=info, pid=os.getpid(), rss_kb=_rss_kb())
            elif op == "setup":
                t0 = time.perf_counter()
                res = module.setup(side, msg["group"], msg["params"])
                cases, info = res if isinstance(res, tuple) else (res, {})
                setup_s = time.perf_counter() - t0
                gc.collect()
                maxrss_setup = _maxrss_kb()
                reply(ok=True, setup_s=setup_s, rss_base_kb=_rss_kb(), maxrss_setup_kb=maxrss_setup,
                      peak_reset=peak_reset, cases=sorted(cases), info=info,
                      torch_imported="torch" in sys.modules)
            elif op == "run":
                case = cases[msg["case"]]
                fn = case.warmup if (msg.get("warmup") and case.warmup is not None) else case.run
                gc.collect()
                peak_reset = _reset_peak() and peak_reset
                c0 = time.process_time()
                t0 = time.perf_counter()
                res = fn()
                dt = time.perf_counter() - t0
                cpu = time.process_time() - c0
                maxrss = _maxrss_kb()
                parts = None
                if isinstance(res, Parts):
                    res, parts = res.output, res.parts
                sample = None
                if not msg.get("warmup") and msg["case"] not in sampled:
                    sample = _sample(res)
                    sampled.add(msg["case"])
                del res
                reply(ok=True, time_s=dt, cpu_s=cpu, maxrss_kb=maxrss, rss_after_kb=_rss_kb(), parts=parts,
                      sample=sample, peak_reset=peak_reset)
            elif op == "exit":
                reply(ok=True, torch_imported="torch" in sys.modules)
                return 0
            else:
                raise ValueError(f"unknown op {op!r}")
        except BaseException:  # report, keep serving: the parent decides
            reply(ok=False, error=traceback.format_exc())
    return 0


# ============================================================================ parent side
@dataclass
class Group:
    """Cases that share one pair of workers (one model load per side).

    params: JSON-able, passed to setup(side, name, params) on both sides.
    once: cases run exactly once per side, before the warm-up (e.g. a cold call).
    repeated: cases timed `repeat` times per side, interleaved ours/peer.
    peer_first: set the peer up first and pass its setup info to ours as params["peer_info"]
        (e.g. the peer writes derived weights that ours then loads).
    meta: per-case JSON-able facts copied into the report (FLOPs, shapes, settings).
    """
    name: str
    params: dict
    repeated: list[str] = field(default_factory=list)
    once: list[str] = field(default_factory=list)
    peer_first: bool = False
    meta: dict[str, dict] = field(default_factory=dict)


class WorkerError(RuntimeError):
    pass


class Worker:
    def __init__(self, script: Path, side: str, threads: int, log_dir: Path,
                 env_extra: dict | None = None):
        self.side = side
        env = dict(os.environ)
        env.update(env_extra or {})
        env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT), str(BENCH_DIR)]
                                            + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
        env["OMP_NUM_THREADS"] = str(threads)
        env["MKL_NUM_THREADS"] = str(threads)
        env.setdefault("PYTHONUNBUFFERED", "1")
        self.log_path = log_dir / f"{side}-{time.monotonic_ns()}.log"
        self._log = open(self.log_path, "w")
        self.proc = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), "--worker", str(script), side, str(threads)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._log, text=True, env=env,
            cwd=str(REPO_ROOT))

    def call(self, **msg) -> dict:
        try:
            self.proc.stdin.write(json.dumps(msg) + "\n")
            self.proc.stdin.flush()
        except BrokenPipeError:
            pass
        line = self.proc.stdout.readline()
        if not line:
            self.proc.wait()
            raise WorkerError(f"{self.side} worker died (exit code {self.proc.returncode}) during "
                              f"{msg.get('op')} {msg.get('case', msg.get('group', ''))}:\n{self.log_tail()}")
        res = json.loads(line)
        if not res.get("ok"):
            raise WorkerError(f"{self.side} worker failed in {msg}:\n{res.get('error')}\n"
                              f"log tail:\n{self.log_tail()}")
        return res

    def log_tail(self, n: int = 30) -> str:
        self._log.flush()
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def close(self) -> dict | None:
        res = None
        if self.proc.poll() is None:
            try:
                res = self.call(op="exit")
            except WorkerError:
                pass
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        return res


def _loadavg() -> list[float]:
    try:
        with open("/proc/loadavg") as f:
            return [float(v) for v in f.read().split()[:3]]
    except OSError:
        return []


def _busy_s() -> float | None:
    """Busy CPU seconds of the whole machine since boot (all cores; /proc/stat)."""
    try:
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    idle = v[3] + (v[4] if len(v) > 4 else 0)
    return (sum(v[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def _procs_cpu_s(pids: list[int]) -> float | None:
    """User + system CPU seconds of these processes (all their threads)."""
    total = 0
    try:
        for pid in pids:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14, 15)
    except (OSError, ValueError, IndexError):
        return None
    return total / os.sysconf("SC_CLK_TCK")


def _check(a: dict | None, b: dict | None) -> dict | None:
    """max |ours - peer| / max |peer| over the sampled values (same positions on both sides)."""
    if not a or not b:
        return None
    if a["shape"] != b["shape"]:
        return {"shape_ours": a["shape"], "shape_peer": b["shape"], "rel_err": None}
    diff = max((abs(x - y) for x, y in zip(a["values"], b["values"])), default=0.0)
    return {"shape": a["shape"], "points": len(a["values"]), "finite": a["finite"] and b["finite"],
            "rel_err": diff / max(b["max_abs"], 1e-12)}


def _stats(times: list[float]) -> dict:
    return {"median_s": statistics.median(times), "min_s": min(times), "max_s": max(times),
            "times_s": times}


def _mb(kb: int) -> float:
    return round(kb / 1024.0, 1)


def run_groups(script: Path, groups: list[Group], *, threads: int, repeat: int, warmup: int,
               env: dict | None = None, log=print) -> dict:
    """Run every group with a fresh ours/peer worker pair (env: extra environment variables for
    both workers); returns {"cases": [...], "workers": {...}, "worker_logs": dir}."""
    if repeat < 1 or warmup < 0:
        raise ValueError(f"need repeat >= 1 and warmup >= 0, got {repeat}, {warmup}")
    log_dir = Path(tempfile.mkdtemp(prefix="ovs-bench-logs-"))
    cases_out: list[dict] = []
    workers_info: dict[str, dict] = {}
    for g in groups:
        t_group = time.perf_counter()
        log(f"[{g.name}] starting workers")
        order = ("peer", "ours") if g.peer_first else ("ours", "peer")
        workers: dict[str, Worker] = {}
        setup: dict[str, dict] = {}
        try:
            for side in order:
                w = Worker(script, side, threads, log_dir, env)
                workers[side] = w
                hello = w.call(op="hello")
                workers_info.setdefault(side, hello["info"])
                params = dict(g.params)
                if side == "ours" and g.peer_first:
                    params["peer_info"] = setup["peer"]["info"]
                setup[side] = w.call(op="setup", group=g.name, params=params)
                setup[side]["rss_import_kb"] = hello["rss_kb"]
                log(f"[{g.name}] {side}: setup {setup[side]['setup_s']:.1f}s, "
                    f"RSS {_mb(setup[side]['rss_base_kb'])} MB")
            if setup["ours"]["torch_imported"]:
                raise WorkerError("the ours worker imported torch during setup")
            rec: dict[str, dict] = {}

            pids = [os.getpid()] + [w.proc.pid for w in workers.values()]

            def one(case: str, side: str, warm: bool) -> dict:
                b0, m0 = _busy_s(), _procs_cpu_s(pids)
                r = workers[side].call(op="run", case=case, warmup=warm)
                b1, m1 = _busy_s(), _procs_cpu_s(pids)
                # CPU the rest of the machine used during the call: machine busy time minus
                # the CPU of both workers and the parent (clock-tick resolution, 10 ms).
                r["others_cpu_s"] = None if None in (b0, b1, m0, m1) else max((b1 - b0) - (m1 - m0), 0.0)
                if not warm:
                    rec[case][side].append(r)
                return r

            for case in g.once + g.repeated:
                rec[case] = {"ours": [], "peer": [], "load": []}
            for case in g.once:
                rec[case]["load"].append(_loadavg())
                for side in SIDES:
                    r = one(case, side, False)
                    log(f"[{g.name}] {case} (once) {side}: {r['time_s']:.3f}s")
            for _ in range(warmup):
                for case in g.repeated:
                    for side in SIDES:
                        one(case, side, True)
            for i in range(repeat):
                for case in g.repeated:
                    rec[case]["load"].append(_loadavg())
                    ta = one(case, "ours", False)["time_s"]
                    tb = one(case, "peer", False)["time_s"]
                    log(f"[{g.name}] {case} {i + 1}/{repeat}: ours {ta:.3f}s peer {tb:.3f}s "
                        f"({ta / tb:.2f}x)")
            for side in SIDES:
                bye = workers[side].close()
                if side == "ours" and bye and bye.get("torch_imported"):
                    raise WorkerError("the ours worker imported torch")
            for case in g.once + g.repeated:
                cases_out.append(_case_report(g, case, rec[case], setup))
        finally:
            for w in workers.values():
                w.close()
        log(f"[{g.name}] done in {time.perf_counter() - t_group:.0f}s")
    return {"cases": cases_out, "workers": workers_info, "worker_logs": str(log_dir)}


def _case_report(g: Group, case: str, rec: dict, setup: dict) -> dict:
    once = case in g.once
    out: dict[str, Any] = {"case": case, "group": g.name, "kind": "once" if once else "repeated",
                           **g.meta.get(case, {})}
    for side in SIDES:
        runs = rec[side]
        times = [r["time_s"] for r in runs]
        peak = max(r["maxrss_kb"] for r in runs)
        base = setup[side]["rss_base_kb"]
        s = _stats(times) if not once else {"time_s": times[0]}
        # CPU seconds / wall seconds of the call: ~threads when the side had its cores, lower
        # when the machine was busy (or the call is serial).
        s["cpu_per_wall"] = statistics.median(r["cpu_s"] / max(r["time_s"], 1e-9) for r in runs)
        if all(r["others_cpu_s"] is not None for r in runs):
            # cores' worth of CPU other processes took meanwhile, over all runs: 0 = quiet.
            # /proc/stat counts clock ticks, so calls much shorter than a second read noisily.
            s["others_cores"] = sum(r["others_cpu_s"] for r in runs) / max(sum(times), 1e-9)
        s.update(rss_import_mb=_mb(setup[side]["rss_import_kb"]), rss_base_mb=_mb(base),
                 maxrss_setup_mb=_mb(setup[side]["maxrss_setup_kb"]), peak_rss_mb=_mb(peak),
                 delta_rss_mb=_mb(peak - base), setup_s=setup[side]["setup_s"],
                 peak_reset=all(r["peak_reset"] for r in runs))
        if runs[0].get("parts") is not None:
            cols = list(zip(*[r["parts"] for r in runs]))
            s["parts_median_s"] = [statistics.median(c) for c in cols]
        out[side] = s
    ta = [r["time_s"] for r in rec["ours"]]
    tb = [r["time_s"] for r in rec["peer"]]
    out["ratio_of_medians"] = statistics.median(ta) / statistics.median(tb)
    out["ratio_median_of_pairs"] = statistics.median(a / b for a, b in zip(ta, tb))
    out["pair_ratios"] = [a / b for a, b in zip(ta, tb)]
    out["peak_rss_ratio"] = out["ours"]["peak_rss_mb"] / out["peer"]["peak_rss_mb"]
    dp = out["peer"]["delta_rss_mb"]
    out["delta_rss_ratio"] = out["ours"]["delta_rss_mb"] / dp if dp > 0 else None
    out["loadavg_during"] = rec["load"]
    sa = next((r["sample"] for r in rec["ours"] if r.get("sample")), None)
    sb = next((r["sample"] for r in rec["peer"] if r.get("sample")), None)
    out["check"] = _check(sa, sb)
    return out


# ============================================================================ reporting
def _git_state() -> dict:
    def git(*args):
        try:
            return subprocess.run(["git", "-C", str(REPO_ROOT), *args], capture_output=True,
                                  text=True, timeout=20).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""
    return {"commit": git("rev-parse", "HEAD"), "dirty": bool(git("status", "--porcelain"))}


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def _dist_version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def machine_info(threads: int, workers: dict, env: dict | None = None) -> dict:
    ours, peer = workers.get("ours", {}), workers.get("peer", {})
    mem_kb = None
    try:
        with open("/proc/meminfo") as f:
            mem_kb = int(f.readline().split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return {
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "host": platform.node(), "platform": platform.platform(),
        "nproc": os.cpu_count(), "affinity": len(os.sched_getaffinity(0)),
        "cpu_model": _cpu_model(), "mem_total_gb": round(mem_kb / 2**20, 1) if mem_kb else None,
        "python": platform.python_version(), "threads": threads,
        "numpy": ours.get("numpy") or _dist_version("numpy"),
        "torch": peer.get("torch") or _dist_version("torch"),
        "open_clip": peer.get("open_clip") or _dist_version("open_clip_torch"),
        "ovs": ours.get("ovs"), "ovs_file": ours.get("ovs_file"),
        "ovs_build_info": ours.get("build_info"), "torch_parallel": peer.get("torch_parallel"),
        "worker_env": {k: v for k, v in {**os.environ, **(env or {}), "OMP_NUM_THREADS": str(threads),
                                         "MKL_NUM_THREADS": str(threads)}.items()
                       if k.startswith(("OMP_", "MKL_", "OPENBLAS_", "GOMP_", "KMP_"))},
        "git": _git_state(),
    }


def write_json(report: dict, out: str | None, stem: str) -> Path:
    if out:
        path = Path(out)
    else:
        stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
        path = RESULTS_DIR / f"{stem}-{stamp}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(report, indent=1) + "\n")
    os.replace(tmp, path)
    return path


def run(script: str, groups: list[Group], args) -> dict:
    """run_groups for a bench script's main: its file, its parsed --threads/--repeat/--warmup."""
    return run_groups(Path(script).resolve(), groups, threads=args.threads, repeat=args.repeat,
                      warmup=args.warmup, env=worker_env(args))


def report(name: str, args, res: dict, t0: float, settings: dict, **extra) -> dict:
    """The JSON report of a bench script: script, machine, settings (repeat, warmup, threads, the
    order of the runs, "ABAB" unless `settings` says otherwise, then `settings` and the wall time
    since t0), workers, cases, then `extra`."""
    return {"script": name, "machine": machine_info(args.threads, res["workers"], worker_env(args)),
            "settings": {"repeat": args.repeat, "warmup": args.warmup, "threads": args.threads,
                         "order": "ABAB", **settings, "wall_s": time.perf_counter() - t0},
            "workers": res["workers"], "cases": res["cases"], **extra}


def publish(report: dict, out: str | None) -> Path:
    """Write the report (write_json) and print its table of cases; returns the JSON's path."""
    path = write_json(report, out, report["script"])
    print()
    print(fmt_table(case_rows(report["cases"]), CASE_HEADER))
    return path


def finish(name: str, args, res: dict, t0: float, settings: dict, notes=(), **extra) -> int:
    """The end of a bench script's main: its report (report()) written with its table printed
    (publish()), then the lines of `notes` (targets, derived figures) and where the JSON went.
    Returns main's exit code, 0."""
    path = publish(report(name, args, res, t0, settings, **extra), args.out)
    for line in notes:
        print(line)
    print(f"\nwrote {path}  ({time.perf_counter() - t0:.0f}s)")
    return 0


def fmt_table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(str(r[i])) for r in [header] + rows) for i in range(len(header))]
    line = lambda r: "  ".join(str(c).rjust(w) if i else str(c).ljust(w)  # noqa: E731
                               for i, (c, w) in enumerate(zip(r, widths)))
    return "\n".join([line(header), line(["-" * w for w in widths])] + [line(r) for r in rows])


def case_rows(cases: list[dict]) -> list[list[str]]:
    """The standard human table: one row per case."""
    rows = []
    for c in cases:
        o, p = c["ours"], c["peer"]
        once = c["kind"] == "once"
        to = o["time_s"] if once else o["median_s"]
        tp = p["time_s"] if once else p["median_s"]
        chk = c.get("check") or {}
        rel = chk.get("rel_err")
        rows.append([
            c["case"] + (" (once)" if once else ""), f"{to:.3f}", f"{tp:.3f}",
            "-" if once else f"{c['ratio_median_of_pairs']:.2f}", f"{c['ratio_of_medians']:.2f}",
            f"{o['peak_rss_mb']:.0f}/{o['delta_rss_mb']:.0f}",
            f"{p['peak_rss_mb']:.0f}/{p['delta_rss_mb']:.0f}",
            f"{c['peak_rss_ratio']:.2f}/" + ("-" if c["delta_rss_ratio"] is None else f"{c['delta_rss_ratio']:.2f}"),
            f"{o['cpu_per_wall']:.1f},{p['cpu_per_wall']:.1f}",
            f"{o.get('others_cores', float('nan')):.1f},{p.get('others_cores', float('nan')):.1f}",
            "-" if rel is None else f"{rel:.1e}",
        ])
    return rows


CASE_HEADER = ["case", "ours s", "peer s", "ratio(pairs)", "ratio(med)", "ours peak/Δ MB",
               "peer peak/Δ MB", "rss ratio peak/Δ", "cpu/wall o,p", "others o,p", "rel err"]


def common_args(parser, *, repeat: int = 7) -> None:
    parser.add_argument("--threads", type=int, default=2,
                        help="threads on both sides (default 2 = this machine's cores)")
    parser.add_argument("--repeat", type=int, default=repeat,
                        help=f"timed runs per side and case, interleaved (default {repeat}, >= 5 advised)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed runs per side and case first")
    parser.add_argument("--out", default=None, help="JSON path (default benchmarks/results/<script>-<time>.json)")
    parser.add_argument("--weights", action="append", default=[], metavar="DIR|NAME=FILE",
                        help="a directory with rn50.safetensors / vitb16.safetensors, or rn50=FILE / "
                             "vitb16=FILE (repeatable); default tests/_generated (fixtures are "
                             "generated if missing)")
    parser.add_argument("--cases", default=None, help="comma-separated subset of case groups to run")
    parser.add_argument("--peer", choices=("torch", "ort"), default="torch",
                        help="the peer engine: torch/open_clip (default) or ONNX Runtime running "
                             "models exported from the same open_clip weights with "
                             "torch.onnx.export, intra_op_num_threads = --threads "
                             "(pip install onnxruntime onnx)")
    parser.add_argument("--omp-wait-policy", choices=("inherit", "passive", "active"), default="inherit",
                        help="OMP_WAIT_POLICY for both workers (default: inherit the environment). "
                             "On a busy machine, spinning OpenMP threads can slow a 2-thread run "
                             "many times over; compare with 'passive'.")


def worker_env(args) -> dict:
    """Extra environment for both workers from the common arguments."""
    env = {} if args.omp_wait_policy == "inherit" else {"OMP_WAIT_POLICY": args.omp_wait_policy.upper()}
    env["OVS_BENCH_PEER"] = getattr(args, "peer", "torch")
    return env


def peer_is_ort() -> bool:
    """In a worker: whether the peer side runs ONNX Runtime (--peer ort)."""
    return os.environ.get("OVS_BENCH_PEER") == "ort"


def ort_session(model_path: str, threads: int, profile_prefix: str | None = None):
    """An ONNX Runtime CPU session with `threads` intra-op threads, all graph optimisations;
    with profile_prefix, ORT's per-node profiling on (JSON at sess.end_profiling())."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # Same waiting behaviour as ours (OMP_WAIT_POLICY=PASSIVE unless set): ORT's intra-op
    # threads spin by default, which on a busy machine measures the other processes.
    if os.environ.get("OMP_WAIT_POLICY", "PASSIVE").upper() != "ACTIVE":
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if profile_prefix:
        so.enable_profiling = True
        so.profile_file_prefix = profile_prefix
    return ort.InferenceSession(model_path, so, providers=["CPUExecutionProvider"])


def export_onnx(module, example, path: str) -> str:
    """torch.onnx.export of `module` traced on the example input (TorchScript exporter, opset
    17, input "x", output "y") to path; returns path. nn.MultiheadAttention's inference fast
    path (aten::_native_multi_head_attention) has no ONNX export, so it is turned off: the plain
    path is the same function on the same weights."""
    import torch

    torch.backends.mha.set_fastpath_enabled(False)
    with torch.no_grad():
        torch.onnx.export(module, (example,), path, input_names=["x"], output_names=["y"],
                          opset_version=17, dynamo=False)
    return path


def clip_resnet_trunk(visual):
    """open_clip's ModifiedResNet `visual` up to res5 (stem, layer1..4; no attention pool) as a
    torch module in eval mode: the RN50 trunk the peers time and export."""
    import torch

    class Trunk(torch.nn.Module):
        def __init__(self, visual):
            super().__init__()
            self.visual = visual

        def forward(self, t):
            v = self.visual
            t = v.stem(t)
            for layer in (v.layer1, v.layer2, v.layer3, v.layer4):
                t = layer(t)
            return t

    return Trunk(visual).eval()


FIXTURE_DIR = REPO_ROOT / "tests" / "_generated"
MODEL_FILES = {"rn50": "rn50.safetensors", "vitb16": "vitb16.safetensors"}
OPEN_CLIP_NAMES = {"rn50": "RN50-quickgelu", "vitb16": "ViT-B-16-quickgelu"}


def in_process_engines(threads: int):
    """(ovs, torch or None) for the single-process scripts (bench_labels, bench_conv): ovs
    imported from this checkout, both at `threads` threads."""
    if str(REPO_ROOT) not in sys.path:
        sys.path.insert(0, str(REPO_ROOT))
    import ovs

    ovs.set_num_threads(threads)
    try:
        import torch
        torch.set_num_threads(threads)
    except ImportError:
        torch = None
    return ovs, torch


def load_reference(stem: str):
    """tests/reference/<stem>.py (a PyTorch reference of the test suite) as the module `stem`:
    the references import each other by that bare name, so their folder joins sys.path."""
    import importlib

    ref_dir = str(REPO_ROOT / "tests" / "reference")
    if ref_dir not in sys.path:
        sys.path.append(ref_dir)
    return importlib.import_module(stem)


def resolve_weights(specs: list[str], needed: list[str]) -> dict[str, str]:
    """{"rn50": path, "vitb16": path} from --weights values; generates the fixtures when the
    default directory lacks them."""
    paths: dict[str, str] = {}
    dirs = []
    for s in specs:
        if "=" in s:
            k, v = s.split("=", 1)
            if k not in MODEL_FILES:
                raise SystemExit(f"--weights {s!r}: unknown model {k!r}; use one of {sorted(MODEL_FILES)}")
            paths[k] = str(Path(v).resolve())
        else:
            dirs.append(Path(s))
    if not dirs:
        dirs = [FIXTURE_DIR]
    for k in needed:
        if k in paths:
            continue
        for d in dirs:
            if (d / MODEL_FILES[k]).is_file():
                paths[k] = str((d / MODEL_FILES[k]).resolve())
                break
    missing = [k for k in needed if k not in paths]
    if missing and dirs == [FIXTURE_DIR]:
        print(f"generating the fixtures in {FIXTURE_DIR} (missing {missing}) ...", flush=True)
        subprocess.run([sys.executable, str(REPO_ROOT / "tests" / "reference" / "make_fixtures.py"),
                        "--out", str(FIXTURE_DIR)], check=True, cwd=str(REPO_ROOT))
        return resolve_weights(specs, needed)
    if missing:
        raise SystemExit(f"no weights for {missing}: looked for {[MODEL_FILES[k] for k in missing]} "
                         f"in {[str(d) for d in dirs]}; pass --weights NAME=FILE")
    for k, p in paths.items():
        if not Path(p).is_file():
            raise SystemExit(f"--weights: {k} file {p} does not exist")
    return paths


def select_groups(groups: list[Group], spec: str | None) -> list[Group]:
    if not spec:
        return groups
    want = [s.strip() for s in spec.split(",") if s.strip()]
    known = {g.name for g in groups}
    bad = [w for w in want if w not in known]
    if bad:
        raise SystemExit(f"--cases: unknown {bad}; valid: {', '.join(sorted(known))}")
    return [g for g in groups if g.name in want]


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "--worker":
        # Run as the importable module `_harness` (sys.path[0] is this directory), so the bench
        # script's `import _harness` shares its classes (Case, Parts) with the worker loop.
        import _harness

        sys.exit(_harness.worker_main(sys.argv[2], sys.argv[3], int(sys.argv[4])))
    print("internal worker entry point; run benchmarks/bench_*.py instead", file=sys.stderr)
    sys.exit(2)
