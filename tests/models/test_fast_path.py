"""The CPU fast path as a pass over a folded model (models/fast_path.py): the folded model's results, the
BatchNorms before zero-padded convs folded with a border correction, applied on a CPU only."""
import copy

import pytest
import timm
import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.utils import reparameterize_model

import cmtnet  # noqa: F401  (registers the models)
from cmtnet.models import cpu_fast_path, fast_path
from cmtnet.models.fast_path import EdgeCorrectedConv, FastCMTBlock, MicroBatched, applies_on
from cmtnet.models.fuse import FusedCMTBlock
from cmtnet.models.onednn import OneDNNConv
from cmtnet.runtime import folded_for, inference_model
from norms import randomise_norms as _randomise_norms, rel_err as _rel_err

POLICY = (EdgeCorrectedConv, FastCMTBlock, MicroBatched, OneDNNConv)


def _edge_corrected(conv: nn.Conv2d, bn: nn.BatchNorm2d, depthwise: bool, gelu: bool = False) -> EdgeCorrectedConv:
    """The fast path's conv for bn -> conv (+ the shortcut around a depthwise conv, which the plain fold puts
    on the centre tap)."""
    if depthwise:
        conv = copy.deepcopy(conv)
        with torch.no_grad():
            conv.weight[:, 0, 1, 1] += 1.
    return EdgeCorrectedConv(conv, bn, gelu=gelu)


