"""Semantic FPN and UPerNet on CMT: the published head widths, logits at any input size, forward and
backward, backbone weights in (released and ours, leftovers out), and smp's own models on a CMT encoder."""
import pytest
import safetensors.torch
import segmentation_models_pytorch as smp
import timm
import torch
import torch.nn as nn

from cmtnet.errors import InputError
from cmtnet.models.released import convert_released_key
from cmtnet.segmentation import HEADS, CMTSegmenter, build_segmenter
from cmtnet.segmentation.models import SemanticFPNDecoder, UPerNetDecoder
from released import make_state, released_keys


def _segmenter(head, variant='cmt_ti', num_classes=5, **kwargs):
    torch.manual_seed(0)
    return build_segmenter(head, variant, num_classes, **kwargs)


def _forward_backward(model, height, width, batch=2):
    model.train()
    logits = model(torch.rand(batch, 3, height, width, generator=torch.Generator().manual_seed(0)))
    logits.logsumexp(1).mean().backward()
    return logits


# narrow heads: the sizes a head takes do not depend on its width, the time on a CPU does
NARROW = {'fpn': dict(pyramid_channels=64, segmentation_channels=32), 'upernet': dict(channels=64)}


@pytest.mark.parametrize('head', list(HEADS))
@pytest.mark.parametrize('size', [(256, 256), (188, 250)], ids=['256x256', '250x188'])
def test_logits_at_the_input_size_forward_and_backward(head, size):
    # 250x188 is no multiple of 32: the model pads, then crops the logits back
    model = _segmenter(head, **NARROW[head])
    logits = _forward_backward(model, *size)
    assert logits.shape == (2, 5, *size) and torch.isfinite(logits).all()
    grads = [p.grad for p in model.body.parameters() if p.requires_grad]
    assert grads and all(g is not None and torch.isfinite(g).all() for g in grads)
    assert model.classifier[1].weight.grad.abs().sum() > 0


def test_padding_leaves_the_image_part_alone():
    """Logits of an image inside its padded copy are computed from the same padded input: the model's
    own padding of 100x75 to 128x96 gives what the padded input gives, cropped."""
    model = _segmenter('fpn').eval()
    image = torch.rand(1, 3, 75, 100, generator=torch.Generator().manual_seed(1))
    mean, std = model.mean, model.std
    padded = torch.nn.functional.pad((image - mean) / std, (0, 28, 0, 21)) * std + mean  # zeros after normalising
    with torch.no_grad():
        torch.testing.assert_close(model(image), model(padded)[..., :75, :100], rtol=1e-4, atol=1e-4)


def test_published_head_widths():
    fpn, upernet = _segmenter('fpn'), _segmenter('upernet')
    assert isinstance(fpn.decoder, SemanticFPNDecoder) and isinstance(upernet.decoder, UPerNetDecoder)
    # Semantic FPN: 256-channel pyramid with a 3x3 output conv per level, a 128-channel semantic branch
    # whose level i has max(1, i) conv blocks
    assert [b[0].out_channels for b in fpn.decoder.fpn.inner_blocks] == [256] * 4
    assert [b[0].kernel_size for b in fpn.decoder.fpn.layer_blocks] == [(3, 3)] * 4
    assert [len(h.block) for h in fpn.decoder.scale_heads] == [1, 1, 2, 3]
    assert fpn.classifier[1].in_channels == 128
    # UPerNet: every conv of the head at 512 channels, pyramid pooling on 1, 2, 3, 6
    convs = [m for m in upernet.decoder.modules() if isinstance(m, nn.Conv2d)]
    assert {c.out_channels for c in convs} == {512}
    assert [b[0].output_size for b in upernet.decoder.psp.blocks] == [1, 2, 3, 6]
    assert upernet.classifier[1].in_channels == 512 and isinstance(upernet, CMTSegmenter)


@pytest.fixture(scope='module')
def released_file(tmp_path_factory):
    state = make_state(released_keys('cmt_ti'), seed=5)
    path = tmp_path_factory.mktemp('weights') / 'cmt_tiny.pth'
    torch.save({'model': state}, path)
    return path, state


@pytest.mark.parametrize('head', list(HEADS))
def test_released_backbone_weights_load(released_file, head):
    path, state = released_file
    body = _segmenter(head, backbone_weights=str(path)).body.state_dict()
    for released_key in ('stem_conv1.weight', 'relative_pos_c', 'blocks_c.9.attn.k.weight',
                         'blocks_d.1.mlp.conv2.1.running_var'):
        ours = convert_released_key(released_key).replace('stages.', 'stages_', 1)
        torch.testing.assert_close(body[ours], state[released_key])


