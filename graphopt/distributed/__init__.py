"""Data-parallel training over an existing engine: MPI (mpi4py, the default) or torch.distributed.

    comm = graphopt.distributed.init()          # the engine from the launcher (mpiexec / torchrun)
    trainer = graphopt.Trainer(model, loss, optim.SGD(lr=0.1, momentum=0.9), communicator=comm)
    trainer.step(shard_of(x, comm), labels=shard_of(y, comm))

Modules: `communicator` (the interface, `CommunicationError` and the one-process world), `mpi` and
`torch_engine` (the engines, imported lazily), `watchdog` (MPI's per-operation timeout), `launch`
(choosing one), `gradients` (averaging the flat gradient buffers), `data_parallel` (the optimizer
facade), `training` (the Trainer's data-parallel step), `zero` (ZeRO-1: optimizer state sharded
over the processes, ``shard_state=True``), `checkpoint` (save and resume a run).
"""

from graphopt.distributed.checkpoint import load_checkpoint, save_checkpoint
from graphopt.distributed.communicator import CommunicationError, Communicator, SingleProcess
from graphopt.distributed.data_parallel import DataParallel, broadcast_parameters
from graphopt.distributed.gradients import average_gradients
from graphopt.distributed.launch import detect, init
from graphopt.distributed.training import shard
from graphopt.distributed.zero import ShardedState, state_bytes

__all__ = ["CommunicationError", "Communicator", "DataParallel", "ShardedState", "SingleProcess", "average_gradients",
           "broadcast_parameters", "detect", "init", "load_checkpoint", "save_checkpoint", "shard", "state_bytes"]
