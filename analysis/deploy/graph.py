"""The whole plan of an exported package as one ONNX graph with ``If`` nodes (batch 1): a deployment needs one
session and no Python between segments.

Built from the package's segment graphs (each inlined once, its names prefixed, its weights in the main graph):
stage by stage, a jump predictor's target and the gates decide which exits are entered (an exit not entered gets a
confidence nothing passes), and at every kept side exit an ``If`` on "the confidence passes the threshold" either
answers (its logits' argmax, the exit's index) or holds the rest of the network in its ``else`` branch. Outputs:
``prediction`` and ``exit``, int64 ``[1]``. Batched input runs the segment runner instead, which drops the rows
that leave: a single graph cannot drop rows without running every later segment on the whole batch."""
from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np

__all__ = ["build_graph"]


class _Builder:
    """Inline segment models into graphs; every name made unique across the whole model."""

    def __init__(self, plan: dict, folder: Path) -> None:
        import onnx
        from onnx import compose

        self.onnx, self.plan, self.folder = onnx, plan, folder
        self.ids = itertools.count()
        self.initializers: list = []
        self.models: dict = {}
        for i, f in enumerate([*plan["stages"], *plan["heads"], *[g["file"] for g in plan["gates"]],
                               *([plan["jump"]["file"]] if plan["jump"] else [])]):
            self.models[f] = compose.add_prefix(onnx.load(str(folder / f)), f"m{i}_")
        first = self.models[plan["stages"][0]]
        self.opset, self.ir = list(first.opset_import), first.ir_version

    def name(self, what: str) -> str:
        return f"{what}_{next(self.ids)}"

    def inline(self, file: str, src: str) -> tuple[list, list[str]]:
        """The nodes of segment ``file`` reading value ``src``, and its output names."""
        g = self.models[file].graph
        # its weights as Constant nodes beside its nodes, so they live in the (sub)graph that runs them: an If whose
        # branch reads weights of the main graph takes each as an implicit input on every call (ORT: slow)
        weights = [self.onnx.helper.make_node("Constant", [], [t.name], value=t, name=self.name("w"))
                   for t in g.initializer]
        nodes = [self.onnx.helper.make_node("Identity", [src], [g.input[0].name], name=self.name("in"))]
        return weights + nodes + list(g.node), [o.name for o in g.output]

    def const(self, value, dtype) -> tuple[object, str]:
        out = self.name("c")
        t = self.onnx.numpy_helper.from_array(np.asarray(value, dtype=dtype), out)
        return self.onnx.helper.make_node("Constant", [], [out], value=t, name=self.name("const")), out

    def op(self, kind: str, inputs: list[str], **attrs) -> tuple[object, str]:
        out = self.name(kind.lower())
        return self.onnx.helper.make_node(kind, inputs, [out], name=self.name(kind), **attrs), out

    def branch(self, nodes: list, outputs: list[tuple[str, int, list]]):
        """A subgraph (no inputs; outer values visible) with typed ``outputs`` ``(name, elem_type, shape)``."""
        h = self.onnx.helper
        return h.make_graph(nodes, self.name("branch"), [], [h.make_tensor_value_info(n, t, s) for n, t, s in outputs])

    def if_(self, cond: str, then_nodes, then_out, else_nodes, else_out, types) -> tuple[object, list[str]]:
        """``If(cond)`` whose branches compute ``then_out`` / ``else_out`` (same ``types``: (elem_type, shape))."""
        outs = [self.name("if_out") for _ in types]
        node = self.onnx.helper.make_node(
            "If", [cond], outs, name=self.name("If"),
            then_branch=self.branch(then_nodes + self._rename(then_out, outs, "t"), [(f"{o}_t", *t) for o, t in
                                                                                     zip(outs, types)]),
            else_branch=self.branch(else_nodes + self._rename(else_out, outs, "e"), [(f"{o}_e", *t) for o, t in
                                                                                     zip(outs, types)]))
        return node, outs

    def _rename(self, srcs: list[str], outs: list[str], tag: str) -> list:
        return [self.onnx.helper.make_node("Identity", [s], [f"{o}_{tag}"], name=self.name("out"))
                for s, o in zip(srcs, outs)]


def _answer(b: _Builder, logits: str, exit_index: int) -> tuple[list, list[str]]:
    n1, pred = b.op("ArgMax", [logits], axis=1, keepdims=0)
    n2, ex = b.const([exit_index], np.int64)
    return [n1, n2], [pred, ex]


