"""Benchmark evaluation: run a model + method over a dataset, score it as detectron2 does.

    >>> import ovs
    >>> res = ovs.evaluate("voc-21", model="ViT-B-16", method="naclip", out="voc21.json")
    >>> res["scores"]["mIoU"], res["scores"]["IoU"][1]            # percent; IoU[1] = aeroplane

Command line (same options): ``ovs eval --dataset ade20k-150 --root $DETECTRON2_DATASETS
--model RN50 --method maskclip [--limit N] [--workers N] [--ray [ADDRESS]] --out results.json``.

What happens:
- every image is segmented with the dataset's class list at the image's resolution, with the
  method's published settings for that dataset (``ovs.presets``: short side, window, logit
  scale, thresholds, synonyms scored as the method's code does) when the dataset has a preset
  (``preset="none"``: the method's defaults, synonyms averaged as FC-CLIP; explicit options
  override single values), which is the ground truth's (a size mismatch is an error naming both
  files), and its confusion matrix (ovs.metrics, C) added to the total;
- with ``out``: each image's result (its sparse confusion counts) is appended to
  ``<out stem>.images.jsonl`` as soon as it is done; a run that was interrupted resumes from
  that file (only with the same settings, else an error says so) and ends with the same totals;
  the report is ``out`` (JSON: settings, model digest, per-class IoU/ACC, timing),
  ``<out stem>.md`` (Markdown) and ``<out stem>.confusion.npy`` (the int64 (C+1, C+1) matrix,
  rows ground truth);
- parallelism without oversubscription: ovs's C engine already uses one OpenMP thread per core
  (``threads``, default all cores). ``workers=N`` runs N processes with cores // N threads each
  (each loads the model once); ``ray=ADDRESS`` ("" or None-with-ray=True = a local cluster,
  "auto", "ray://host:port") runs Ray actors of ``threads`` CPUs each (default 1), each loading
  the model once. Images are independent and counts are integers, so any split gives the same
  confusion matrix as one process with the same thread count per image.
- ``sparsity``: prune the image tower by global L1 magnitude before evaluating; needs
  ``ovs.prune`` (the pruning module) and raises a clear error when it is not installed.
"""
from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from .datasets import Dataset, load_dataset
from .metrics import ConfusionMatrix, format_table, scores
from .hub import KNOWN_WEIGHTS
from .model import ACTIVATIONS
from .segment import method_choices

__all__ = ["evaluate", "add_eval_parser", "cmd_eval"]

FORMAT = "ovs-eval-images/1"
_SEG_OPTIONS = ("templates", "short_side", "window", "logit_scale", "bg_threshold", "preset", "synonym_mode",
                "area_threshold", "bg_label", "prompt_denoise", "key_smoothing")


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def _check_prune():
    try:
        from . import prune  # noqa: F401
    except ImportError:
        raise RuntimeError("sparsity needs ovs.prune (global magnitude pruning), which this ovs "
                           "installation does not have; evaluate without sparsity or install an "
                           "ovs that includes ovs/prune.py") from None
    if not hasattr(prune, "magnitude"):
        raise RuntimeError("sparsity needs ovs.prune.magnitude(model, sparsity), which this ovs.prune lacks")
    return prune


def model_digest(model) -> str:
    """sha256 over every weight of the model (sorted names, shapes, float32 bytes) and its
    activation: equal digests mean the same network, wherever it was loaded."""
    h = hashlib.sha256()
    for k in sorted(model._sd):
        a = np.ascontiguousarray(model._sd[k], dtype=np.float32)
        h.update(k.encode())
        h.update(str(a.shape).encode())
        h.update(a.data)
    h.update(str(model.act).encode())
    return h.hexdigest()


