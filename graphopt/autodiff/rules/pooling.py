"""Rules of the pooling operators: ``g`` is the gradient of the pooled output ``y``."""

from __future__ import annotations

import numpy as np

from graphopt.autodiff.rules.geometry import window
from graphopt.autodiff.rules.registry import attribute, rule


@rule("MaxPool")
def _max_pool(node, grads, e):
    """``dx = scatter-add of g`` onto the flat positions in ``Indices`` (overlapping windows add up).

    ``Indices`` is the node's second output, which `graphopt.autodiff.reverse` adds
    where the model leaves it out.
    """
    x, g = node.inputs[0], grads[0]
    if attribute(node, "storage_order", 0):
        raise NotImplementedError(f"MaxPool node {node.name!r}: no gradient for storage_order=1")
    size = e.op("ReduceProd", [e.shape(x)], {"keepdims": 1})
    positions = e.op("Reshape", [node.outputs[1], e.ints([-1, 1])])
    flat = e.op("ScatterND", [e.zeros(size, x), positions, e.op("Reshape", [g, e.ints([-1])])], {"reduction": "add"})
    return [e.reshape_like(flat, x)]


@rule("AveragePool")
def _average_pool(node, grads, e):
    """``dx = conv_transpose(g / count, ones)`` per channel, where ``count`` is the kernel's size,
    or with ``count_include_pad=0`` the number of input elements each window covered."""
    x, g = node.inputs[0], grads[0]
    kernel = list(attribute(node, "kernel_shape"))
    win = window(node, kernel)

    def ones(dims):
        return e.constant(np.ones([1, 1, *dims], x.dtype.numpy()))

    count = e.scalar_like(float(np.prod(kernel)), x)
    if not attribute(node, "count_include_pad", 0) and any(win.pads):
        share = e.op("AveragePool", [ones(win.spatial)], {**win.attributes(), "kernel_shape": kernel,
                                                          "count_include_pad": 1})
        count = e.op("Mul", [share, count])  # [1, 1, *outputs]
    per_channel = e.op("Reshape", [e.op("Div", [g, count]), e.ints([-1, 1, *win.outputs])])
    spread = e.op("ConvTranspose", [per_channel, ones(kernel)],
                  {**win.attributes(), "output_padding": win.output_padding})
    return [e.reshape_like(spread, x)]


@rule("GlobalAveragePool")
def _global_average_pool(node, grads, e):
    """``dx = expand(g) / (number of spatial positions)``."""
    x = node.inputs[0]
    positions = e.cast_like(e.op("ReduceProd", [e.shape(x, 2)], {"keepdims": 0}), x)
    return [e.op("Div", [e.op("Expand", [grads[0], e.shape(x)]), positions])]
