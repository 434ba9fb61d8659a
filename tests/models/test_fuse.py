"""Exact inference folding through timm's own entry point: fused logits equal unfused ones."""
import copy

import pytest
import timm
import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.utils import reparameterize_model

import cmtnet  # noqa: F401  (registers the models)
from cmtnet.models import VARIANT_ARGS, CMTBlock, set_model_fused_attn
from cmtnet.models import fuse
from cmtnet.models.fuse import EdgeCorrectedConv, FusedAttention, FusedCMTBlock, bn_scale_shift
from cmtnet.models.onednn import OneDNNConv
from norms import randomise_norms as _randomise_norms, rel_err as _rel_err

VARIANTS = {'cmt_ti': (160, 64), 'cmt_xs': (192, 96), 'cmt_s': (224, 64), 'cmt_b': (256, 64)}


def _model(name: str) -> nn.Module:
    torch.manual_seed(0)
    return _randomise_norms(timm.create_model(name, dynamic_img_size=True)).eval()


@pytest.mark.parametrize('name', list(VARIANTS))
def test_fused_logits_equal_unfused(name):
    model = _model(name)
    fused = reparameterize_model(model)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in fused.stages.modules())
    assert sum(isinstance(m, FusedCMTBlock) for m in fused.modules()) == sum(VARIANT_ARGS[name]['depths'])
    for size in VARIANTS[name]:
        x = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(size))
        with torch.no_grad():
            expected, got = model(x), fused(x)
        assert _rel_err(got, expected) <= 1e-5, (name, size)


def test_unfused_model_is_left_as_it_was():
    model = _model('cmt_ti')
    before = {k: v.clone() for k, v in model.state_dict().items()}
    fused = reparameterize_model(model)
    after = model.state_dict()
    assert list(after) == list(before)
    assert all(torch.equal(after[k], v) for k, v in before.items())
    assert fused is not model and not any(isinstance(m, FusedCMTBlock) for m in model.modules())
    assert reparameterize_model(model, inplace=True) is model
    assert any(isinstance(m, FusedCMTBlock) for m in model.modules())
    # folding a folded model changes nothing (no second micro-batch wrapper, no second fold)
    refolded = reparameterize_model(fused)
    assert [type(m) for m in refolded.modules()] == [type(m) for m in fused.modules()]
    x = torch.randn(2, 3, 96, 96)
    with torch.no_grad():
        assert _rel_err(refolded(x), fused(x)) <= 1e-6


@pytest.mark.parametrize('channels_last', [False, True])
def test_fused_in_both_memory_formats(channels_last):
    model = _model('cmt_ti')
    fused = reparameterize_model(model)
    x = torch.randn(2, 3, 96, 128)
    with torch.no_grad():
        expected = model(x)
        if channels_last:
            fused = fused.to(memory_format=torch.channels_last)
            x = x.contiguous(memory_format=torch.channels_last)
        got = fused(x)
    assert _rel_err(got, expected) <= 1e-5


def test_fused_attention_follows_set_model_fused_attn_and_stays_exact():
    """`set_model_fused_attn` reaches the fused attention (SDPA off the CPU); on the CPU the explicit form runs
    either way (tests/models/test_onednn.py checks it against SDPA)."""
    model = _model('cmt_ti')
    fused = reparameterize_model(model)
    attentions = [m for m in fused.modules() if isinstance(m, FusedAttention)]
    x = torch.randn(2, 3, 160, 160)
    with torch.no_grad():
        expected = model(x)
        for flag in (True, False):
            set_model_fused_attn(fused, flag)
            assert attentions and all(m.fused_attn is flag for m in attentions)
            assert _rel_err(fused(x), expected) <= 1e-5


def test_fused_model_refuses_training():
    fused = reparameterize_model(_model('cmt_ti'))
    with pytest.raises(RuntimeError, match='fused for inference'):
        fused.train()
    fused.eval()  # eval stays allowed


@pytest.mark.parametrize('size', [(1, 1), (1, 5), (2, 2), (5, 3), (7, 7)])
@pytest.mark.parametrize('depthwise', [True, False])
def test_edge_corrected_conv_folds_an_affine_before_padding(size, depthwise):
    """A per-channel affine before a zero-padded 3x3 conv (and a shortcut around a depthwise one) folds
    exactly, border rows, columns and corners included, down to one-pixel maps."""
    torch.manual_seed(0)
    chans = 6
    conv = nn.Conv2d(chans, chans, 3, padding=1, groups=chans if depthwise else 1)
    bn = _randomise_norms(nn.BatchNorm2d(chans)).eval()
    folded = EdgeCorrectedConv(conv, *bn_scale_shift(bn), identity=depthwise)
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
        folded = EdgeCorrectedConv(conv, *bn_scale_shift(bn), identity=depthwise, gelu=True)
        assert _rel_err(folded(x), expected) <= 1e-5 and calls == []  # float32: the correction
        with monkeypatch.context() as m:
            m.setattr(fuse, 'PADDED_GELU_DTYPES', (torch.float32, torch.bfloat16))
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
        folded = EdgeCorrectedConv(conv, *bn_scale_shift(bn), identity=depthwise, gelu=True)
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
    folded = EdgeCorrectedConv(conv, *bn_scale_shift(bn), identity=True, gelu=True)
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


def test_fuses_projections_without_bias():
    torch.manual_seed(0)
    model = _randomise_norms(timm.create_model('cmt_ti', depths=(1, 1, 1, 1), qkv_bias=False, img_size=64)).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert _rel_err(reparameterize_model(model)(x), model(x)) <= 1e-5


@pytest.mark.parametrize('name', timm.list_models('cmt*'))
def test_every_registered_model_folds_exactly_in_both_memory_formats(name):
    """Every model `import cmtnet` registers (variants, scaled model, ablation steps) folds to its own logits,
    with non-trivial BatchNorm statistics: the parts folding knows are folded, the others left as they are."""
    torch.manual_seed(0)
    model = _randomise_norms(timm.create_model(name, img_size=64)).eval()
    fused = reparameterize_model(model)
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = model(x)
        assert _rel_err(fused(x), expected) <= 1e-5
        fused = fused.to(memory_format=torch.channels_last)
        assert _rel_err(fused(x.contiguous(memory_format=torch.channels_last)), expected) <= 1e-5


@pytest.mark.parametrize('parts, folds', [
    (dict(), True),
    (dict(use_lpu=False), False),
    (dict(ffn_type='mlp'), False),
    (dict(norm_type='batchnorm'), False),
])
def test_a_block_folds_only_the_parts_it_knows(parts, folds):
    """A block of other parts than the folds are written for comes back from `fuse()` as it is (exact),
    never folded by guessing."""
    block = CMTBlock(16, 2, 2, **parts)
    assert block.foldable() is folds
    fused = block.fuse()
    assert isinstance(fused, FusedCMTBlock) if folds else fused is block


def test_without_position_bias_the_blocks_fold():
    model = _model('cmt_ti_abl_no_pos_bias')
    fused = reparameterize_model(model)
    assert sum(isinstance(m, FusedCMTBlock) for m in fused.modules()) == sum(VARIANT_ARGS['cmt_ti']['depths'])
    x = torch.randn(2, 3, 96, 64)
    with torch.no_grad():
        assert _rel_err(fused(x), model(x)) <= 1e-5
