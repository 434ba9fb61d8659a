"""Exact inference folding through timm's own entry point: fused logits equal unfused ones, from standard
layers only."""
import pytest
import timm
import torch
import torch.nn as nn
from timm.utils import reparameterize_model

import cmtnet  # noqa: F401  (registers the models)
from cmtnet.models import VARIANT_ARGS, CMTBlock, set_model_fused_attn
from cmtnet.models.cmt import CMT, CMTStage, CMTStages, ConvStem, PatchAggregation
from cmtnet.models.fuse import FusedAttention, FusedCMTBlock, FusedIRFFN
from norms import randomise_norms as _randomise_norms, rel_err as _rel_err

VARIANTS = {'cmt_ti': (160, 64), 'cmt_xs': (192, 96), 'cmt_s': (224, 64), 'cmt_b': (256, 64)}


def _model(name: str) -> nn.Module:
    torch.manual_seed(0)
    return _randomise_norms(timm.create_model(name, dynamic_img_size=True)).eval()


@pytest.mark.parametrize('name', list(VARIANTS))
def test_fused_logits_equal_unfused(name):
    model = _model(name)
    fused = reparameterize_model(model)
    depth = sum(VARIANT_ARGS[name]['depths'])
    # one BatchNorm per block is left, the IRFFN's before its zero-padded depthwise conv, which no plain conv
    # absorbs (the CPU fast path folds it, tests/models/test_fast_path.py)
    assert sum(isinstance(m, nn.BatchNorm2d) for m in fused.stages.modules()) == depth
    assert all(isinstance(m.norm, nn.BatchNorm2d) for m in fused.modules() if isinstance(m, FusedIRFFN))
    assert sum(isinstance(m, FusedCMTBlock) for m in fused.modules()) == depth
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
    """`set_model_fused_attn` reaches the fused attention, on every device as in the unfolded model (the CPU
    fast path runs the explicit form, tests/models/test_onednn.py checks it against SDPA)."""
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


# what a folded CMT is made of: torch's and timm's layers, the network's own containers and the folded parts
STANDARD = {
    CMT, CMTStages, CMTStage, ConvStem, PatchAggregation, FusedCMTBlock, FusedAttention, FusedIRFFN,
    nn.Conv2d, nn.Linear, nn.BatchNorm2d, nn.GELU, nn.SiLU, nn.Identity, nn.Dropout, nn.Flatten, nn.ModuleList,
    nn.AdaptiveAvgPool2d, timm.layers.LayerNorm2d, timm.layers.ClassifierHead, timm.layers.ConvNormAct,
    timm.layers.BatchNormAct2d, timm.layers.SelectAdaptivePool2d,
}


def test_the_folded_model_is_made_of_standard_layers():
    """No execution policy in the fold: no oneDNN call, no micro-batch, no border correction, whatever the
    device; every conv has its bias; keys and values are one projection."""
    fused = reparameterize_model(_model('cmt_s'))
    types = {type(m) for m in fused.modules()}
    assert types <= STANDARD, types - STANDARD
    assert not any(type(m).__module__ in ('cmtnet.models.fast_path', 'cmtnet.models.onednn') for m in fused.modules())
    assert all(m.bias is not None for m in fused.stages.modules() if isinstance(m, nn.Conv2d))
    attentions = [m for m in fused.modules() if isinstance(m, FusedAttention)]
    assert len(attentions) == sum(VARIANT_ARGS['cmt_s']['depths'])
    for attn in attentions:
        dim = attn.proj.in_channels
        assert attn.kv.out_channels == (3 if attn.q is None else 2) * dim  # (q,) k and v in one projection


def test_a_block_fold_returns_a_new_block_and_leaves_its_own_untouched():
    """`fuse()` returns a new module and shares nothing with the block, which stays as it was (the
    convention `fuse()`'s docstring names)."""
    torch.manual_seed(0)
    block = _randomise_norms(CMTBlock(16, 2, 2)).eval()
    children = dict(block.named_modules())
    before = {k: v.clone() for k, v in block.state_dict().items()}
    fused = block.fuse()
    assert isinstance(fused, FusedCMTBlock) and fused is not block
    assert dict(block.named_modules()) == children
    assert all(torch.equal(block.state_dict()[k], v) for k, v in before.items())
    ours = {id(t) for t in block.state_dict(keep_vars=True).values()}
    assert not any(id(t) in ours for t in fused.state_dict(keep_vars=True).values())
    assert not any(m is n for m in fused.modules() for n in block.modules())
    x = torch.randn(2, 16, 8, 8)
    with torch.no_grad():
        assert _rel_err(fused(x, None), block(x, None)) <= 1e-5


def test_fused_model_refuses_training():
    fused = reparameterize_model(_model('cmt_ti'))
    with pytest.raises(RuntimeError, match='fused for inference'):
        fused.train()
    fused.eval()  # eval stays allowed


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
