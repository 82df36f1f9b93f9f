"""The input and output names of update and training-step models: one contract, one place.

For a parameter ``p`` of param group ``g``:

=========================  ======================================================
``p``                      the parameter (input); ``p.new`` the updated one (output)
``p.grad``                 its gradient (input)
``p.<slot>``               optimizer state, e.g. ``p.exp_avg`` (input); ``p.<slot>.new`` (output)
``p.step``                 updates ``p`` had so far, float64 scalar (input); ``p.step.new`` (output)
``p.has_grad``             whether ``p`` is updated this step, bool scalar (input of masked update graphs)
``g.<hyper>``              a hyperparameter, float64 scalar (input), e.g. ``group0.lr``
=========================  ======================================================
"""

NEW = ".new"


def grad(param: str) -> str:
    return f"{param}.grad"


def state(param: str, slot: str) -> str:
    return f"{param}.{slot}"


def step(param: str) -> str:
    return f"{param}.step"


def has_grad(param: str) -> str:
    return f"{param}.has_grad"


def hyper(group: str, name: str) -> str:
    return f"{group}.{name}"


def new(name: str) -> str:
    return name + NEW


def group(index: int) -> str:
    return f"group{index}"
