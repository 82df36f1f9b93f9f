"""LSTM, GRU and RNN nodes: their unrolled form (`graphopt.autodiff.recurrent`) against
onnxruntime's own kernels, their gradients against float64 central differences and
torch.autograd (torch-exported LSTM and GRU classifiers are in the zoo, tests/test_zoo.py).

onnxruntime implements only ``layout`` 0; the spec defines layout 1 as the same computation
on transposed X, initial states and outputs, so the reference for layout 1 is the layout-0
kernel between Transposes."""

from __future__ import annotations


import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from graphopt.autodiff import add_gradients
from graphopt.autodiff.recurrent import expand_recurrent

GATES = {"LSTM": 4, "GRU": 3, "RNN": 1}
SEQ, BATCH, INPUT, HIDDEN = 4, 3, 2, 3
LENGTHS = np.array([SEQ, 1, SEQ - 1], np.int32)  # unequal, one row shorter than all the others
FLOATS = ("X", "W", "R", "B", "h0", "c0")


def _outputs(kind):
    return ["Y", "Y_h", "Y_c"] if kind == "LSTM" else ["Y", "Y_h"]


def _feeds(kind, direction="forward", layout=0, lengths=False, initial=False, bias=True, dtype=np.float64, seed=0):
    """Random X, W, R (and B, sequence_lens, initial_h / initial_c) for one node."""
    rng = np.random.default_rng(seed)
    dirs, gates = 2 if direction == "bidirectional" else 1, GATES[kind]
    state = (dirs, BATCH, HIDDEN) if layout == 0 else (BATCH, dirs, HIDDEN)
    feeds = {"X": rng.standard_normal((SEQ, BATCH, INPUT) if layout == 0 else (BATCH, SEQ, INPUT)),
             "W": 0.6 * rng.standard_normal((dirs, gates * HIDDEN, INPUT)),
             "R": 0.6 * rng.standard_normal((dirs, gates * HIDDEN, HIDDEN))}
    if bias:
        feeds["B"] = 0.5 * rng.standard_normal((dirs, 2 * gates * HIDDEN))
    if lengths:
        feeds["L"] = LENGTHS
    if initial:
        feeds["h0"] = rng.standard_normal(state)
        if kind == "LSTM":
            feeds["c0"] = rng.standard_normal(state)
    return {k: v if k == "L" else v.astype(dtype) for k, v in feeds.items()}


def _model(kind, feeds, attrs, layout=0, *, kernel=False, loss_on=None) -> onnx.ModelProto:
    """One recurrent node over graph inputs ``feeds``. ``kernel``: a layout-1 node as the
    layout-0 kernel between Transposes. ``loss_on``: the output is ``loss = sum_o sum(o * R_o)``
    over those outputs, for fixed random ``R_o``."""
    dtype = feeds["X"].dtype
    elem = helper.np_dtype_to_tensor_dtype(dtype)
    names = [n if n in feeds else "" for n in ("X", "W", "R", "B", "L", "h0", "c0")]
    while not names[-1]:
        names.pop()
    outputs, nodes = _outputs(kind), []
    node_outputs = outputs
    if kernel and layout == 1:
        for name in ("X", "h0", "c0"):
            if name in feeds:
                nodes.append(helper.make_node("Transpose", [name], [f"{name}.t"], perm=[1, 0, 2]))
                names[names.index(name)] = f"{name}.t"
        node_outputs = [f"{o}.t" for o in outputs]
        nodes.append(helper.make_node(kind, names, node_outputs, name="rnn", hidden_size=HIDDEN, layout=0, **attrs))
        nodes += [helper.make_node("Transpose", [f"{o}.t"], [o], perm=[2, 0, 1, 3] if o == "Y" else [1, 0, 2])
                  for o in outputs]
    else:
        nodes.append(helper.make_node(kind, names, outputs, name="rnn", hidden_size=HIDDEN, layout=layout, **attrs))
    inputs = [helper.make_tensor_value_info(k, TensorProto.INT32 if k == "L" else elem, v.shape)
              for k, v in feeds.items()]
    initializers, graph_outputs = [], [helper.make_tensor_value_info(o, elem, None) for o in outputs]
    if loss_on:
        shapes = _output_shapes(kind, feeds, layout)
        rng = np.random.default_rng(7)
        for o in loss_on:
            initializers.append(numpy_helper.from_array(rng.standard_normal(shapes[o]).astype(dtype), f"R_{o}"))
            nodes += [helper.make_node("Mul", [o, f"R_{o}"], [f"{o}.w"]),
                      helper.make_node("ReduceSum", [f"{o}.w"], [f"{o}.s"], keepdims=0)]
        nodes.append(helper.make_node("Sum", [f"{o}.s" for o in loss_on], ["loss"]))
        graph_outputs = [helper.make_tensor_value_info("loss", elem, [])]
    graph = helper.make_graph(nodes, "g", inputs, graph_outputs, initializer=initializers)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)], ir_version=10)


