"""`DataParallel`: an optimizer whose ``step`` first averages the gradients over the processes.

    comm = graphopt.distributed.init()                       # mpiexec / torchrun / alone
    opt = graphopt.distributed.DataParallel(optim.AdamW(params, lr=1e-3), comm)
    ...                                                      # each process: its shard's gradients
    opt.step()                                               # averaged, then the same update everywhere

At construction every parameter is broadcast from rank 0, so all processes start equal; each
step averages the flat gradient buffers (`average_gradients`) and runs the wrapped optimizer's
own step on identical gradients, so parameters and state stay identical on every process.
Everything else (``zero_grad``, ``param_groups`` ...) is the wrapped optimizer's.

``shard_state=True`` (ZeRO-1, `graphopt.distributed.zero`): each process keeps and updates only its
shard of the optimizer state; ``step`` reduce-scatters the gradients, updates the shard and allgathers
the parameters. ``state_dict`` / ``load_state_dict`` / ``state`` then give and take the consolidated
state (collective: every process calls them) and ``state_bytes`` the bytes of state this process holds.
"""

from __future__ import annotations

from typing import Any, Callable

from graphopt.distributed.communicator import Communicator
from graphopt.distributed.gradients import BUCKET_BYTES, average_gradients, flat_buffers
from graphopt.distributed.launch import init
from graphopt.distributed.zero import ShardedState, check_shardable, state_bytes


class DataParallel:
    """``optimizer`` with gradients averaged over ``communicator``'s processes before each step
    (default communicator: `graphopt.distributed.init`, the launcher's engine)."""

    def __init__(self, optimizer, communicator: Communicator | None = None, *, bucket_bytes: int = BUCKET_BYTES,
                 shard_state: bool = False):
        self.optimizer = optimizer
        self.communicator = communicator if communicator is not None else init()
        self.bucket_bytes = bucket_bytes
        self._zero = None
        if shard_state:
            check_shardable(optimizer)  # before the broadcast: a refusal raises on every process alike
        broadcast_parameters(optimizer, self.communicator)
        if shard_state:
            self._zero = ShardedState(optimizer, self.communicator, bucket_bytes)

    def average_gradients(self, weight: float | None = None) -> None:
        """Average the current gradients (weighted by ``weight``, see `average_gradients`) without stepping."""
        average_gradients(self.optimizer, self.communicator, weight, self.bucket_bytes)

    def step(self, closure: Callable[[], Any] | None = None, *, weight: float | None = None) -> Any:
        """``closure()`` (forward and backward on this process's shard), the gradients averaged over
        the processes, then the wrapped optimizer's step; returns the closure's value."""
        loss = closure() if closure is not None else None
        if self._zero is not None:
            self._zero.step(weight)
        else:
            self.average_gradients(weight)
            self.optimizer.step()
        return loss

    def state_dict(self) -> dict[str, Any]:
        """The wrapped optimizer's ``state_dict()``; sharded: the consolidated one (collective)."""
        return (self._zero if self._zero is not None else self.optimizer).state_dict()

    def load_state_dict(self, state_dict) -> None:
        """The wrapped optimizer's ``load_state_dict``; sharded: each process keeps its slice."""
        (self._zero if self._zero is not None else self.optimizer).load_state_dict(state_dict)

    @property
    def state(self) -> dict:
        """The wrapped optimizer's ``state``; sharded: the consolidated one (collective)."""
        return (self._zero if self._zero is not None else self.optimizer).state

    @property
    def state_bytes(self) -> int:
        """Bytes of optimizer state this process holds (`graphopt.distributed.zero.state_bytes`)."""
        return state_bytes(self)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.optimizer, name)

    def __repr__(self) -> str:
        return f"DataParallel({self.optimizer!r}, {self.communicator!r})"


def broadcast_parameters(optimizer, communicator: Communicator, root: int = 0) -> None:
    """Every parameter of ``optimizer`` set to ``root``'s values (one broadcast per flat buffer)."""
    for flat in flat_buffers(optimizer):
        communicator.broadcast(flat.data, root)
