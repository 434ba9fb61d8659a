"""The CPU fast path over a folded model (models/fast_path.py, models/onednn.py): one oneDNN call per conv
with its GELU or residual, and micro-batches for the early stages. Each must give the plain ops' results, and be taken only where it applies."""
import copy
import pickle

import pytest
import timm
import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.utils import reparameterize_model

import cmtnet  # noqa: F401  (registers the models)
from cmtnet.models import fast_path, onednn
from cmtnet.models.fast_path import FastCMTBlock, MicroBatched, cpu_fast_path
from cmtnet.models.fuse import attend
from cmtnet.models.onednn import OneDNNConv, fast_path_available, onednn_applies
from norms import randomise_norms, rel_err

CONVS = {
    '1x1': lambda: nn.Conv2d(16, 48, 1),
    'depthwise 3x3': lambda: nn.Conv2d(16, 16, 3, padding=1, groups=16),
    'stride-k reduction': lambda: nn.Conv2d(16, 16, 4, stride=4, groups=16),
    'dense 3x3 stride 2': lambda: nn.Conv2d(16, 48, 3, stride=2, padding=1),
}


def _cl(*shape: int) -> torch.Tensor:
    return torch.randn(*shape).contiguous(memory_format=torch.channels_last)


pytestmark = pytest.mark.skipif(not onednn_applies(_cl(1, 1, 1, 1), torch.zeros(1)),
                                reason='this PyTorch build has no oneDNN convolution post-ops')


@pytest.mark.parametrize('kind', list(CONVS))
@pytest.mark.parametrize('gelu', [False, True])
def test_conv_with_gelu_equals_the_plain_ops(kind, gelu):
    torch.manual_seed(0)
    conv = CONVS[kind]()
    fast = OneDNNConv(conv, gelu=gelu)
    x = _cl(2, 16, 16, 12)
    with torch.no_grad():
        assert onednn_applies(x, conv.weight)
        expected = F.gelu(conv(x)) if gelu else conv(x)
        got = fast(x)
    assert got.is_contiguous(memory_format=torch.channels_last)
    assert rel_err(got, expected) <= 1e-5


def test_residual_is_summed_in_place_on_the_fast_path_only():
    torch.manual_seed(0)
    conv = nn.Conv2d(16, 8, 1)
    fast = OneDNNConv(conv)
    x, residual = _cl(2, 16, 7, 9), _cl(2, 8, 7, 9)
    with torch.no_grad():
        expected = residual + conv(x)
        kept = residual.clone()
        got = fast(x, kept)
        assert got is kept  # summed into the residual, no new map
        assert rel_err(got, expected) <= 1e-6
    # with gradients wanted, the plain ops run and the residual is left alone
    before = residual.clone()
    out = fast(x, residual)
    assert out is not residual and torch.equal(residual, before)
    assert rel_err(out.detach(), expected) <= 1e-6
    out.sum().backward()
    assert conv.weight.grad is not None


@pytest.mark.parametrize('case', ['nchw input', 'float64', 'grad wanted', 'nchw residual'])
def test_fast_path_is_declined_where_it_does_not_apply(case):
    conv = nn.Conv2d(4, 4, 1)
    x, residual = _cl(1, 4, 5, 5), None
    if case == 'nchw input':
        x = x.contiguous()
    elif case == 'float64':
        x = x.double()
    elif case == 'nchw residual':
        residual = torch.randn(1, 4, 5, 5)
    with torch.set_grad_enabled(case == 'grad wanted'):
        assert not onednn_applies(x, conv.weight, residual)


def test_packed_weight_follows_changes_and_is_not_copied():
    torch.manual_seed(0)
    conv = nn.Conv2d(8, 8, 1)
    fast = OneDNNConv(conv, gelu=True)
    x = _cl(1, 8, 4, 4)
    with torch.no_grad():
        fast(x)
        conv.weight.mul_(-2.)  # an in-place change (a checkpoint loaded into the module, for one)
        assert rel_err(fast(x), F.gelu(conv(x))) <= 1e-5
        for twin in (copy.deepcopy(fast), pickle.loads(pickle.dumps(fast))):
            assert twin._packed == {}
            assert rel_err(twin(x), F.gelu(conv(x))) <= 1e-5


def test_explicit_attention_equals_sdpa():
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 4, 49, 16, generator=g) for _ in range(3))
    bias = torch.randn(4, 49, 49, generator=g)
    with torch.no_grad():
        assert rel_err(attend(q, k, v, bias, sdpa=False), attend(q, k, v, bias, sdpa=True)) <= 1e-5


def _model() -> nn.Module:
    torch.manual_seed(0)
    return randomise_norms(timm.create_model('cmt_ti', depths=(2, 1, 1, 1), img_size=96)).eval()


