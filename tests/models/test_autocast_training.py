"""The pass for training under CPU bfloat16 autocast: which kernels it picks, and that it changes nothing else."""
import pytest
import timm
import torch
import torch.nn as nn

from cmtnet.models import LightweightAttention, set_model_fused_attn
from cmtnet.models.autocast_training import WeightDtypeConv2d, cpu_autocast_training


def _model():
    torch.manual_seed(0)
    model = timm.create_model('cmt_ti', img_size=64, num_classes=10).eval()  # no dropout: comparable runs
    set_model_fused_attn(model, True)
    return model


def _spy(model, monkeypatch):
    """Record the dtype of every key/value reduction's result, and every SDPA call."""
    reductions, sdpa_calls = [], []
    for m in model.modules():
        if isinstance(m, LightweightAttention) and m.sr_ratio > 1:
            m.sr.register_forward_hook(lambda mod, args, out: reductions.append(out.dtype))
    sdpa = torch.nn.functional.scaled_dot_product_attention
    monkeypatch.setattr(torch.nn.functional, 'scaled_dot_product_attention',
                        lambda *a, **kw: sdpa_calls.append(1) or sdpa(*a, **kw))
    return reductions, sdpa_calls


def _step(model, x, autocast):
    model.zero_grad()
    with torch.autocast('cpu', dtype=torch.bfloat16, enabled=autocast):
        out = model(x)
    out.float().square().mean().backward()
    return out.detach().float(), model.stages[0].blocks[0].attn.sr.weight.grad.flatten().clone()


def test_under_cpu_autocast_the_reduction_computes_in_float32_and_the_attention_explicitly(monkeypatch):
    """With the pass, under CPU bfloat16 autocast the reduction runs in float32 and the attention without SDPA;
    the output and the gradients stay close to float32's, and the parameters are the same tensors by name."""
    model = _model()
    x = torch.randn(2, 3, 64, 64)
    ref, ref_grad = _step(model, x, autocast=False)
    params = dict(model.named_parameters())
    assert cpu_autocast_training(model, 'cpu', torch.bfloat16) is model
    assert dict(model.named_parameters()) == params
    assert any(isinstance(m, WeightDtypeConv2d) for m in model.modules())
    reductions, sdpa_calls = _spy(model, monkeypatch)
    out, grad = _step(model, x, autocast=True)
    assert not sdpa_calls, 'SDPA ran under CPU autocast'
    assert reductions and set(reductions) == {torch.float32}
    assert (out - ref).abs().max() / ref.abs().max() < 0.1
    assert torch.nn.functional.cosine_similarity(grad, ref_grad, dim=0) > 0.99
    # without autocast the model computes as before the pass
    torch.testing.assert_close(_step(model, x, autocast=False)[0], ref, rtol=1e-5, atol=1e-5)


def test_the_network_itself_has_no_autocast_branch(monkeypatch):
    """Without the pass, the network runs as autocast casts it: the reduction in bfloat16, SDPA selected."""
    model = _model()
    reductions, sdpa_calls = _spy(model, monkeypatch)
    _step(model, torch.randn(2, 3, 64, 64), autocast=True)
    assert sdpa_calls
    assert set(reductions) == {torch.bfloat16}


@pytest.mark.parametrize('device, amp', [('cpu', None), ('cpu', torch.float16), ('cuda', torch.bfloat16)])
def test_elsewhere_the_model_is_left_as_it_is(device, amp):
    model = _model()
    cpu_autocast_training(model, device, amp)
    attns = [m for m in model.modules() if isinstance(m, LightweightAttention)]
    assert all(m.fused_attn for m in attns)
    assert all(type(m.sr) in (nn.Conv2d, nn.Identity) for m in attns)