class _Worker:
    """One model + segmenter + dataset, loaded once; `run(i)` evaluates image i."""

    def __init__(self, spec: dict):
        import ovs

        if spec.get("threads"):
            ovs.set_num_threads(int(spec["threads"]))
        model = ovs.load(spec["model"], act=spec.get("act"), progress=False)
        if spec.get("sparsity") is not None:
            model = _check_prune().magnitude(model, float(spec["sparsity"]))
        self.digest = model_digest(model)
        seg_kw = {k: v for k, v in spec["segmenter"].items() if v is not None}
        if "window" in seg_kw and seg_kw["window"] == "whole":
            seg_kw["window"] = None
        elif "window" in seg_kw:
            seg_kw["window"] = tuple(seg_kw["window"])
        self.seg = ovs.Segmenter(model, method=spec.get("method"), **seg_kw)
        self.ds = _dataset_from_spec(spec["dataset"])
        self.prompts = self.ds.prompts(spec.get("synonyms", True))
        self.arch = model.arch

    def describe(self) -> dict:
        return {"digest": self.digest, "segmenter": repr(self.seg), "method": self.seg.method, "arch": self.arch}

    def run(self, i: int) -> dict:
        ident, img_path, lab_path = self.ds.items[i]
        t0 = time.perf_counter()
        image = self.ds.image(i)
        gt = self.ds.label(i)
        if gt.shape != image.shape[:2]:
            raise ValueError(f"{lab_path}: label map is {gt.shape[1]}x{gt.shape[0]} but image {img_path} is "
                             f"{image.shape[1]}x{image.shape[0]}; predictions are compared at the ground "
                             "truth's resolution, so the two must match")
        t1 = time.perf_counter()
        pred = self.seg.segment(image, self.prompts)
        t2 = time.perf_counter()
        cm = ConfusionMatrix(self.ds.num_classes, self.ds.ignore_label).update(pred, gt)
        nz = np.flatnonzero(cm.matrix)
        return {"index": i, "id": ident, "size": [int(gt.shape[0]), int(gt.shape[1])],
                "cells": nz.tolist(), "counts": cm.matrix.ravel()[nz].tolist(),
                "seconds": {"read": t1 - t0, "segment": t2 - t1, "total": time.perf_counter() - t0},
                "digest": self.digest}


def _dataset_from_spec(spec: dict) -> Dataset:
    if spec.get("preset"):
        return load_dataset(spec["preset"], spec["root"])
    from pathlib import Path as _P
    return Dataset(spec["name"], spec["class_names"], spec["ignore_label"],
                   [(i, _P(a), _P(b)) for i, a, b in spec["items"]], None, {})


def _dataset_spec(ds: Dataset, preset: str | None, root) -> dict:
    if preset:
        return {"preset": preset, "root": str(root) if root is not None else None}
    return {"name": ds.name, "class_names": ds.class_names, "ignore_label": ds.ignore_label,
            "items": [(i, str(a), str(b)) for i, a, b in ds.items]}


# ------------------------------------------------------------------------ runners
_PROC_WORKER: _Worker | None = None


def _proc_init(spec: dict) -> None:
    global _PROC_WORKER
    _PROC_WORKER = _Worker(spec)


def _proc_run(i: int) -> dict:
    assert _PROC_WORKER is not None
    return _PROC_WORKER.run(i)


def _run_serial(spec: dict, todo: list[int], info: dict) -> Iterator[dict]:
    import ovs

    threads = ovs.get_num_threads()  # the caller's setting comes back afterwards
    try:
        w = _Worker(spec)
        info.update(w.describe())
        for i in todo:
            yield w.run(i)
    finally:
        ovs.set_num_threads(threads)


def _run_processes(spec: dict, todo: list[int], workers: int, info: dict) -> Iterator[dict]:
    import multiprocessing as mp
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

    # spawn, not fork: the parent's OpenMP / OpenBLAS thread pools do not survive a fork
    ctx = mp.get_context("spawn")
    with ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=_proc_init,
                             initargs=(spec,)) as pool:
        pending = set()
        it = iter(todo)
        for i in it:
            pending.add(pool.submit(_proc_run, i))
            if len(pending) >= 2 * workers:
                break
        while pending:
            done, pending = wait(pending, return_when=FIRST_COMPLETED)
            for f in done:
                yield f.result()
                nxt = next(it, None)
                if nxt is not None:
                    pending.add(pool.submit(_proc_run, nxt))


