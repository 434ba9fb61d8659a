"""The detectors on a CMT backbone: torchvision's classes, losses and outputs, any input size, backbone
weights in (and leftovers out), frozen stages and BatchNorm through an optimizer step, bad arguments."""
import pytest
import safetensors.torch
import timm
import torch
import torch.nn as nn
from torchvision.models.detection import FCOS, FasterRCNN, MaskRCNN, RetinaNet
from torchvision.ops.misc import FrozenBatchNorm2d

from cmtnet.detection import DETECTORS, HAS_BACKGROUND, build_detector, cmt_fpn_backbone
from cmtnet.errors import InputError
from cmtnet.models.released import convert_released_key
from released import make_state, released_keys

CLASSES = {'retinanet': RetinaNet, 'fcos': FCOS, 'fasterrcnn': FasterRCNN, 'maskrcnn': MaskRCNN}
LOSSES = {
    'retinanet': {'classification', 'bbox_regression'},
    'fcos': {'classification', 'bbox_regression', 'bbox_ctrness'},
    'fasterrcnn': {'loss_classifier', 'loss_box_reg', 'loss_objectness', 'loss_rpn_box_reg'},
    'maskrcnn': {'loss_classifier', 'loss_box_reg', 'loss_objectness', 'loss_rpn_box_reg', 'loss_mask'},
}
# few proposals and detections: the R-CNN heads then cost little on a CPU
SMALL = {
    'retinanet': dict(detections_per_img=10, topk_candidates=50),
    'fcos': dict(detections_per_img=10, topk_candidates=50),
    'fasterrcnn': dict(rpn_pre_nms_top_n_train=64, rpn_post_nms_top_n_train=32, rpn_pre_nms_top_n_test=64,
                       rpn_post_nms_top_n_test=16, box_batch_size_per_image=16, box_detections_per_img=8),
}
SMALL['maskrcnn'] = SMALL['fasterrcnn']


def _detector(detector, variant='cmt_ti', num_classes=4, **kwargs):
    torch.manual_seed(0)
    return build_detector(detector, variant, num_classes, min_size=96, max_size=160, **SMALL[detector], **kwargs)


def _images_and_targets(detector):
    g = torch.Generator().manual_seed(0)
    images = [torch.rand(3, 96, 150, generator=g), torch.rand(3, 90, 128, generator=g)]
    first = 1 if HAS_BACKGROUND[detector] else 0
    targets = []
    for img, boxes, labels in zip(images, ([[10., 12., 50., 70.], [60., 20., 120., 80.]], [[8., 6., 60., 50.]]),
                                  ([first, first + 2], [first + 1])):
        masks = torch.zeros(len(boxes), *img.shape[1:], dtype=torch.uint8)
        for m, (x0, y0, x1, y1) in zip(masks, boxes):
            m[int(y0):int(y1), int(x0):int(x1)] = 1
        targets.append(dict(boxes=torch.tensor(boxes), labels=torch.tensor(labels), masks=masks))
    return images, targets


@pytest.mark.parametrize('detector', list(DETECTORS))
def test_training_losses_and_inference_outputs(detector):
    model = _detector(detector)
    assert type(model) is CLASSES[detector]
    images, targets = _images_and_targets(detector)
    model.train()
    losses = model(images, targets)
    assert set(losses) == LOSSES[detector]
    assert all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    stem_grad = model.backbone.body.stem.conv1.weight.grad
    bias_grad = model.backbone.body.stages_0.rel_pos_bias.grad
    assert stem_grad is not None and torch.isfinite(stem_grad).all() and stem_grad.abs().sum() > 0
    assert bias_grad is not None and torch.isfinite(bias_grad).all() and bias_grad.abs().sum() > 0

    model.eval()
    with torch.no_grad():
        out = model(images)
    expected = {'boxes', 'labels', 'scores'} | ({'masks'} if detector == 'maskrcnn' else set())
    assert len(out) == 2 and all(set(o) == expected for o in out)
    for o, img in zip(out, images):
        assert o['boxes'].shape == (len(o['scores']), 4)
        if detector == 'maskrcnn':
            assert o['masks'].shape == (len(o['scores']), 1, *img.shape[1:])


