"""`init`: the communicator of this process, its engine chosen by argument or from the launcher.

``mpiexec`` / ``mpirun`` set ``PMI_RANK`` (MPICH, Intel MPI), ``OMPI_COMM_WORLD_RANK`` (Open MPI) or
``PMIX_RANK``; ``torchrun`` sets ``RANK``, ``WORLD_SIZE`` and ``MASTER_ADDR``. Without either, the
process is a world of one (`SingleProcess`), so the same script runs alone unchanged.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from graphopt.distributed.communicator import Communicator, SingleProcess, checked_timeout

ENGINES = ("mpi", "torch", "single")
MPI_VARIABLES = ("PMI_RANK", "OMPI_COMM_WORLD_RANK", "PMIX_RANK", "MPI_LOCALRANKID")
TORCH_VARIABLES = ("RANK", "WORLD_SIZE", "MASTER_ADDR")


def detect(environ: Mapping[str, str] | None = None) -> str:
    """The engine the launcher of this process implies: ``"mpi"``, ``"torch"`` or ``"single"``."""
    environ = os.environ if environ is None else environ
    if any(name in environ for name in MPI_VARIABLES):
        return "mpi"
    if all(name in environ for name in TORCH_VARIABLES):
        return "torch"
    return "single"


def init(engine: str | None = None, **options) -> Communicator:
    """This process's communicator: ``engine`` ``"mpi"`` (mpi4py), ``"torch"`` (torch.distributed,
    ``options`` such as ``backend="gloo"``) or ``"single"``; default: `detect`.

    ``timeout=seconds`` (every engine; default `communicator.TIMEOUT`, 600 s): how long a collective
    may wait for its peers. MPI: the watchdog then aborts the job (None: no watchdog); torch: gloo's
    own timeout makes the survivors raise `CommunicationError`; one process: ignored."""
    engine = detect() if engine is None else engine
    if engine == "mpi":
        from graphopt.distributed.mpi import MPI
        return MPI(**options)
    if engine == "torch":
        from graphopt.distributed.torch_engine import TorchDistributed
        return TorchDistributed(**options)
    if engine == "single" and set(options) <= {"timeout"}:
        checked_timeout(options.get("timeout"), "graphopt.distributed.init")
        return SingleProcess()
    if engine == "single":
        raise TypeError(f"graphopt.distributed.init: the single-process engine takes no options but timeout, "
                        f"got {sorted(options)}")
    raise ValueError(f"graphopt.distributed.init: engine must be one of {ENGINES}, got {engine!r}")