def _run_ray(spec: dict, todo: list[int], address: str | None, workers: int | None, info: dict) -> Iterator[dict]:
    try:
        import ray
        from ray.util import ActorPool
    except ImportError:
        raise RuntimeError("--ray needs the 'ray' package: pip install 'ovs[ray]'") from None
    started = False
    if not ray.is_initialized():
        pkg_parent = str(Path(__file__).resolve().parent.parent)
        env = {"env_vars": {"PYTHONPATH": os.pathsep.join(
            [pkg_parent] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p])}}
        kw: dict[str, Any] = {"runtime_env": env, "log_to_driver": False}
        if address:
            kw["address"] = address
        ray.init(**kw)
        started = True
    try:
        threads = int(spec.get("threads") or 1)
        spec = dict(spec, threads=threads)
        if workers is None:
            workers = max(1, int(ray.cluster_resources().get("CPU", 1)) // threads)
        workers = max(1, min(workers, len(todo)))
        Actor = ray.remote(num_cpus=threads)(_Worker)
        actors = [Actor.remote(spec) for _ in range(workers)]
        info.update(ray.get(actors[0].describe.remote()))
        info["ray"] = {"address": address or "local", "actors": workers, "cpus_per_actor": threads,
                       "cluster_cpus": ray.cluster_resources().get("CPU")}
        pool = ActorPool(actors)
        yield from pool.map_unordered(lambda a, i: a.run.remote(i), todo)
    finally:
        if started:
            ray.shutdown()


# ------------------------------------------------------------------------ state file
def _settings_key(settings: dict) -> str:
    keep = {k: v for k, v in settings.items() if k not in ("limit", "workers", "threads", "ray", "images")}
    return hashlib.sha256(json.dumps(keep, sort_keys=True).encode()).hexdigest()


def _load_state(path: Path, key: str) -> dict[str, dict]:
    """Records of a previous run with the same settings ({id: record}); a truncated last line
    (the run was killed while writing) is dropped."""
    done: dict[str, dict] = {}
    with open(path, encoding="utf-8") as f:
        lines = f.read().split("\n")
    if not lines or not lines[0].strip():
        return done
    head = json.loads(lines[0])
    if head.get("format") != FORMAT:
        raise ValueError(f"{path} is not an ovs eval per-image file (format {head.get('format')!r})")
    if head.get("key") != key:
        raise ValueError(f"{path} holds per-image results of a run with other settings "
                         f"({json.dumps(head.get('settings'))}); delete it, pass another --out, or "
                         "pass --restart to start over")
    for ln in lines[1:]:
        if not ln.strip():
            continue
        try:
            rec = json.loads(ln)
        except json.JSONDecodeError:
            continue  # a line being written when a run was killed
        if isinstance(rec, dict) and {"id", "cells", "counts", "digest"} <= rec.keys():
            done[rec["id"]] = rec
    return done


def _ends_with_newline(path: Path) -> bool:
    with open(path, "rb") as f:
        f.seek(-1, os.SEEK_END)
        return f.read(1) == b"\n"


def _record_matrix(rec: dict, C: int) -> np.ndarray:
    m = np.zeros((C + 1) * (C + 1), np.int64)
    m[np.asarray(rec["cells"], np.int64)] = np.asarray(rec["counts"], np.int64)
    return m.reshape(C + 1, C + 1)


def _nan_to_none(a) -> list:
    return [None if not np.isfinite(v) else float(v) for v in np.asarray(a, np.float64)]


# ------------------------------------------------------------------------ API
def evaluate(dataset: str | Dataset, model: str | os.PathLike = "ViT-B-16", method: str | None = None, *,
             root: str | os.PathLike | None = None, limit: int | None = None, workers: int = 1,
             threads: int | None = None, out: str | os.PathLike | None = None, resume: bool = True,
             ray: str | bool | None = None, progress: bool = True, convention: str = "present",
             sparsity: float | None = None, synonyms: bool = True, act: str | None = None,
             **segmenter_options) -> dict:
    """Evaluate `model` (a name or weights path) with `method` on `dataset` (a preset name such
    as "ade20k-150", read from `root` / $DETECTRON2_DATASETS, or an ovs.datasets.Dataset).
    Returns the report dict (also written to `out` when given). See the module docstring."""
    from .metrics import CONVENTIONS

    if convention not in CONVENTIONS:
        raise ValueError(f"convention must be one of {', '.join(CONVENTIONS)}, got {convention!r}")
    bad = set(segmenter_options) - set(_SEG_OPTIONS)
    if bad:
        raise TypeError(f"unknown option(s) {sorted(bad)}; segmenter options are {', '.join(_SEG_OPTIONS)}")
    for name, v, lo in (("limit", limit, 1), ("workers", workers, 1), ("threads", threads, 1)):
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < lo):
            raise ValueError(f"{name} must be an int >= {lo}, got {v!r}")
    if sparsity is not None:
        if isinstance(sparsity, bool) or not isinstance(sparsity, (int, float)) or not 0 <= sparsity < 1:
            raise ValueError(f"sparsity must be a fraction in [0, 1), got {sparsity!r}")
        _check_prune()
    if not isinstance(model, (str, os.PathLike)):
        raise TypeError(f"model must be a model name or a weights path (workers load it themselves), "
                        f"got {type(model).__name__}")
    preset = dataset if isinstance(dataset, str) else None
    # the method's published settings for this dataset (ovs.presets) unless the caller names
    # another preset or "none"; explicit settings override single values of it
    from . import presets as _presets

    seg_preset = segmenter_options.get("preset")
    if seg_preset is None:
        seg_preset = preset if preset in _presets.PRESETS else None
    elif seg_preset == "none":
        seg_preset = None
    else:
        _presets.check_preset(seg_preset)
    segmenter_options["preset"] = seg_preset
    ds = load_dataset(dataset, root) if preset else dataset
    if not isinstance(ds, Dataset):
        raise TypeError(f"dataset must be a preset name or an ovs.datasets.Dataset, got {type(dataset).__name__}")
    if len(ds) == 0:
        raise ValueError(f"dataset {ds.name} has no images")
    n = min(len(ds), limit) if limit else len(ds)
    C = ds.num_classes
    use_ray = ray is not None and ray is not False
    address = ray if isinstance(ray, str) and ray else None
    if threads is None and not use_ray:
        threads = max(1, _cores() // workers)
    model_spec = os.fspath(model)
    if os.path.exists(model_spec):
        model_spec = str(Path(model_spec).resolve())
    settings = {
        "dataset": ds.name, "root": str(ds.root) if ds.root is not None else None, "num_classes": C,
        "ignore_label": ds.ignore_label, "images": n, "model": model_spec, "act": act, "method": method,
        "synonyms": synonyms, "sparsity": sparsity, "segmenter": {k: segmenter_options.get(k) for k in _SEG_OPTIONS},
        "convention": convention, "limit": limit, "workers": workers, "threads": threads,
        "ray": (address or "local") if use_ray else None,
    }
    spec = {"model": model_spec, "act": act, "method": method, "synonyms": synonyms, "sparsity": sparsity,
            "segmenter": settings["segmenter"], "threads": threads,
            "dataset": _dataset_spec(ds, preset, ds.root if preset else None)}
    key = _settings_key(settings)

    out_path = Path(out) if out is not None else None
    state_path = out_path.with_name(out_path.stem + ".images.jsonl") if out_path else None
    done: dict[str, dict] = {}
    if state_path and state_path.exists() and resume:
        done = _load_state(state_path, key)
    if state_path:
        state_path.parent.mkdir(parents=True, exist_ok=True)
        if not done:
            with open(state_path, "w", encoding="utf-8") as f:
                f.write(json.dumps({"format": FORMAT, "key": key, "settings": settings}) + "\n")
    ids = [ds.items[i][0] for i in range(n)]
    if len(set(ids)) < len(ids):
        raise ValueError(f"dataset {ds.name} has several images with the same id (file stem)")
    cm = ConfusionMatrix(C, ds.ignore_label)
    digests = set()
    resumed = 0
    for i in range(n):
        rec = done.get(ids[i])
        if rec is not None:
            cm.merge(_record_matrix(rec, C))
            digests.add(rec["digest"])
            resumed += 1
    todo = [i for i in range(n) if ids[i] not in done]

    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=n, initial=resumed, unit="img", desc=f"ovs eval {ds.name}", file=sys.stderr,
                   dynamic_ncols=True)
    info: dict[str, Any] = {}
    seconds: list[float] = []
    t0 = time.perf_counter()
    if todo:
        if use_ray:
            runner = _run_ray(spec, todo, address, workers if workers > 1 else None, info)
        elif workers > 1:
            runner = _run_processes(spec, todo, workers, info)
        else:
            runner = _run_serial(spec, todo, info)
        sink = open(state_path, "a", encoding="utf-8") if state_path else None
        if sink and sink.tell() and not _ends_with_newline(state_path):
            sink.write("\n")  # end the line a killed run left half-written
        try:
            for rec in runner:
                cm.merge(_record_matrix(rec, C))
                digests.add(rec["digest"])
                seconds.append(rec["seconds"]["total"])
                if sink:
                    sink.write(json.dumps(rec) + "\n")
                    sink.flush()
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(mIoU=f"{scores(cm.matrix, convention)['mIoU']:.2f}", refresh=False)
        finally:
            if sink:
                sink.close()
            if bar is not None:
                bar.close()
    elif bar is not None:
        bar.close()
    wall = time.perf_counter() - t0
    if len(digests) > 1:
        raise RuntimeError(f"workers loaded different weights (digests {sorted(digests)}); "
                           "every Ray node must have the same model file")

    s = scores(cm.matrix, convention)
    first = [names[0] for names in ds.class_names]
    report = {
        "format": "ovs-eval/1",
        "settings": settings,
        "model": {"spec": model_spec, "digest": (sorted(digests) or [info.get("digest")])[0],
                  "digest_of": "sha256 over sorted weight names, shapes and float32 bytes, and the activation",
                  "segmenter": info.get("segmenter"), "arch": info.get("arch"), "method": info.get("method")},
        "scores": {"mIoU": s["mIoU"], "fwIoU": s["fwIoU"], "mACC": s["mACC"], "pACC": s["pACC"],
                   "mIoU_present": s["mIoU_present"], "mIoU_union": s["mIoU_union"], "convention": convention,
                   "classes_present": s["classes_present"], "classes_seen": s["classes_seen"],
                   # lists by class id (first names repeat in ADE20K-847 / PC-459: no dict by name)
                   "class_names": first, "IoU": _nan_to_none(s["IoU"]), "ACC": _nan_to_none(s["ACC"])},
        "timing": {"images": n, "evaluated_now": len(todo), "resumed": resumed, "wall_s": wall,
                   "images_per_s": len(todo) / wall if todo and wall > 0 else None,
                   "median_image_s": float(np.median(seconds)) if seconds else None,
                   "cores": _cores(), "threads_per_worker": threads if not use_ray else spec.get("threads") or 1},
        "ray": info.get("ray"),
        "pixels": {"counted": int(cm.matrix[:C, :C].sum()), "ignored": int(cm.matrix[C].sum())},
    }
    for k in ("mIoU", "fwIoU", "mACC", "pACC", "mIoU_present", "mIoU_union"):
        v = report["scores"][k]
        report["scores"][k] = None if not np.isfinite(v) else float(v)
    report["confusion"] = cm.matrix
    if out_path:
        out_path.parent.mkdir(parents=True, exist_ok=True)
        np.save(out_path.with_name(out_path.stem + ".confusion.npy"), cm.matrix)
        body = {k: v for k, v in report.items() if k != "confusion"}
        body["confusion_file"] = out_path.stem + ".confusion.npy"
        body["images_file"] = state_path.name if state_path else None
        out_path.write_text(json.dumps(body, indent=1) + "\n", encoding="utf-8")
        out_path.with_name(out_path.stem + ".md").write_text(markdown_report(report, s, first), encoding="utf-8")
    return report