def test_our_safetensors_weights_load(tmp_path):
    torch.manual_seed(1)
    classifier = timm.create_model('cmt_ti', num_classes=10)
    path = tmp_path / 'model.safetensors'
    safetensors.torch.save_file(classifier.state_dict(), str(path))
    model = _segmenter('fpn', backbone_weights=path)
    torch.testing.assert_close(model.body.stages_3.blocks[1].attn.q.weight, classifier.stages[3].blocks[1].attn.q.weight)


def test_leftover_entries_and_bad_arguments_are_named(released_file, tmp_path):
    _, state = released_file
    path = tmp_path / 'leftover.pth'
    torch.save({'model': dict(state, **{'decode_head.conv_seg.weight': torch.zeros(3)})}, path)
    with pytest.raises(InputError, match='decode_head.conv_seg.weight'):
        _segmenter('upernet', backbone_weights=str(path))
    with pytest.raises(InputError, match='not found'):
        _segmenter('fpn', backbone_weights=str(tmp_path / 'absent.pth'))
    with pytest.raises(InputError, match="unknown segmentation head 'deeplab'"):
        build_segmenter('deeplab', 'cmt_ti', 5)
    with pytest.raises(InputError, match='cmt_q'):
        build_segmenter('fpn', 'cmt_q', 5)
    with pytest.raises(InputError, match='num_classes'):
        build_segmenter('fpn', 'cmt_ti', 0)


@pytest.mark.parametrize('arch', [smp.FPN, smp.Unet, smp.UPerNet], ids=lambda a: a.__name__)
def test_smp_models_on_a_cmt_encoder(arch):
    """smp's own models on `tu-cmt_ti`, any input size once `dynamic_img_size=True` passes through."""
    torch.manual_seed(0)
    narrow = {smp.UPerNet: dict(decoder_channels=64)}.get(arch, {})
    model = arch(encoder_name='tu-cmt_ti', encoder_weights=None, classes=5, dynamic_img_size=True, **narrow)
    for size in ((128, 128), (96, 160)):  # multiples of 32, as smp asks
        logits = _forward_backward(model, *size)
        assert logits.shape == (2, 5, *size)
    assert all(p.grad is not None for p in model.encoder.parameters())


def test_smp_encoder_takes_cmt_weights_through_timm(tmp_path):
    """A CMT checkpoint reaches smp's timm encoder as timm's own pretrained file (through the filter)."""
    torch.manual_seed(1)
    classifier = timm.create_model('cmt_ti', num_classes=10)
    path = tmp_path / 'model.safetensors'
    safetensors.torch.save_file(classifier.state_dict(), str(path))
    model = smp.FPN(encoder_name='tu-cmt_ti', encoder_weights=True, classes=5, dynamic_img_size=True,
                    pretrained_cfg_overlay=dict(file=str(path), num_classes=10))
    torch.testing.assert_close(model.encoder.model.stages_3.blocks[1].attn.q.weight,
                               classifier.stages[3].blocks[1].attn.q.weight)


def test_a_segmenter_in_bf16_runs_its_cmt_and_head_in_bfloat16_and_returns_float32_logits():
    from cmtnet.models.fast_path import FastCMTBlock
    from cmtnet.runtime import InPrecision
    from cmtnet.segmentation.models import segmenter_in_precision
    model = _segmenter('fpn', num_classes=3, **NARROW['fpn']).eval()
    assert segmenter_in_precision(model, 'fp32', torch.device('cpu')) is model
    fast = segmenter_in_precision(model, 'bf16', torch.device('cpu'))
    assert all(isinstance(getattr(fast, part), InPrecision) for part in ('body', 'decoder', 'classifier'))
    assert {p.dtype for part in (fast.body, fast.decoder, fast.classifier) for p in part.parameters()} == {torch.bfloat16}
    assert fast.mean.dtype == fast.std.dtype == torch.float32  # the input is normalised in float32
    assert any(isinstance(m, FastCMTBlock) for m in fast.modules())  # folded, on the CPU fast path
    assert not any(isinstance(m, FastCMTBlock) for m in model.modules())  # the fp32 model is left as it was
    images = torch.rand(2, 3, 70, 90, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        ours, theirs = fast(images), model(images)
    assert ours.dtype == torch.float32 and ours.shape == theirs.shape == (2, 3, 70, 90)
    assert (ours.argmax(1) == theirs.argmax(1)).float().mean() > 0.9
    with pytest.raises(InputError, match='fp16'):
        segmenter_in_precision(model, 'fp16', torch.device('cpu'))