def _output_shapes(kind, feeds, layout):
    dirs = feeds["W"].shape[0]
    if layout == 0:
        return {"Y": (SEQ, dirs, BATCH, HIDDEN), "Y_h": (dirs, BATCH, HIDDEN), "Y_c": (dirs, BATCH, HIDDEN)}
    return {"Y": (BATCH, SEQ, dirs, HIDDEN), "Y_h": (BATCH, dirs, HIDDEN), "Y_c": (BATCH, dirs, HIDDEN)}


def _expanded(model: onnx.ModelProto) -> onnx.ModelProto:
    """``model`` with every recurrent node unrolled."""
    ir_model = ir.serde.deserialize_model(onnx.shape_inference.infer_shapes(model))
    assert expand_recurrent(ir_model)
    expanded = ir.serde.serialize_model(ir_model)
    assert not {n.op_type for n in expanded.graph.node} & set(GATES)
    return expanded


def _session(model: onnx.ModelProto) -> ort.InferenceSession:
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


# (kind, attributes): the activations torch uses, and GRU's two candidate formulas
VARIANTS = [("LSTM", {}), ("GRU", {"linear_before_reset": 1}), ("GRU", {"linear_before_reset": 0}), ("RNN", {}),
            ("RNN", {"activations": ["Relu"]})]


@pytest.mark.parametrize("kind,attrs", VARIANTS, ids=lambda v: str(v))
@pytest.mark.parametrize("direction", ["forward", "reverse", "bidirectional"])
@pytest.mark.parametrize("layout", [0, 1])
@pytest.mark.parametrize("lengths,initial", [(False, False), (True, True), (True, False), (False, True)])
def test_unrolled_outputs_equal_onnxruntime_kernels(kind, attrs, direction, layout, lengths, initial):
    feeds = _feeds(kind, direction, layout, lengths, initial, dtype=np.float32)
    attrs = {"direction": direction, **attrs}
    if attrs.get("activations") and direction == "bidirectional":
        attrs["activations"] = attrs["activations"] * 2
    expected = _session(_model(kind, feeds, attrs, layout, kernel=True)).run(None, feeds)
    actual = _session(_expanded(_model(kind, feeds, attrs, layout))).run(None, feeds)
    for name, a, b in zip(_outputs(kind), actual, expected):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=2e-6, err_msg=name)
    if lengths:  # the spec's padding: Y is zero past each row's length
        y = expected[0] if layout == 0 else expected[0].transpose(1, 2, 0, 3)
        assert np.all(y[1:, :, 1] == 0) and np.all(y[SEQ - 1:, :, 2] == 0)


def _numeric_gradients(model: onnx.ModelProto, feeds: dict, wrt, eps=1e-6) -> dict:
    """Central differences of the scalar output of ``model``, run by onnxruntime in float64."""
    session = _session(model)
    grads = {}
    for name in wrt:
        grad = np.zeros_like(feeds[name])
        for index in np.ndindex(grad.shape):
            values = []
            for sign in (1, -1):
                shifted = dict(feeds, **{name: feeds[name].copy()})
                shifted[name][index] += sign * eps
                values.append(session.run(None, shifted)[0])
            grad[index] = (values[0] - values[1]) / (2 * eps)
        grads[name] = grad
    return grads


GRADIENT_CASES = [  # kind, attributes, direction, layout, lengths, initial, bias, outputs reaching the loss
    ("LSTM", {}, "forward", 0, False, False, True, ["Y"]),
    ("LSTM", {}, "bidirectional", 0, True, True, True, ["Y", "Y_h", "Y_c"]),
    ("LSTM", {}, "reverse", 1, True, True, True, ["Y_c"]),
    ("LSTM", {}, "forward", 1, False, True, False, ["Y_h"]),
    ("GRU", {"linear_before_reset": 1}, "bidirectional", 0, True, True, True, ["Y", "Y_h"]),
    ("GRU", {"linear_before_reset": 0}, "reverse", 1, False, True, True, ["Y_h"]),
    ("GRU", {"linear_before_reset": 0}, "forward", 0, True, False, False, ["Y"]),
    ("RNN", {}, "bidirectional", 0, True, True, True, ["Y", "Y_h"]),
    ("RNN", {"activations": ["Relu"]}, "forward", 1, False, True, True, ["Y"]),
]


