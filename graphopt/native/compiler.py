"""Finding the C++ compiler and the flags fused kernels are built with.

Flags, and why:

* ``-O3 -march=native``: the update loop is vectorized for this CPU (a cached library is keyed by the CPU too,
  see `cpu_fingerprint`, so a cache shared between machines never hands one CPU another's instructions);
* ``-fno-math-errno``: without it gcc calls ``sqrtf`` per element to set errno, about 5x slower;
* ``-ffp-contract=off``: no fused multiply-add contraction. ``a * b + c`` is two roundings in the standard ONNX
  path (a Mul node, then an Add node); contracting it into one FMA rounds once, so fused and standard results
  would differ in the last bit. With contraction off the kernel does the float32 (or float64) operations the
  graph names, in its order, each IEEE-rounded, and agrees with the standard path exactly. gcc's default
  depends on the language mode and clang's is ``on``, so the flag is explicit. The cost is nil: the loop is
  bound by memory bandwidth, not by arithmetic. (No ``-ffast-math``, for the same reason.)
* ``-fPIC -shared -std=c++17 -fvisibility=hidden``: a shared library exporting only ``RegisterCustomOps``, so
  two loaded kernels never resolve each other's symbols.
"""

from __future__ import annotations

import functools
import os
import platform
import shlex
import shutil
import subprocess
from dataclasses import dataclass

from graphopt.native.errors import FusedBuildError

FLAGS = ("-O3", "-march=native", "-fno-math-errno", "-ffp-contract=off", "-fPIC", "-shared", "-std=c++17",
         "-fvisibility=hidden")
CANDIDATES = ("c++", "g++", "clang++")


@dataclass(frozen=True)
class Compiler:
    """A working C++ compiler: the command that runs it and what it says its version is."""

    command: tuple[str, ...]
    version: str

    def __str__(self) -> str:
        return f"{shlex.join(self.command)} ({self.version.splitlines()[0]})"


def find_compiler() -> Compiler:
    """The compiler named by ``$CXX`` if set (and only that one), else the first of c++, g++, clang++ on PATH.

    Raises `FusedBuildError` saying what was tried when none works.
    """
    return _find(os.environ.get("CXX", "").strip(), os.environ.get("PATH", ""))


@functools.lru_cache(maxsize=None)
def _find(cxx: str, path: str) -> Compiler:
    if cxx:
        compiler, problem = _probe(tuple(shlex.split(cxx)), path)
        if compiler is None:
            raise FusedBuildError(f"the C++ compiler named by CXX={cxx!r} does not work: {problem}")
        return compiler
    problems = []
    for name in CANDIDATES:
        compiler, problem = _probe((name,), path)
        if compiler is not None:
            return compiler
        problems.append(f"{name}: {problem}")
    raise FusedBuildError("no working C++ compiler found (set CXX to name one); tried " + "; ".join(problems))


def _probe(command: tuple[str, ...], path: str) -> tuple[Compiler | None, str]:
    if not command:
        return None, "empty command"
    executable = shutil.which(command[0], path=path)
    if executable is None:
        return None, "not found on PATH"
    try:
        done = subprocess.run([executable, *command[1:], "--version"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError) as exc:
        return None, str(exc)
    if done.returncode != 0:
        return None, f"'--version' exited with status {done.returncode}: {done.stderr.strip()[:200]}"
    return Compiler((executable, *command[1:]), done.stdout.strip()), ""


@functools.lru_cache(maxsize=None)
def cpu_fingerprint() -> str:
    """What ``-march=native`` depends on: the machine, the CPU model and its feature flags."""
    parts = [platform.machine(), platform.processor()]
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as cpuinfo:
            wanted = {"model name", "flags", "Features", "CPU part"}
            for line in cpuinfo:
                key, _, value = line.partition(":")
                if key.strip() in wanted:
                    parts.append(f"{key.strip()}={value.strip()}")
                    wanted.discard(key.strip())
    except OSError:
        pass
    return "\n".join(parts)