def _gates_at(b: _Builder, s: int, h: str, enter: dict) -> list:
    """The nodes of the gates after stage ``s`` (a gate an earlier decision already closed does not run);
    ``enter`` updated with their decisions."""
    from onnx import TensorProto

    nodes = []
    for g in b.plan["gates"]:
        e = int(g["exit"])
        if int(g["at"]) != s or not b.plan["kept"][e]:
            continue
        seg, (score,) = b.inline(g["file"], h)
        cut = -np.inf if g["cut"] is None else float(g["cut"])
        nc, c = b.const([cut], np.float32)
        ng, ok = b.op("GreaterOrEqual", [score, c])
        if e in enter:
            nf, no = b.const([False], np.bool_)
            node, (ok,) = b.if_(enter[e], seg + [nc, ng], [ok], [nf], [no], [(TensorProto.BOOL, [1])])
            nodes.append(node)
        else:
            nodes += seg + [nc, ng]
        enter[e] = ok
    return nodes


def _jump_at(b: _Builder, s: int, h: str, enter: dict, k: int) -> list:
    """The jump predictor after stage ``s``: exits ``s .. target - 1`` are not entered."""
    j = b.plan["jump"]
    if not j or int(j["at"]) != s:
        return []
    nodes, (target,) = b.inline(j["file"], h)
    for e in range(s, k - 1):
        nc, c = b.const([e], np.int64)
        nl, ok = b.op("LessOrEqual", [target, c])
        nodes += [nc, nl]
        if e in enter:
            na, ok = b.op("And", [enter[e], ok])
            nodes.append(na)
        enter[e] = ok
    return nodes


def _rest(b: _Builder, s: int, h: str, enter: dict) -> tuple[list, list[str]]:
    """Nodes from stage ``s`` on (input value ``h``) and their outputs (prediction, exit)."""
    from onnx import TensorProto

    plan, k = b.plan, len(b.plan["stages"])
    nodes, (h,) = b.inline(plan["stages"][s], h)
    enter = dict(enter)
    nodes += _jump_at(b, s, h, enter, k) + _gates_at(b, s, h, enter)
    if s == k - 1:
        head, (logits, _) = b.inline(plan["heads"][s], h)
        ans, outs = _answer(b, logits, s)
        return nodes + head + ans, outs
    lower, t = plan["rule"]["lower_is_confident"], plan["rule"]["thresholds"][s]
    if not plan["kept"][s] or t is None:  # removed, or nothing passes its threshold: never entered
        more, outs = _rest(b, s + 1, h, enter)
        return nodes + more, outs
    head, (logits, conf) = b.inline(plan["heads"][s], h)
    if s in enter:  # not entered: zero logits and a confidence nothing passes
        c = plan["model"]["num_classes"]
        nz, z = b.const(np.zeros((1, c)), np.float32)
        nn_, never = b.const([np.inf if lower else -np.inf], np.float64)
        node, (logits, conf) = b.if_(enter[s], head, [logits, conf], [nz, nn_], [z, never],
                                     [(TensorProto.FLOAT, [1, c]), (TensorProto.DOUBLE, [1])])
        head = [node]
    nt, tv = b.const([t], np.float64)
    np_, passes = b.op("Less" if lower else "Greater", [conf, tv])
    nodes += head + [nt, np_]
    ans, ans_out = _answer(b, logits, s)
    more, more_out = _rest(b, s + 1, h, enter)
    node, outs = b.if_(passes, ans, ans_out, more, more_out, [(TensorProto.INT64, [1]), (TensorProto.INT64, [1])])
    return nodes + [node], outs


def build_graph(plan: dict, folder: Path, name: str = "graph.onnx") -> str:
    """Write the plan's single graph to ``folder/name`` (checked by ONNX's checker); returns ``name``."""
    import onnx
    from onnx import TensorProto, helper

    b = _Builder(plan, Path(folder))
    nodes, (pred, ex) = _rest(b, 0, "x", {})
    nodes += [helper.make_node("Identity", [pred], ["prediction"], name="prediction"),
              helper.make_node("Identity", [ex], ["exit"], name="exit")]
    graph = helper.make_graph(nodes, "branchy_early_exit",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, plan["input"]["shape"])],
                              [helper.make_tensor_value_info("prediction", TensorProto.INT64, [1]),
                               helper.make_tensor_value_info("exit", TensorProto.INT64, [1])],
                              initializer=b.initializers)
    model = helper.make_model(graph, opset_imports=b.opset, ir_version=b.ir, producer_name="branchy export")
    onnx.checker.check_model(model, full_check=False)
    onnx.save_model(model, str(Path(folder) / name))
    return name