@pytest.mark.parametrize("kind,attrs,direction,layout,lengths,initial,bias,loss_on", GRADIENT_CASES)
def test_gradients_match_central_differences(kind, attrs, direction, layout, lengths, initial, bias, loss_on):
    """onnxruntime runs LSTM, GRU and RNN in float32 only (onnx.reference ignores sequence_lens),
    so the loss is differenced through the unrolled form, which the test above ties to the
    float32 kernels; the torch test below checks the same gradients against an independent code."""
    feeds = _feeds(kind, direction, layout, lengths, initial, bias)
    attrs = {"direction": direction, **attrs}
    _check_gradients(_model(kind, feeds, attrs, layout, loss_on=loss_on), feeds,
                     _model(kind, feeds, attrs, layout, kernel=True, loss_on=loss_on))


def _check_gradients(model, feeds, reference):
    wrt = [k for k in FLOATS if k in feeds]
    grad_model = add_gradients(model, "loss", wrt)
    results = dict(zip([o.name for o in grad_model.graph.output], _session(grad_model).run(None, feeds)))
    numeric = _numeric_gradients(_expanded(reference), feeds, wrt)
    for name in wrt:
        np.testing.assert_allclose(results[f"{name}.grad"], numeric[name], rtol=1e-5, atol=1e-7,
                                   err_msg=f"gradient of {name}")


def test_unnamed_outputs_and_hidden_size_from_r():
    """Y and Y_h left out (empty names), no hidden_size attribute: the size comes from R."""
    feeds = _feeds("LSTM", "bidirectional", initial=True, lengths=True)
    model = _model("LSTM", feeds, {"direction": "bidirectional"}, loss_on=["Y_c"])
    node = model.graph.node[0]
    node.output[:2] = ["", ""]
    del node.attribute[[a.name for a in node.attribute].index("hidden_size")]
    del model.graph.output[:]
    model.graph.output.append(helper.make_tensor_value_info("loss", TensorProto.DOUBLE, []))
    _check_gradients(model, feeds, model)


def test_recurrent_node_off_the_differentiated_path_keeps_its_kernel():
    feeds = _feeds("LSTM")
    model = _model("LSTM", feeds, {}, loss_on=["Y_h"])
    nodes = {n.op_type for n in add_gradients(model, "loss", ["R_Y_h"]).graph.node}
    assert "LSTM" in nodes and "MatMul" not in nodes


@pytest.mark.parametrize("attrs,inputs,what", [
    ({"clip": 1.0}, 0, "clip"),
    ({"input_forget": 1}, 0, "input_forget"),
    ({"activations": ["HardSigmoid", "Tanh", "Tanh"]}, 0, "HardSigmoid"),
    ({"activations": ["Sigmoid", "Tanh", "Tanh"], "activation_alpha": [0.5]}, 0, "activation_alpha"),
    ({}, 1, "peephole"),
])
def test_unsupported_attributes_raise_naming_the_node(attrs, inputs, what):
    model = _model("LSTM", _feeds("LSTM", initial=True), attrs, loss_on=["Y"])
    if inputs:  # P, the 8th input, after X W R B sequence_lens initial_h initial_c
        model.graph.node[0].input.append("P")
        model.graph.input.append(helper.make_tensor_value_info("P", TensorProto.DOUBLE, [1, 3 * HIDDEN]))
    with pytest.raises(NotImplementedError, match=f"LSTM node 'rnn'.*{what}"):
        add_gradients(model, "loss", ["W"])


def test_dynamic_sequence_length_raises_naming_the_node():
    feeds = _feeds("GRU")
    model = _model("GRU", feeds, {}, loss_on=["Y_h"])
    model.graph.input[0].type.tensor_type.shape.dim[0].dim_param = "time"
    with pytest.raises(NotImplementedError, match="GRU node 'rnn'.*sequence length.*static"):
        add_gradients(model, "loss", ["W"])


# torch: gate order ifgo (LSTM), rzn (GRU); ONNX: iofc, zrh. Chunks of ONNX's order, by torch's index.
TORCH_ORDER = {"LSTM": [0, 3, 1, 2], "GRU": [1, 0, 2], "RNN": [0]}


def _onnx_gates(kind, tensor: np.ndarray) -> np.ndarray:
    """A torch ``[G*hidden, ...]`` weight, bias or gradient in ONNX's gate order."""
    chunks = np.split(tensor, GATES[kind], axis=0)
    return np.concatenate([chunks[i] for i in TORCH_ORDER[kind]], axis=0)


