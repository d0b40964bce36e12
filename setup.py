"""Build the ovs._core extension from csrc/ against the NumPy C API and OpenBLAS.

BLAS source (environment variable OVS_BLAS):
  unset / "scipy-openblas32"  the pinned scipy-openblas32 wheel (default; works with only pip)
  "system"                    a system OpenBLAS found by pkg-config (package "openblas")
OVS_PORTABLE=1 drops -march=native (for wheels meant for other machines).
OVS_SANITIZE=address,undefined builds with those sanitizers (-O1 -g, frame pointers kept, every
UBSan report fatal). Run it with the sanitizer runtime preloaded, e.g.
  LD_PRELOAD=$(gcc -print-file-name=libasan.so):$(gcc -print-file-name=libubsan.so) \
  ASAN_OPTIONS=detect_leaks=0 python -m pytest ...
(CPython itself is not instrumented, so the runtime must be loaded before the interpreter; leak
detection is off because CPython keeps objects alive until exit by design). See .ci/sanitize.
"""
import glob
import os
import shlex
import subprocess
import sys

import numpy
from setuptools import Extension, setup

HERE = os.path.dirname(os.path.abspath(__file__))


def blas_config():
    choice = os.environ.get("OVS_BLAS", "scipy-openblas32").strip().lower()
    if choice == "system":
        try:
            cflags = subprocess.check_output(["pkg-config", "--cflags", "openblas"], text=True)
            libs = subprocess.check_output(["pkg-config", "--libs", "openblas"], text=True)
        except (OSError, subprocess.CalledProcessError) as exc:
            sys.exit(f"OVS_BLAS=system but pkg-config cannot find openblas: {exc}")
        inc = [f[2:] for f in shlex.split(cflags) if f.startswith("-I")]
        libdirs = [f[2:] for f in shlex.split(libs) if f.startswith("-L")]
        libnames = [f[2:] for f in shlex.split(libs) if f.startswith("-l")]
        return dict(include_dirs=inc, library_dirs=libdirs, libraries=libnames,
                    runtime_library_dirs=libdirs, define_macros=[("OVS_BLAS_NAME", '"system openblas"')])
    if choice not in ("", "scipy-openblas32", "scipy_openblas32"):
        sys.exit(f"OVS_BLAS must be 'scipy-openblas32' or 'system', got {choice!r}")
    import scipy_openblas32 as sob

    # The library is loaded at import time by ovs/_blas.py (ctypes, RTLD_GLOBAL) from the
    # installed scipy_openblas32 package, so no rpath into the temporary build environment.
    return dict(include_dirs=[sob.get_include_dir()], library_dirs=[sob.get_lib_dir()],
                libraries=[sob.get_library()], runtime_library_dirs=[],
                define_macros=[("OVS_BLAS_PREFIX", "scipy_"),
                               ("OVS_BLAS_NAME", '"scipy-openblas32"')])


def sanitizers():
    """The sanitizers asked for by OVS_SANITIZE (comma-separated), checked against a short list."""
    names = [n.strip() for n in os.environ.get("OVS_SANITIZE", "").split(",") if n.strip()]
    allowed = ("address", "undefined", "leak")
    for n in names:
        if n not in allowed:
            sys.exit(f"OVS_SANITIZE: unknown sanitizer {n!r} (allowed: {', '.join(allowed)})")
    return names


def extension():
    blas = blas_config()
    sources = sorted(glob.glob("csrc/**/*.c", recursive=True))
    cflags = ["-O3", "-std=c11", "-fopenmp", "-fno-math-errno", "-Wall", "-Wextra",
              "-Wno-unused-parameter", "-Wno-missing-field-initializers",
              "-Wno-cast-function-type", "-D_GNU_SOURCE"]
    if os.environ.get("OVS_PORTABLE", "0") != "1":
        cflags.append("-march=native")
    if os.environ.get("OVS_DEBUG") == "1":
        cflags += ["-O1", "-g", "-fno-omit-frame-pointer"]
    ldflags = ["-fopenmp"]
    sanitize = sanitizers()
    if sanitize:
        flags = ["-fsanitize=" + ",".join(sanitize), "-fno-omit-frame-pointer", "-g", "-O1"]
        if "undefined" in sanitize:
            flags.append("-fno-sanitize-recover=undefined")
        cflags += flags
        ldflags += flags
    return Extension(
        "ovs._core",
        sources=sources,
        include_dirs=["include", "csrc", numpy.get_include()] + blas["include_dirs"],
        library_dirs=blas["library_dirs"],
        libraries=blas["libraries"],
        runtime_library_dirs=blas["runtime_library_dirs"],
        define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")] + blas["define_macros"],
        extra_compile_args=cflags,
        extra_link_args=ldflags,
    )


setup(ext_modules=[extension()])