def test_early_stages_run_in_micro_batches_with_the_same_results(monkeypatch):
    """The fast path installs the micro-batches around the stem and the first stage only; the network's own
    forward has no such branch (the unfused and the plain folded model run their batch whole)."""
    model = _model()
    folded = reparameterize_model(model)
    fused = cpu_fast_path(folded)
    assert not any(isinstance(m, MicroBatched) for m in folded.modules())
    assert isinstance(fused.stem, MicroBatched) and isinstance(fused.stages[0], MicroBatched)
    assert not any(isinstance(m, MicroBatched) for m in list(fused.stages)[1:])
    assert not any(isinstance(m, MicroBatched) for m in model.modules())
    x = torch.randn(5, 3, 96, 96)
    monkeypatch.setattr(fast_path, 'EARLY_MAP_BUDGET', 1)  # one image at a time
    assert fused.stem.micro_batch(x) == 1
    calls = {'stem': [], 'stage': []}
    fused.stem.module.register_forward_hook(lambda module, args, out: calls['stem'].append(args[0].shape[0]))
    fused.stages[0].module.register_forward_hook(lambda module, args, out: calls['stage'].append(args[0].shape[0]))
    with torch.no_grad():
        got = fused(x)
        expected = model(x)
        _, intermediates = fused.forward_intermediates(x)
        _, expected_intermediates = model.forward_intermediates(x)
    assert calls == {'stem': [1] * 10, 'stage': [1] * 10}  # forward, then forward_intermediates
    assert rel_err(got, expected) <= 1e-5
    assert all(rel_err(a, b) <= 1e-5 for a, b in zip(intermediates, expected_intermediates))
    monkeypatch.setattr(fast_path, 'EARLY_MAP_BUDGET', 2 ** 40)  # a batch that fits is not split
    assert fused.stem.micro_batch(x) == 0 and fused.stages[0].micro_batch(x) == 0


def _conv_calls(graph: torch.fx.Graph) -> int:
    return sum(1 for n in graph.nodes if n.op == 'call_function' and 'conv' in str(n.target))