def _onnx_weights(kind, torch_weights: dict) -> dict:
    """W, R and B of ONNX from torch's per-direction weight_ih, weight_hh, bias_ih, bias_hh (or their gradients)."""
    def stacked(name):
        return np.stack([_onnx_gates(kind, w) for w in torch_weights[name]])
    return {"W": stacked("weight_ih"), "R": stacked("weight_hh"),
            "B": np.concatenate([stacked("bias_ih"), stacked("bias_hh")], axis=1)}


@pytest.mark.parametrize("kind,bidirectional,batch_first,initial,lengths,nonlinearity", [
    ("LSTM", False, False, False, False, None),
    ("LSTM", True, True, True, False, None),
    ("LSTM", True, False, True, True, None),
    ("GRU", True, False, True, False, None),
    ("GRU", False, True, False, True, None),
    ("RNN", True, True, True, False, "relu"),
    ("RNN", False, False, True, True, "tanh"),
])
def test_gradients_match_torch(kind, bidirectional, batch_first, initial, lengths, nonlinearity):
    """nn.LSTM / nn.GRU / nn.RNN in float64 against the ONNX node with the converted weights;
    ``sequence_lens`` against torch's packed sequences."""
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    extra = {"nonlinearity": nonlinearity} if nonlinearity else {}
    net = getattr(torch.nn, kind)(INPUT, HIDDEN, bidirectional=bidirectional, batch_first=batch_first,
                                  **extra).double()
    layout, dirs = int(batch_first), 2 if bidirectional else 1
    feeds = _feeds(kind, "bidirectional" if bidirectional else "forward", layout, lengths, initial)
    suffixes = ["", "_reverse"][:dirs]
    weights = {p: [getattr(net, f"{p}_l0{s}") for s in suffixes]
               for p in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")}
    feeds.update(_onnx_weights(kind, {p: [w.detach().numpy() for w in ws] for p, ws in weights.items()}))
    attrs = {"direction": "bidirectional" if bidirectional else "forward"}
    if kind == "GRU":
        attrs["linear_before_reset"] = 1
    if nonlinearity:
        attrs["activations"] = [nonlinearity.capitalize()] * dirs
    loss_on = _outputs(kind)
    model = _model(kind, feeds, attrs, layout, loss_on=loss_on)
    wrt = [k for k in FLOATS if k in feeds]
    grad_model = add_gradients(model, "loss", wrt)
    results = dict(zip([o.name for o in grad_model.graph.output], _session(grad_model).run(None, feeds)))

    projections = {t.name[2:]: numpy_helper.to_array(t) for t in model.graph.initializer}
    x = torch.tensor(feeds["X"], requires_grad=True)
    states = [torch.tensor(feeds[k] if layout == 0 else feeds[k].transpose(1, 0, 2), requires_grad=True)
              for k in ("h0", "c0") if k in feeds]
    hx = None if not states else (tuple(states) if kind == "LSTM" else states[0])
    packed = x
    if lengths:
        packed = torch.nn.utils.rnn.pack_padded_sequence(x, torch.tensor(LENGTHS.astype(np.int64)),
                                                         batch_first=batch_first, enforce_sorted=False)
    y, h = net(packed, hx)
    if lengths:
        y, _ = torch.nn.utils.rnn.pad_packed_sequence(y, batch_first=batch_first, total_length=SEQ)
    h, c = h if kind == "LSTM" else (h, None)
    y = y.reshape(*y.shape[:2], dirs, HIDDEN)  # [seq, batch, dirs, hidden], or [batch, seq, ...] batch first
    y = y.permute(0, 2, 1, 3) if layout == 0 else y
    outputs = {"Y": y, "Y_h": h if layout == 0 else h.transpose(0, 1)}
    if c is not None:
        outputs["Y_c"] = c if layout == 0 else c.transpose(0, 1)
    sum(torch.sum(outputs[o] * torch.tensor(projections[o])) for o in loss_on).backward()

    expected = {"X": x.grad.numpy(),
                **_onnx_weights(kind, {p: [w.grad.numpy() for w in ws] for p, ws in weights.items()})}
    for k, state in zip(("h0", "c0"), states):
        expected[k] = state.grad.numpy() if layout == 0 else state.grad.numpy().transpose(1, 0, 2)
    for name in wrt:
        np.testing.assert_allclose(results[f"{name}.grad"], expected[name], rtol=1e-7, atol=1e-9,
                                   err_msg=f"gradient of {name}")
