"""Compiling a kernel fragment, with the harness, into a custom-op library, once per source.

The translation unit is a prelude of standard headers, the fragment, then ``harness.cpp`` (which includes our
``ort_api.h``). It is compiled once per build key into the cache folder (`cache`): the key is the sha256 of the
translation unit, the header, the compiler and its version, the flags, the CPU ``-march=native`` targets and the
ONNX Runtime C API version requested, so a change to any of them builds a new library and a library is reused
only for exactly what it was built from.
"""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import warnings
from pathlib import Path

from graphopt.native import cache
from graphopt.native.compiler import FLAGS, Compiler, cpu_fingerprint, find_compiler
from graphopt.native.errors import FusedBuildError

HERE = Path(__file__).resolve().parent
ORT_API_VERSION = int(re.search(r"#define GRAPHOPT_ORT_API_VERSION (\d+)", (HERE / "ort_api.h").read_text()).group(1))
"""The ONNX Runtime C API version the harness requests (``GRAPHOPT_ORT_API_VERSION`` in ort_api.h)."""

PRELUDE = """\
#include <cmath>
#include <cstddef>
#include <cstdint>
// GRAPHOPT_VECTORIZE, put right before a kernel's loop: its iterations are independent and an output aliases an
// input only at the same index (FUSED_CONTRACT.md), so the loop may be vectorized without runtime alias checks.
// Without it gcc versions the loop on such checks, which fail for outputs bound in place (scalar loop), and with
// more than a few pointers (Adam: 7) does not vectorize it at all.
#if defined(__clang__)
#define GRAPHOPT_VECTORIZE _Pragma("clang loop vectorize(assume_safety)")
#elif defined(__GNUC__)
#define GRAPHOPT_VECTORIZE _Pragma("GCC ivdep")
#else
#define GRAPHOPT_VECTORIZE
#endif
"""
COMPILE_TIMEOUT_S = 300

compiler_runs = 0
"""How many times this process ran the compiler (a cached library costs none)."""


def translation_unit(fragment: str) -> str:
    """The C++ source compiled for ``fragment``; diagnostics name lines of "fragment" and "harness.cpp"."""
    harness = (HERE / "harness.cpp").read_text(encoding="utf-8")
    return f'{PRELUDE}#line 1 "fragment"\n{fragment}\n#line 1 "harness.cpp"\n{harness}'


def cache_key(source: str, compiler: Compiler) -> str:
    """The library's file name (without ``.so``): what its bytes depend on, hashed."""
    header = (HERE / "ort_api.h").read_text(encoding="utf-8")
    parts = [source, header, "\0".join(compiler.command), compiler.version, " ".join(FLAGS), cpu_fingerprint(),
             f"ort-api-{ORT_API_VERSION}"]
    digest = hashlib.sha256()
    for part in parts:
        digest.update(part.encode("utf-8"))
        digest.update(b"\0\0")
    return digest.hexdigest()


def build_library(fragment: str) -> Path:
    """The path of the verified library built from ``fragment``, compiling it only if not cached (or not trusted).

    Raises `FusedBuildError` (with the compiler's message) when it does not compile, `UnsafeCacheError` when the
    cache folder could be written by someone else.
    """
    compiler = find_compiler()
    folder = cache.trusted_folder()
    source = translation_unit(fragment)
    library = folder / f"{cache_key(source, compiler)}.so"
    if cache.problem(library) is None:
        return library
    with cache.build_lock(folder):  # one build at a time, so no two builders interleave a library and its record
        why = cache.problem(library)
        if why is None:
            return library  # another thread or process built it meanwhile
        if why != cache.MISSING:
            warnings.warn(f"graphopt: not loading the cached fused kernel {library}: {why}; rebuilding it",
                          stacklevel=3)
        with cache.temporary_file(folder, ".so") as (built, handle):
            handle.close()
            _compile(compiler, source, built)
            cache.publish(built, library)
        why = cache.problem(library)
    if why is not None:
        raise FusedBuildError(f"the fused kernel just built at {library} does not verify: {why}")
    return library


def _compile(compiler: Compiler, source: str, output: Path) -> None:
    global compiler_runs
    compiler_runs += 1
    command = [*compiler.command, *FLAGS, "-I", str(HERE), "-x", "c++", "-", "-o", str(output)]
    try:
        done = subprocess.run(command, input=source, capture_output=True, text=True, timeout=COMPILE_TIMEOUT_S,
                              env={**os.environ, "LC_ALL": "C"})  # plain ASCII diagnostics
    except (OSError, subprocess.SubprocessError) as exc:
        raise FusedBuildError(f"running the C++ compiler {compiler} failed: {exc}") from exc
    if done.returncode != 0:
        diagnostics = (done.stderr + done.stdout).strip()
        raise FusedBuildError(f"the C++ compiler {compiler} rejected the fused kernel "
                              f"(exit status {done.returncode}):\n{diagnostics}", compiler_output=diagnostics)