def test_a_graph_compiled_for_static_shapes_unrolls_the_micro_batches_and_a_dynamic_one_does_not(monkeypatch):
    """Under `torch.compile` for static shapes the early stages run in micro-batches as in eager mode (each
    micro-batch's convs appear in the graph); compiled for dynamic shapes, or exported, the batch runs whole,
    so that one graph serves every batch size. The results are the plain model's in each case."""
    model = _model()
    fused = cpu_fast_path(reparameterize_model(model))
    x = torch.randn(3, 3, 96, 96)
    with torch.no_grad():
        expected = model(x)
    graphs = []

    def recorder(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    def compiled_convs(module: nn.Module, dynamic: bool) -> int:
        torch._dynamo.reset()
        graphs.clear()
        with torch.no_grad():
            got = torch.compile(module, backend=recorder, dynamic=dynamic, fullgraph=True)(x)
        if module is fused:
            assert rel_err(got, expected) <= 1e-5
        return sum(_conv_calls(g.graph) for g in graphs)

    early = compiled_convs(nn.Sequential(fused.stem.module, fused.stages[0].module), False)
    convs = {'whole': compiled_convs(fused, False)}  # the batch fits the budget
    monkeypatch.setattr(fast_path, 'EARLY_MAP_BUDGET', 1)  # one image at a time where the split applies
    convs['static'], convs['dynamic'] = compiled_convs(fused, False), compiled_convs(fused, True)
    torch._dynamo.reset()
    with torch.no_grad():
        exported = torch.export.export(fused, (x,), dynamic_shapes=({0: torch.export.Dim('batch', max=64)},))
    assert rel_err(exported.module()(x), expected) <= 1e-5
    convs['exported'] = _conv_calls(exported.graph)
    assert early > 0 and convs['static'] == convs['whole'] + 2 * early  # the early convs once per image
    assert convs['dynamic'] == convs['exported'] == convs['whole']


def _fake_op(behaviour):
    """A stand-in for a private oneDNN op: one that raises, takes another signature or computes wrongly."""
    def raising(*args, **kwargs):
        raise RuntimeError('no such kernel')

    def other_signature(x, weight, bias, padding, stride, dilation, groups):
        return x

    def wrong(x, weight, bias, *rest):
        return torch.zeros(x.shape[0], weight.shape[0], *x.shape[2:]).contiguous(memory_format=torch.channels_last)

    return {'raises': raising, 'other signature': other_signature, 'wrong result': wrong}[behaviour]


@pytest.mark.parametrize('behaviour', ['raises', 'other signature', 'wrong result', 'missing'])
def test_a_broken_private_op_turns_the_fast_path_off(monkeypatch, behaviour):
    """The capability probe: an op that is missing, raises, changed its signature or disagrees with the plain
    conv switches the fast path off, saying so once in a warning that names the reason, and the fast path's
    modules run the plain ops instead of raising."""
    assert fast_path_available()  # this build's ops pass the probe
    monkeypatch.setattr(onednn, '_fast_path', None)  # probe again, with the op broken
    if behaviour == 'missing':
        class NoOps:
            def __getattr__(self, name):
                raise AttributeError(f'no op {name}')
        monkeypatch.setattr(torch.ops, 'mkldnn', NoOps())
    else:
        monkeypatch.setattr(torch.ops.mkldnn, '_convolution_pointwise', _fake_op(behaviour))
    reason = {'raises': 'no such kernel', 'other signature': 'TypeError', 'wrong result': 'does not give',
              'missing': 'no op'}[behaviour]
    with pytest.warns(RuntimeWarning, match=f'fast path are off.*{reason}') as warned:
        assert not fast_path_available()
        assert not fast_path_available()  # probed once: said once
    assert len(warned) == 1
    torch.manual_seed(0)
    conv = nn.Conv2d(16, 16, 3, padding=1)
    x = _cl(2, 16, 8, 8)
    with torch.no_grad():
        assert not onednn_applies(x, conv.weight)
        assert rel_err(OneDNNConv(conv, gelu=True)(x), F.gelu(conv(x))) <= 1e-6
        model = _model()
        fused = cpu_fast_path(reparameterize_model(model))
        x = torch.randn(2, 3, 96, 96)
        assert rel_err(fused(x), model(x)) <= 1e-5


def test_every_conv_of_a_fused_block_runs_through_onednn():
    fused = cpu_fast_path(reparameterize_model(_model()))
    block = next(m for m in fused.modules() if isinstance(m, FastCMTBlock))
    wrapped = {id(m.conv) for m in block.modules() if isinstance(m, OneDNNConv)}
    convs = [m for m in block.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 8  # LPU, q, the stride-k reduction, kv, proj, fc1, depthwise, fc2
    assert all(id(conv) in wrapped for conv in convs)
    assert block.mlp.fc1.gelu and isinstance(block.mlp.act1, nn.Identity)  # the first GELU runs in the conv


@pytest.mark.parametrize('kind', list(CONVS))
@pytest.mark.parametrize('way', ['bf16 weights', 'autocast'])
def test_bf16_runs_on_the_fast_path_as_the_plain_ops_would(kind, way, monkeypatch):
    torch.manual_seed(0)
    conv = CONVS[kind]()
    x = _cl(2, 16, 16, 12)
    taken = []
    real_conv = onednn._conv
    monkeypatch.setattr(onednn, '_conv', lambda *args: taken.append(args[1].dtype) or real_conv(*args))
    with torch.no_grad():
        if way == 'bf16 weights':
            fast, plain = OneDNNConv(copy.deepcopy(conv).to(torch.bfloat16), gelu=True), conv.to(torch.bfloat16)
            x = x.to(torch.bfloat16)
            got, expected = fast(x), F.gelu(plain(x))
        else:
            fast = OneDNNConv(conv, gelu=True)
            with torch.autocast('cpu', torch.bfloat16):
                got, expected = fast(x), F.gelu(conv(x))
            assert conv.weight.dtype == torch.float32  # autocast leaves the module's weights as they are
    assert taken == [torch.bfloat16]
    assert got.dtype == torch.bfloat16 and got.is_contiguous(memory_format=torch.channels_last)
    assert rel_err(got.float(), expected.float()) <= 1e-2  # bfloat16 rounding, the plain ops' own


def test_autocast_residual_of_float32_becomes_a_bfloat16_sum():
    torch.manual_seed(0)
    conv = nn.Conv2d(16, 8, 1)
    x, residual = _cl(2, 16, 7, 9), _cl(2, 8, 7, 9)
    with torch.no_grad(), torch.autocast('cpu', torch.bfloat16):
        expected = residual + conv(x)
        got = OneDNNConv(conv)(x, residual)
    assert got.dtype == torch.bfloat16 and got is not residual
    assert rel_err(got.float(), expected.float()) <= 1e-2


@pytest.mark.parametrize('way', ['bf16 weights', 'autocast'])
def test_fused_model_in_bf16_keeps_the_fast_path_and_the_predictions(way, monkeypatch):
    model = randomise_norms(_model()).eval()
    fused = cpu_fast_path(reparameterize_model(model)).to(memory_format=torch.channels_last)
    x = torch.randn(4, 3, 96, 96).contiguous(memory_format=torch.channels_last)
    taken = []
    real = OneDNNConv._onednn  # every oneDNN call, the edge-corrected convs' unpadded ones included
    monkeypatch.setattr(OneDNNConv, '_onednn', lambda self, x, r, **kw: taken.append(
        onednn.compute_dtype(x, self.conv.weight)) or real(self, x, r, **kw))
    with torch.inference_mode():
        expected = model(x)
        if way == 'bf16 weights':
            got = fused.to(torch.bfloat16)(x.to(torch.bfloat16))
        else:
            with torch.autocast('cpu', torch.bfloat16):
                got = fused(x)
    convs = sum(isinstance(m, OneDNNConv) for m in fused.modules())
    assert len(taken) >= convs and set(taken) == {torch.bfloat16}  # every conv, in bfloat16
    assert rel_err(got.float(), expected) <= 5e-2