def markdown_report(report: dict, s: dict, class_names: list[str]) -> str:
    st, m, t = report["settings"], report["model"], report["timing"]
    lines = [f"# ovs eval: {st['dataset']} ({t['images']} images, {st['num_classes']} classes)", "",
             f"- model: `{m['spec']}` (sha256 {m['digest']}), {m.get('arch')}",
             f"- segmenter: `{m.get('segmenter')}`, synonyms {st['synonyms']}, sparsity {st['sparsity']}",
             f"- mIoU convention: {st['convention']} (the other: "
             f"{'union' if st['convention'] == 'present' else 'present'}); see ovs/metrics.py",
             f"- timing: {t['wall_s']:.1f} s for {t['evaluated_now']} images "
             f"({t['resumed']} resumed), {t['cores']} cores, {t['threads_per_worker']} threads per worker, "
             f"workers {st['workers']}, ray {st['ray']}", ""]
    return "\n".join(lines) + "\n" + format_table(s, class_names)


# ------------------------------------------------------------------------ CLI
def add_eval_parser(sub) -> None:
    from .datasets import PRESETS, default_root

    e = sub.add_parser("eval", help="evaluate a model on a benchmark dataset (mIoU as detectron2)")
    e.add_argument("--dataset", required=True, choices=sorted(PRESETS), help="benchmark preset")
    e.add_argument("--root", default=None, help=f"datasets root (default $DETECTRON2_DATASETS, now {default_root()!r})")
    e.add_argument("--model", default=os.environ.get("OVS_MODEL", "ViT-B-16"),
                   help=f"{' | '.join(KNOWN_WEIGHTS)} | path to weights (default $OVS_MODEL or ViT-B-16)")
    e.add_argument("--method", choices=method_choices(), default=None)
    e.add_argument("--act", choices=ACTIVATIONS, default=None)
    e.add_argument("--sparsity", type=float, default=None, help="prune the image tower first (needs ovs.prune)")
    e.add_argument("--limit", type=int, default=None, help="only the first N images")
    e.add_argument("--workers", type=int, default=1, help="processes (or Ray actors) evaluating images")
    e.add_argument("--threads", type=int, default=None, help="threads per worker (default cores // workers; 1 per Ray actor)")
    e.add_argument("--ray", nargs="?", const="", default=None, metavar="ADDRESS",
                   help="spread images over a Ray cluster (no ADDRESS: start a local one; 'auto'; ray://host:port)")
    e.add_argument("--out", default=None, help="report JSON (also <stem>.md, <stem>.confusion.npy, <stem>.images.jsonl)")
    e.add_argument("--restart", action="store_true", help="ignore per-image results of an earlier run")
    e.add_argument("--convention", choices=["present", "union"], default="present",
                   help="mIoU over classes present in the GT (detectron2 today) or in GT or prediction (detectron2 v0.6, mmseg)")
    e.add_argument("--no-synonyms", action="store_true", help="encode only the first name of each class")
    e.add_argument("--templates", default=None)
    e.add_argument("--short-side", type=int, default=None)
    e.add_argument("--window", default=None, help='"crop,stride" or "whole"')
    e.add_argument("--logit-scale", type=float, default=None)
    e.add_argument("--preset", default=None, help="the method's published settings for a dataset (ovs.presets); "
                   "default: the one named like --dataset, when there is one; 'none' for the method's defaults")
    e.add_argument("--synonym-mode", choices=["mean", "max"], default=None,
                   help="average synonyms' embeddings (mean) or score the best synonym (max); default: the preset's")
    e.add_argument("--bg-threshold", type=float, default=None)
    e.add_argument("--area-threshold", type=float, default=None)
    e.add_argument("--no-progress", action="store_true")
    e.set_defaults(func=cmd_eval)


