"""Compiling kernel fragments, with the harness, into one custom-op library, once per source.

A library holds one op per fragment (distinct op names, the fragments' ``GRAPHOPT_OP_NAME`` s, all in domain
``ai.graphopt.fused``), so one session can run several fused kernels: the training step of several param groups.
The translation unit is a prelude of standard headers (every fragment's own ``#include`` lines, moved up here
so that no header is included inside a namespace), then each fragment, sorted by op name, in a namespace of its
own followed by ``op_entry.inc`` (its checks and its `graphopt_OpEntry`), the table of ops, then ``harness.cpp``
(which includes our ``ort_api.h``). One fragment is the one-op case of the same harness.

It is compiled once per build key into the cache folder (`cache`): the key is the sha256 of the
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
from typing import Sequence

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
#include <limits>
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
#define GRAPHOPT_MAX_OPERANDS 256
// What the harness knows of one fragment's op (op_entry.inc fills one per fragment).
struct graphopt_OpEntry {
  const char* name;
  int num_inputs, num_outputs, elementwise_inputs;
  const int* input_types;
  const int* output_types;
  void (*kernel)(int64_t, int64_t, const void* const*, void* const*);  // an element-wise op, or
  double (*reduce)(int64_t, int64_t, const void* const*);             // a reduction
};
"""
COMPILE_TIMEOUT_S = 300
_INCLUDE = re.compile(r"^\s*#\s*include\s*<[A-Za-z0-9_./]+>\s*$")
_OP_NAME = re.compile(r'^\s*#\s*define\s+GRAPHOPT_OP_NAME\s+"([A-Za-z_][A-Za-z0-9_]*)"', re.MULTILINE)

compiler_runs = 0
"""How many times this process ran the compiler (a cached library costs none)."""


def translation_unit(fragments: Sequence[str]) -> str:
    """The C++ source compiled for ``fragments`` (op name -> fragment: distinct names); diagnostics name lines of
    "fragment" (of "fragment <op name>" when there are several) and "harness.cpp"."""
    harness = (HERE / "harness.cpp").read_text(encoding="utf-8")
    entry = (HERE / "op_entry.inc").read_text(encoding="utf-8")
    by_name = _by_op_name(fragments)
    includes = sorted({line.strip() for text in by_name.values() for line in text.splitlines() if _INCLUDE.match(line)})
    parts = [PRELUDE, *(f"{line}\n" for line in includes)]
    for k, (name, text) in enumerate(sorted(by_name.items())):
        label = "fragment" if len(by_name) == 1 else f"fragment {name}"
        body = "\n".join("" if _INCLUDE.match(line) else line for line in text.splitlines())  # same line numbers
        parts.append(f'namespace graphopt_op_{k} {{\n#line 1 "{label}"\n{body}\n#line 1 "op_entry.inc"\n{entry}}}\n')
    table = ", ".join(f"&graphopt_op_{k}::graphopt_entry" for k in range(len(by_name)))
    parts.append(f"static const int graphopt_num_ops = {len(by_name)};\n"
                 f"static const graphopt_OpEntry* const graphopt_ops[] = {{{table}}};\n")
    return "".join(parts) + f'#line 1 "harness.cpp"\n{harness}'


def op_name(fragment: str) -> str:
    """The fragment's ``GRAPHOPT_OP_NAME``; `FusedBuildError` if it defines none."""
    match = _OP_NAME.search(fragment)
    if match is None:
        raise FusedBuildError('the kernel fragment defines no GRAPHOPT_OP_NAME (#define GRAPHOPT_OP_NAME "Fused_...")')
    return match.group(1)


def _by_op_name(fragments: Sequence[str]) -> dict[str, str]:
    """The fragments by op name, once each; `FusedBuildError` for two different fragments of one name."""
    if not fragments:
        raise FusedBuildError("a fused-kernel library needs at least one kernel fragment")
    by_name: dict[str, str] = {}
    for fragment in fragments:
        name = op_name(fragment)
        if by_name.setdefault(name, fragment) != fragment:
            raise FusedBuildError(f"two different kernel fragments define the op name {name!r}; one library holds "
                                  "one op per name")
    return by_name


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


def build_library(fragments: Sequence[str]) -> Path:
    """The path of the verified library holding one op per fragment of ``fragments``, compiling it only if not
    cached (or not trusted). The same set of fragments, in any order, is the same library.

    Raises `FusedBuildError` (with the compiler's message) when it does not compile, `UnsafeCacheError` when the
    cache folder could be written by someone else.
    """
    compiler = find_compiler()
    folder = cache.trusted_folder()
    source = translation_unit(fragments)
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
