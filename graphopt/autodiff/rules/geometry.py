"""The geometry of sliding-window operators (Conv, MaxPool, AveragePool).

For an input of spatial size ``n``, kernel ``k``, stride ``s``, dilation ``d`` and
pads ``(b, a)``, the output size is ``o = (n + b + a - d * (k - 1) - 1) // s + 1``.
Backward passes are ConvTransposes of the output gradient, which give back ``n``
when their ``output_padding`` is the remainder that floor dropped.
"""

from __future__ import annotations

from dataclasses import dataclass

import onnx_ir as ir

from graphopt.autodiff.rules.registry import attribute, static_dims


@dataclass(frozen=True)
class Window:
    spatial: list[int]
    kernel: list[int]
    strides: list[int]
    dilations: list[int]
    begins: list[int]
    ends: list[int]

    @property
    def pads(self) -> list[int]:
        return self.begins + self.ends

    @property
    def outputs(self) -> list[int]:
        return [(n + b + a - d * (k - 1) - 1) // s + 1 for n, k, s, d, b, a in self._each()]

    @property
    def output_padding(self) -> list[int]:
        """What a ConvTranspose of the output by this window must add to return the input's size."""
        return [n + b + a - ((o - 1) * s + (k - 1) * d + 1)
                for (n, k, s, d, b, a), o in zip(self._each(), self.outputs)]

    def attributes(self) -> dict:
        return {"strides": self.strides, "dilations": self.dilations, "pads": self.pads}

    def _each(self):
        return zip(self.spatial, self.kernel, self.strides, self.dilations, self.begins, self.ends)


def window(node: ir.Node, kernel: list[int]) -> Window:
    """The window of ``node`` over its first input, with ``auto_pad`` resolved to explicit pads."""
    spatial = static_dims(node.inputs[0], node, "input", start=2)
    rank = len(spatial)
    strides = list(attribute(node, "strides", [1] * rank))
    dilations = list(attribute(node, "dilations", [1] * rank))
    auto_pad = attribute(node, "auto_pad", "NOTSET")
    if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        totals = [max(0, (-(-n // s) - 1) * s + (k - 1) * d + 1 - n)
                  for n, k, s, d in zip(spatial, kernel, strides, dilations)]
        small = [t // 2 for t in totals]
        large = [t - t // 2 for t in totals]
        begins, ends = (small, large) if auto_pad == "SAME_UPPER" else (large, small)
    elif auto_pad == "VALID":
        begins, ends = [0] * rank, [0] * rank
    else:
        pads = list(attribute(node, "pads", [0] * (2 * rank)))
        begins, ends = pads[:rank], pads[rank:]
    if attribute(node, "ceil_mode", 0):
        raise NotImplementedError(f"{node.op_type} node {node.name!r}: no gradient for ceil_mode=1")
    return Window(spatial, list(kernel), strides, dilations, begins, ends)