def cmd_eval(args) -> int:
    window = None
    if args.window is not None:
        window = "whole" if args.window == "whole" else [int(v) for v in args.window.split(",")]
    try:
        rep = _evaluate_cli(args, window)
    except RuntimeError as exc:
        raise SystemExit(f"ovs: error: {exc}") from None
    sc, t = rep["scores"], rep["timing"]
    fmt = lambda v: "nan" if v is None else f"{v:.2f}"  # noqa: E731
    print(f"{rep['settings']['dataset']}: mIoU {fmt(sc['mIoU'])} (union convention {fmt(sc['mIoU_union'])}), "
          f"fwIoU {fmt(sc['fwIoU'])}, mACC {fmt(sc['mACC'])}, pACC {fmt(sc['pACC'])} over {t['images']} images "
          f"({t['resumed']} resumed)" + (f"; report {args.out}" if args.out else ""))
    return 0


def _evaluate_cli(args, window):
    return evaluate(args.dataset, args.model, args.method, root=args.root, limit=args.limit, workers=args.workers,
                    threads=args.threads, out=args.out, resume=not args.restart, ray=args.ray,
                    progress=not args.no_progress, convention=args.convention, sparsity=args.sparsity,
                    synonyms=not args.no_synonyms, act=args.act, templates=args.templates,
                    short_side=args.short_side, window=window, logit_scale=args.logit_scale,
                    preset=args.preset, synonym_mode=args.synonym_mode, bg_threshold=args.bg_threshold,
                    area_threshold=args.area_threshold)
