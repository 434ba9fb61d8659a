"""Accuracy-aware int8: which quantized ops cost the accuracy, and the fewest of them returned to float that
bring a program within a tolerance (the accuracy-driven tuning of Intel Neural Compressor and OpenVINO NNCF).

The ops are the convolutions and linears whose inputs the quantizer quantized, found in the converted graph
that `deploy.quantize.calibrated_graph` returns, whose weights are still float behind quantize / dequantize
pairs. An op returns to float by taking its input and its weight from before their pairs: inductor then
finds no int8 pattern there and runs a float op (bfloat16 under the autocast of `int8-bf16`), while the
pairs that feed the other ops stay.

Sensitivity is measured on calibration images with each op alone left in float: how much closer to the
float model's logits that brings the quantized graph's. The search (`fallback_search`) returns the 1, 2,
4, ... most sensitive ops to float until a program is within the tolerance, then bisects between the last
count that was not and the first that was, within a budget of trials.
"""
import copy
import functools
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Tuple

import torch
import torch.fx as fx
import torch.nn as nn

__all__ = ['fallback_search', 'leave_in_float', 'op_labels', 'quantized_ops', 'sensitivities']

# the ops whose inputs PT2E quantizes for the x86 kernels: the rest of the graph is float already
_COMPUTING = (torch.ops.aten.conv2d.default, torch.ops.aten.linear.default)


def _op(node: object) -> str:
    """The qualified name of the op that `node` calls ('quantized_decomposed::quantize_per_tensor'), or ''."""
    schema = getattr(getattr(node, 'target', None), '_schema', None)
    return schema.name if isinstance(node, fx.Node) and node.op == 'call_function' and schema is not None else ''


def _dequantized(arg: object) -> Optional[fx.Node]:
    """The float value behind `arg` when `arg` is a dequantize of a quantize of it, else None."""
    if _op(arg).startswith('quantized_decomposed::dequantize'):
        source = arg.args[0]
        if _op(source).startswith('quantized_decomposed::quantize'):
            return source.args[0]
    return None


def quantized_ops(graph: fx.GraphModule) -> List[str]:
    """The names of the graph's nodes that the int8 kernels run: convolutions and linears whose input and
    weight are both quantized, in graph order."""
    return [n.name for n in graph.graph.nodes if n.op == 'call_function' and n.target in _COMPUTING
            and all(_dequantized(a) is not None for a in n.args[:2])]


def op_labels(graph: fx.GraphModule, names: Iterable[str]) -> List[str]:
    """A reader's name for each op of `names`: the module it came from (where the export recorded it) and
    the node, e.g. 'stages.2.blocks.0.mlp.fc1 (conv2d_41)'."""
    nodes = {n.name: n for n in graph.graph.nodes}
    labels = []
    for name in names:
        stack = nodes[name].meta.get('nn_module_stack') or {}
        module = next(reversed(stack.values()))[0] if stack else ''
        labels.append(f'{module} ({name})' if module else name)
    return labels


def leave_in_float(graph: fx.GraphModule, names: Iterable[str]) -> fx.GraphModule:
    """`graph`, changed in place, with the ops `names` taking their input and weight in float (see the
    module docstring); the pairs no op uses any more are removed."""
    names = set(names)
    for node in graph.graph.nodes:
        if node.name in names:
            for arg in node.args[:2]:
                source = _dequantized(arg)
                if source is not None:
                    node.replace_input_with(arg, source)
    graph.graph.eliminate_dead_code()
    graph.recompile()
    return graph


def _weight(arg: fx.Node, graph: fx.GraphModule) -> Optional[torch.Tensor]:
    """The value of the dequantize of a quantize `arg` when both take only the graph's tensors and constants
    (a weight's pair), else None."""
    quantize = arg.args[0]
    inputs = [*quantize.args, *quantize.kwargs.values(), *arg.args[1:], *arg.kwargs.values()]
    if any(isinstance(a, fx.Node) and a.op != 'get_attr' for a in inputs):
        return None

    def value(a: object) -> object:
        return functools.reduce(getattr, a.target.split('.'), graph) if isinstance(a, fx.Node) else a
    quantized = quantize.target(*map(value, quantize.args), **quantize.kwargs)
    return arg.target(quantized, *map(value, arg.args[1:]), **arg.kwargs)


@torch.no_grad()
def sensitivities(graph: fx.GraphModule, reference: nn.Module, images: torch.Tensor,
                  ops: Optional[Sequence[str]] = None) -> Dict[str, float]:
    """For each quantized op (all of `quantized_ops` unless `ops`), how much of the logit error of `graph`
    against the float `reference` on `images` goes away with that op alone left in float, as a fraction of
    the whole error. `graph` is left unchanged."""
    target = reference(images).float()
    # measured on a copy in which each op's quantized inputs pass through a switch that hands the op its float
    # input while it is the one measured, so that the code is generated once, not per op, and in which the
    # weights' quantize / dequantize pairs are computed once, not at every call (the same values)
    probe = copy.deepcopy(graph)
    measured = ['']

    def switch(op: str, quantized: torch.Tensor, source: torch.Tensor) -> torch.Tensor:
        return source if op == measured[0] else quantized
    nodes = {n.name: n for n in probe.graph.nodes}
    names = list(ops) if ops is not None else quantized_ops(graph)
    for number, name in enumerate(names):
        node = nodes[name]
        for position, arg in enumerate(node.args[:2]):
            source = _dequantized(arg)
            if source is None:
                continue
            with probe.graph.inserting_before(node):
                value = _weight(arg, probe)
                if value is not None:
                    attr = f'_fake_quantized_{number}_{position}'
                    probe.register_buffer(attr, value)
                    arg = probe.graph.get_attr(attr)
                node.replace_input_with(node.args[position], probe.graph.call_function(switch, (name, arg, source)))
    probe.graph.eliminate_dead_code()
    probe.recompile()

    def error() -> float:
        return (probe(images).float() - target).square().mean().item()
    whole = max(error(), 1e-30)
    scores = {}
    for name in names:
        measured[0] = name
        scores[name] = (whole - error()) / whole
    return scores


def fallback_search(ranked: Sequence[str], within: Callable[[Sequence[str]], bool],
                    max_trials: int) -> Tuple[Optional[int], int]:
    """(the fewest of the most sensitive ops `ranked` found to bring a program within the tolerance, or None;
    the trials run). `within(ops)` builds and checks the program with `ops` left in float; it is called at
    most `max_trials` times, with 1, 2, 4, ... ops until it holds, then bisecting below that count."""
    trials, failing, passing, count = 0, 0, None, 1
    while trials < max_trials and count <= len(ranked):
        trials += 1
        if within(ranked[:count]):
            passing = count
            break
        failing = count
        if count == len(ranked):
            break
        count = min(2 * count, len(ranked))
    while passing is not None and passing - failing > 1 and trials < max_trials:
        trials += 1
        middle = (failing + passing) // 2
        if within(ranked[:middle]):
            passing = middle
        else:
            failing = middle
    return passing, trials
