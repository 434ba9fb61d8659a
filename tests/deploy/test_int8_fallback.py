"""Accuracy-aware int8: finding the quantized ops, leaving some in float, ranking them, searching the fewest."""
import functools

import pytest
import torch
import torch.nn as nn

from cmtnet.deploy.int8_fallback import fallback_search, leave_in_float, op_labels, quantized_ops, sensitivities
from cmtnet.deploy.quantize import calibrated_graph, quantized_program

SIZE = 32


class GlobalMean(nn.Module):
    """A global average pool the quantizer leaves alone (it would quantize an AdaptiveAvgPool2d's input)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean((2, 3))


def _convs() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
                         nn.Conv2d(8, 8, 1), GlobalMean(), nn.Linear(8, 4)).eval()


@pytest.fixture(scope='module')
def quantized():
    """(float model, its calibrated graph, images whose first pixel is an outlier that per-tensor min-max
    calibration of the first conv's input cannot represent beside the rest)."""
    model = _convs()
    images = torch.randn(8, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(1))
    images[:, :, 0, 0] = 300.
    return model, calibrated_graph(model, [images], SIZE, fold=False, calibration='minmax'), images


def test_the_quantized_ops_are_the_convolutions_and_the_linear(quantized):
    _, graph, _ = quantized
    ops = quantized_ops(graph)
    assert len(ops) == 4
    labels = op_labels(graph, ops)
    assert [label.split(' ')[0] for label in labels] == ['0', '2', '4', '6']  # the modules they came from


def test_every_op_left_in_float_gives_the_float_model_back(quantized):
    model, graph, images = quantized
    ops = quantized_ops(graph)
    with torch.no_grad():
        expected = model(images)
        assert not torch.allclose(quantized_program(graph)(images), expected, atol=1e-3)
        torch.testing.assert_close(quantized_program(graph, ops)(images), expected, rtol=1e-5, atol=1e-5)
    # the graph itself is left as it was
    assert quantized_ops(graph) == ops


def test_leaving_an_op_in_float_stores_its_weight_in_float_and_the_others_in_int8(quantized):
    _, graph, _ = quantized
    first, *rest = quantized_ops(graph)
    program = quantized_program(graph, [first])
    weights = {n.name: n.args[1] for n in program.graph.nodes if n.name in quantized_ops(graph)}
    tensor = {n.target: functools.reduce(getattr, n.target.split('.'), program)
              for n in program.graph.nodes if n.op == 'get_attr'}
    assert weights[first].op == 'get_attr' and tensor[weights[first].target].dtype == torch.float32
    for name in rest:  # dequantized from an int8 constant
        assert tensor[weights[name].args[0].target].dtype == torch.int8
    assert all(t.dtype != torch.float32 or t.dim() < 4 for n, t in tensor.items() if n != weights[first].target)


def test_the_op_behind_the_outlier_is_the_most_sensitive(quantized):
    model, graph, images = quantized
    before = graph.code
    scores = sensitivities(graph, model, images)
    assert set(scores) == set(quantized_ops(graph)) and graph.code == before
    ranked = sorted(scores, key=scores.get, reverse=True)
    assert ranked[0] == quantized_ops(graph)[0] and scores[ranked[0]] > 0.2
    assert all(score <= 1 for score in scores.values())


def test_the_search_finds_the_fewest_ops_within_its_trials():
    ranked = [f'op{i}' for i in range(100)]
    asked = []

    def within(ops):
        asked.append(len(ops))
        assert list(ops) == ranked[:len(ops)]  # always the most sensitive first
        return len(ops) >= 13
    assert fallback_search(ranked, within, max_trials=10) == (13, 8)
    assert asked == [1, 2, 4, 8, 16, 12, 14, 13]
    asked.clear()
    assert fallback_search(ranked, within, max_trials=3) == (None, 3) and asked == [1, 2, 4]
    asked.clear()
    assert fallback_search(ranked[:5], lambda ops: asked.append(len(ops)) or False, max_trials=10) == (None, 4)
    assert asked == [1, 2, 4, 5]