@pytest.mark.parametrize('name', timm.list_models('cmt*'))
def test_every_registered_model_on_the_fast_path_gives_the_folded_results_in_both_memory_formats(name):
    torch.manual_seed(0)
    model = _randomise_norms(timm.create_model(name, img_size=64)).eval()
    folded = reparameterize_model(model)
    fast = cpu_fast_path(folded)
    assert not any(isinstance(m, POLICY) for m in folded.modules())  # the pass leaves its input as it was
    x = torch.randn(3, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = model(x)
        assert _rel_err(fast(x), folded(x)) <= 1e-5 and _rel_err(fast(x), expected) <= 1e-5
        fast = fast.to(memory_format=torch.channels_last)
        assert _rel_err(fast(x.contiguous(memory_format=torch.channels_last)), expected) <= 1e-5


def test_the_fast_path_folds_every_batchnorm_of_the_stages_and_comes_back_as_it_is_a_second_time():
    torch.manual_seed(0)
    model = _randomise_norms(timm.create_model('cmt_ti', img_size=64)).eval()
    fast = cpu_fast_path(reparameterize_model(model))
    assert not any(isinstance(m, nn.BatchNorm2d) for m in fast.stages.modules())
    assert not any(isinstance(m, FusedCMTBlock) for m in fast.modules())
    assert isinstance(fast.stem, MicroBatched) and isinstance(fast.stages[0], MicroBatched)
    again = cpu_fast_path(fast)
    assert [type(m) for m in again.modules()] == [type(m) for m in fast.modules()]


@pytest.mark.parametrize('device, applies', [('cpu', True), (torch.device('cpu'), True), ('cuda', False),
                                             (torch.device('cuda', 1), False), ('meta', False)])
def test_the_fast_path_applies_on_a_cpu_only(device, applies):
    assert applies_on(device) is applies
    model = timm.create_model('cmt_ti', depths=(1, 1, 1, 1), img_size=64).eval()
    folded = folded_for(model, device)
    assert any(isinstance(m, POLICY) for m in folded.modules()) is applies
    assert any(isinstance(m, (FusedCMTBlock, FastCMTBlock)) for m in folded.modules())


def test_inference_model_puts_bf16_on_the_fast_path_on_a_cpu_only_and_leaves_fp32_unfolded():
    model = timm.create_model('cmt_ti', depths=(1, 1, 1, 1), img_size=64).eval()
    on_cpu = inference_model(model, 'cpu', 'bf16')
    elsewhere = inference_model(model, torch.device('meta'), 'bf16')
    assert any(isinstance(m, POLICY) for m in on_cpu.modules())
    assert not any(isinstance(m, POLICY) for m in elsewhere.modules())
    assert any(isinstance(m, FusedCMTBlock) for m in elsewhere.modules())
    assert next(elsewhere.parameters()).device.type == 'meta'
    assert inference_model(model, 'cpu', 'fp32') is model  # the checkpoint's own logits
    assert not any(isinstance(m, (FusedCMTBlock,) + POLICY) for m in model.modules())


@pytest.mark.parametrize('size', [(1, 1), (1, 5), (2, 2), (5, 3), (7, 7)])
@pytest.mark.parametrize('depthwise', [True, False])
def test_edge_corrected_conv_folds_an_affine_before_padding(size, depthwise):
    """A BatchNorm before a zero-padded 3x3 conv (and a shortcut around a depthwise one) folds
    exactly, border rows, columns and corners included, down to one-pixel maps."""
    torch.manual_seed(0)
    chans = 6
    conv = nn.Conv2d(chans, chans, 3, padding=1, groups=chans if depthwise else 1)
    bn = _randomise_norms(nn.BatchNorm2d(chans)).eval()
    folded = _edge_corrected(conv, bn, depthwise)
    x = torch.randn(2, chans, *size)
    with torch.no_grad():
        y = bn(x)
        expected = conv(y) + y if depthwise else conv(y)
        assert _rel_err(folded(x), expected) <= 1e-5


@pytest.mark.parametrize('size', [(1, 1), (2, 5), (7, 7)])
@pytest.mark.parametrize('depthwise', [True, False])
def test_edge_corrected_conv_with_its_gelu_pads_instead_of_correcting(size, depthwise, monkeypatch):
    """With the GELU folded in, the CPU fast path pads the input with -shift/scale and runs the conv unpadded
    with the GELU inside: the same values as the BatchNorm, the zero-padded conv and the GELU (exact in
    float32, where it is switched on for the check). By default it runs in bfloat16 only; float32, traced
    graphs and a channel with scale 0 (no finite pad value) take the correction and a separate GELU."""
    torch.manual_seed(0)
    chans = 6
    conv = nn.Conv2d(chans, chans, 3, padding=1, groups=chans if depthwise else 1)
    bn = _randomise_norms(nn.BatchNorm2d(chans)).eval()
    calls = []
    real = OneDNNConv.unpadded_gelu
    monkeypatch.setattr(OneDNNConv, 'unpadded_gelu', lambda self, x: calls.append(x.shape) or real(self, x))
    x = torch.randn(2, chans, *size)
    padded = (2, chans, size[0] + 2, size[1] + 2)
    with torch.no_grad():
        y = bn(x)
        expected = F.gelu(conv(y) + y if depthwise else conv(y))
        folded = _edge_corrected(conv, bn, depthwise, gelu=True)
        assert _rel_err(folded(x), expected) <= 1e-5 and calls == []  # float32: the correction
        with monkeypatch.context() as m:
            m.setattr(fast_path, 'PADDED_GELU_DTYPES', (torch.float32, torch.bfloat16))
            assert _rel_err(folded(x), expected) <= 1e-5
            assert calls == [padded]  # one call, on the padded input
            with torch.jit.optimized_execution(False):  # traced: the plain ops and the correction map
                traced = torch.jit.trace(folded, x, check_trace=False)
            assert _rel_err(traced(x), expected) <= 1e-5 and len(calls) == 1
        assert _rel_err(folded.to(torch.bfloat16)(x.bfloat16()).float(), expected) <= 2e-2
        assert calls == [padded, padded]

        bn.weight[2] = 0.  # scale 0 on one channel: nothing to pad with
        y = bn(x)
        expected = F.gelu(conv(y) + y if depthwise else conv(y))
        folded = _edge_corrected(conv, bn, depthwise, gelu=True)
        assert folded.pad is None
        assert _rel_err(folded.to(torch.bfloat16)(x.bfloat16()).float(), expected) <= 2e-2
        assert len(calls) == 2


def _conv_paddings(graph: torch.fx.Graph) -> list:
    """The padding of each conv in a dynamo or exported graph, as (h, w)."""
    paddings = []
    for node in graph.nodes:
        if node.op == 'call_function' and 'conv' in str(node.target):
            padding = node.args[4] if len(node.args) > 4 else node.kwargs.get('padding', 0)
            paddings.append(tuple(padding) if isinstance(padding, (tuple, list)) else (padding, padding))
    return paddings


def test_a_compiled_edge_corrected_conv_pads_its_input_in_bfloat16_and_an_exported_one_corrects():
    """Compiled for the CPU in bfloat16, the conv with its GELU runs unpadded on the input padded in the graph
    (so that inductor can take the GELU into the conv); compiled in float32, and exported, the graph keeps the
    zero-padded conv and the correction. Each gives the values of the BatchNorm, the conv and the GELU."""
    torch.manual_seed(0)
    chans = 6
    conv = nn.Conv2d(chans, chans, 3, padding=1, groups=chans)
    bn = _randomise_norms(nn.BatchNorm2d(chans)).eval()
    x = torch.randn(2, chans, 5, 7)
    with torch.no_grad():
        y = bn(x)
        expected = F.gelu(conv(y) + y)
    folded = _edge_corrected(conv, bn, True, gelu=True)
    graphs = []

    def recorder(gm, example_inputs):
        graphs.append(gm.graph)
        return gm.forward

    def compiled(module: nn.Module, inputs: torch.Tensor) -> torch.Tensor:
        torch._dynamo.reset()
        graphs.clear()
        with torch.no_grad():
            return torch.compile(module, backend=recorder, fullgraph=True)(inputs).float()

    assert _rel_err(compiled(folded, x), expected) <= 1e-5
    assert [_conv_paddings(g) for g in graphs] == [[(1, 1)]]
    half, xh = copy.deepcopy(folded).to(torch.bfloat16), x.bfloat16()
    assert _rel_err(compiled(half, xh), expected) <= 2e-2
    assert [_conv_paddings(g) for g in graphs] == [[(0, 0)]]
    with torch.no_grad():
        exported = torch.export.export(half, (xh,))
        assert _rel_err(exported.module()(xh).float(), expected) <= 2e-2
    assert _conv_paddings(exported.graph) == [(1, 1)]
