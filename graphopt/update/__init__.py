"""Compiling an update: the update model of every param group (`model`, what `export` writes),
the chunked form the runtime runs over flat buffers (`chunked`), and the proof of which outputs
may be written over their inputs (`inplace`)."""

from graphopt.update.model import GroupSpec, ParamSpec, build_update

__all__ = ["GroupSpec", "ParamSpec", "build_update"]