@pytest.mark.parametrize('detector', list(DETECTORS))
def test_second_variant_builds_and_runs(detector):
    model = _detector(detector, 'cmt_xs').eval()
    assert type(model) is CLASSES[detector]
    assert model.backbone.body.feature_info.channels()[-1] == 416  # CMT-XS's last stage
    with torch.no_grad():
        out = model([torch.rand(3, 64, 96)])
    assert set(out[0]) >= {'boxes', 'labels', 'scores'}


@pytest.mark.parametrize('pyramid, strides', [('one_stage', (8, 16, 32, 64, 128)), ('two_stage', (4, 8, 16, 32, 64))])
def test_pyramid_levels_and_channels(pyramid, strides):
    backbone = cmt_fpn_backbone('cmt_ti', pyramid).eval()
    with torch.no_grad():
        features = backbone(torch.rand(1, 3, 256, 384))
    assert backbone.out_channels == 256
    assert [f.shape[1] for f in features.values()] == [256] * 5
    assert [(256 // f.shape[2], 384 // f.shape[3]) for f in features.values()] == [(s, s) for s in strides]


@pytest.mark.parametrize('detector', ['retinanet', 'maskrcnn'])
def test_odd_input_size(detector):
    """300x451 is no multiple of 32: torchvision pads it; the outputs are in the image's own frame."""
    model = build_detector(detector, 'cmt_ti', 4, min_size=300, max_size=451, **SMALL[detector],
                           **({'box_score_thresh': 0.} if detector == 'maskrcnn' else {'score_thresh': 0.}))
    model.eval()
    with torch.no_grad():
        out = model([torch.rand(3, 300, 451)])[0]
    assert len(out['boxes']) > 0
    assert (out['boxes'][:, [0, 2]] <= 451).all() and (out['boxes'][:, [1, 3]] <= 300).all()
    if detector == 'maskrcnn':
        assert out['masks'].shape[-2:] == (300, 451)


@pytest.fixture(scope='module')
def released_file(tmp_path_factory):
    state = make_state(released_keys('cmt_ti'), seed=5)
    path = tmp_path_factory.mktemp('weights') / 'cmt_tiny.pth'
    torch.save({'model': state}, path)
    return path, state


def test_released_backbone_weights_load(released_file):
    path, state = released_file
    model = _detector('retinanet', backbone_weights=str(path))
    body = model.backbone.body.state_dict()
    for released_key in ('stem_conv1.weight', 'relative_pos_c', 'blocks_c.9.attn.k.weight',
                         'blocks_d.1.mlp.conv2.1.running_var'):
        ours = convert_released_key(released_key).replace('stages.', 'stages_', 1)
        torch.testing.assert_close(body[ours], state[released_key])
    # loaded weights default to frozen BatchNorm, as torchvision's pretrained backbones
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model.backbone.body.modules())
    assert any(isinstance(m, FrozenBatchNorm2d) for m in model.backbone.body.modules())


def test_our_safetensors_weights_load(tmp_path):
    torch.manual_seed(1)
    classifier = timm.create_model('cmt_ti', num_classes=10)
    path = tmp_path / 'model.safetensors'
    safetensors.torch.save_file(classifier.state_dict(), str(path))
    model = _detector('fcos', backbone_weights=str(path), batch_norm='train')
    torch.testing.assert_close(model.backbone.body.stages_3.blocks[1].attn.q.weight,
                               classifier.stages[3].blocks[1].attn.q.weight)


def test_leftover_and_missing_backbone_entries_are_errors(released_file, tmp_path):
    _, state = released_file
    leftover = dict(state, **{'neck.lateral.weight': torch.zeros(3)})
    path = tmp_path / 'leftover.pth'
    torch.save({'model': leftover}, path)
    with pytest.raises(InputError, match='neck.lateral.weight'):
        _detector('retinanet', backbone_weights=str(path))

    missing = {k: v for k, v in state.items() if k != 'blocks_b.1.attn.q.weight'}
    torch.save({'model': missing}, path)
    with pytest.raises(InputError, match='missing'):
        _detector('maskrcnn', backbone_weights=str(path))

    with pytest.raises(InputError, match='cmt_xs'):
        _detector('retinanet', 'cmt_xs', backbone_weights=str(released_file[0]))
    with pytest.raises(InputError, match='not found'):
        _detector('retinanet', backbone_weights=str(tmp_path / 'absent.pth'))


def _snapshot(module):
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _train_step(model, detector='retinanet'):
    images, targets = _images_and_targets(detector)
    model.train()
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    sum(model(images, targets).values()).backward()
    optimizer.step()


def test_frozen_stages_and_batch_norm_stay_frozen():
    model = _detector('retinanet', trainable_stages=2, batch_norm='train')
    body = model.backbone.body
    before = _snapshot(body)
    _train_step(model)
    after = body.state_dict()
    frozen = ('stem.', 'stages_0.', 'stages_1.')
    for key, old in before.items():
        changed = not torch.equal(old, after[key])
        if key.startswith(frozen):
            assert not changed, f'{key} changed in a frozen stage'
        elif key.endswith(('running_mean', 'rel_pos_bias', 'attn.q.weight')):
            assert changed, f'{key} did not train'
    assert all(p.grad is None for n, p in body.named_parameters() if n.startswith(frozen))


def test_eval_batch_norm_keeps_statistics_and_learns_affine():
    model = _detector('maskrcnn', batch_norm='eval')
    body = model.backbone.body
    before = _snapshot(body)
    _train_step(model, 'maskrcnn')
    batch_norms = [m for m in body.modules() if isinstance(m, nn.BatchNorm2d)]
    assert batch_norms and not any(m.training for m in batch_norms)
    after = body.state_dict()
    stats = [k for k in before if k.endswith(('running_mean', 'running_var'))]
    assert stats and all(torch.equal(before[k], after[k]) for k in stats)
    assert not torch.equal(before['stages_2.blocks.0.mlp.norm1.weight'], after['stages_2.blocks.0.mlp.norm1.weight'])


def test_whole_backbone_frozen():
    model = _detector('fasterrcnn', trainable_stages=0)
    assert not any(p.requires_grad for p in model.backbone.body.parameters())
    assert all(p.requires_grad for p in model.backbone.fpn.parameters())


def test_anchor_sizes_for_small_objects():
    sizes = ((16,), (24,), (32,), (48,), (64,))
    retinanet = _detector('retinanet', anchor_sizes=sizes)
    assert retinanet.anchor_generator.sizes == sizes
    assert retinanet.head.classification_head.num_anchors == 3  # torchvision's three aspect ratios
    fcos = _detector('fcos', anchor_sizes=sizes)
    assert fcos.anchor_generator.aspect_ratios == ((1.0,),) * 5
    maskrcnn = _detector('maskrcnn', anchor_sizes=sizes)
    assert maskrcnn.rpn.anchor_generator.sizes == sizes


@pytest.mark.parametrize('call, match', [
    (lambda: build_detector('yolo', 'cmt_ti', 3), "'yolo'"),
    (lambda: build_detector('retinanet', 'cmt_m', 3), "'cmt_m'"),
    (lambda: build_detector('maskrcnn', 'cmt_ti', 1), 'including the background'),
    (lambda: build_detector('retinanet', 'cmt_ti', 3, trainable_stages=5), 'trainable_stages.*5'),
    (lambda: build_detector('retinanet', 'cmt_ti', 3, batch_norm='off'), "batch_norm.*'off'"),
    (lambda: build_detector('fcos', 'cmt_ti', 3, min_size=0), 'min_size'),
    (lambda: build_detector('retinanet', 'cmt_ti', 3, anchor_sizes=((32,), (64,))), 'anchor_sizes.*5'),
    (lambda: build_detector('retinanet', 'cmt_ti', 3, anchor_sizes=((32,),) * 4 + ((64, 90),)), 'same number'),
])
def test_bad_arguments_are_named(call, match):
    with pytest.raises(InputError, match=match):
        call()
