"""`cmtnet export --quantize int8`: onnxruntime's static QDQ quantization, calibrated on a folder of images."""
import contextlib
import io

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import timm
import torch
from onnx import numpy_helper
from PIL import Image, ImageDraw

import cmtnet  # noqa: F401  (registers the models)
from cmtnet.checkpoints import create_model, export_weights
from cmtnet.classification.data import eval_transform
from cmtnet.cli import main
from cmtnet.deploy.export import ExportOptions
from cmtnet.errors import InputError

SIZE = 64


def _shapes(path, count, seed):
    """`count` PNGs of coloured boxes and ellipses on a gradient: images with structure, unlike noise."""
    rng = np.random.default_rng(seed)
    path.mkdir()
    for i in range(count):
        ramp = np.linspace(0, 1, SIZE)[None, :, None] * rng.uniform(0, 255, 3)
        img = Image.fromarray(np.broadcast_to(ramp, (SIZE, SIZE, 3)).astype(np.uint8))
        draw = ImageDraw.Draw(img)
        for _ in range(3):
            x0, y0 = rng.integers(0, SIZE - 16, 2)
            w, h = rng.integers(8, 32, 2)
            shape = draw.rectangle if rng.random() < 0.5 else draw.ellipse
            shape([int(x0), int(y0), int(x0 + w), int(y0 + h)], fill=tuple(int(c) for c in rng.integers(0, 256, 3)))
        img.save(path / f'{i:03d}.png')
    return path


@pytest.fixture(scope='module')
def exported(tmp_path_factory):
    """(int8 file, its checkpoint, what the command printed): a fresh 10-class cmt_ti whose checkpoint says it
    takes 64 px, calibrated on 16 images of a folder and checked on the other 24. (Randomised norms would
    leave its top two logits within a rounding of each other on every image: agreement would mean nothing.)"""
    tmp = tmp_path_factory.mktemp('int8')
    torch.manual_seed(0)
    model = timm.create_model('cmt_ti', num_classes=10, img_size=SIZE)
    checkpoint = tmp / 'model.safetensors'
    export_weights(checkpoint, model.state_dict(),
                   dict(model='cmt_ti', img_size=SIZE, num_classes=10, crop_pct=1.0, interpolation='bicubic'))
    out = tmp / 'cmt_ti_int8.onnx'
    images = _shapes(tmp / 'calibration', 40, seed=0)
    printed = io.StringIO()  # capsys is per test, the export once per module
    with contextlib.redirect_stdout(printed):
        status = main(['export', 'cmt_ti', '--checkpoint', str(checkpoint), '--quantize', 'int8', '-o', str(out),
                       '--calibration-images', str(images), '--calibration-size', '16'])
    assert status == 0
    return out, checkpoint, printed.getvalue()


def test_command_reports_the_check_on_held_out_images(exported):
    out, _, printed = exported
    assert out.is_file() and f'wrote {out}' in printed
    assert f'int8 check at {SIZE}x{SIZE} on 24 held-out images' in printed
    agreement = float(printed.split('agreement with the eager model ')[1].split('%')[0]) / 100
    assert agreement >= 0.8, printed


def test_int8_file_agrees_with_the_eager_model_on_new_images(exported, tmp_path):
    out, checkpoint, _ = exported
    reference = create_model('cmt_ti', checkpoint, img_size=SIZE).eval()
    transform = eval_transform(SIZE, 1.0, 'bicubic')
    folder = _shapes(tmp_path / 'new', 32, seed=1)
    x = torch.stack([transform(Image.open(p).convert('RGB')) for p in sorted(folder.iterdir())])
    session = ort.InferenceSession(str(out), providers=['CPUExecutionProvider'])
    got = torch.from_numpy(session.run(None, {'images': x.numpy()})[0])
    with torch.no_grad():
        expected = reference(x)
    assert got.shape == (32, 10)
    assert (got.argmax(1) == expected.argmax(1)).float().mean() >= 0.8
    assert ((got - expected).abs().max() / expected.abs().max()) <= 0.3  # int8: close, not equal
    assert not torch.allclose(got, expected, rtol=0, atol=1e-4)  # the file really computes in int8


def test_graph_is_quantized_per_channel_at_a_fixed_size(exported):
    out, _, _ = exported
    graph = onnx.load(str(out)).graph
    dims = graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_param or d.dim_value for d in dims] == ['batch', 3, SIZE, SIZE]
    ops = [n.op_type for n in graph.node]
    assert ops.count('QuantizeLinear') >= 100 and ops.count('DequantizeLinear') >= 100
    producer = {o: n for n in graph.node for o in n.output}
    constants = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    computing = [n for n in graph.node if n.op_type in ('Conv', 'MatMul')]
    assert {'Conv', 'MatMul'} <= {n.op_type for n in computing}
    for node in computing:  # activations and weights both come in through a DequantizeLinear
        assert all(producer[i].op_type == 'DequantizeLinear' for i in node.input[:2]), node.name
    classifier, = (n for n in graph.node if n.op_type == 'Gemm')  # stays float
    assert producer[classifier.input[0]].op_type != 'DequantizeLinear' and classifier.input[1] in constants
    for conv in (n for n in computing if n.op_type == 'Conv'):
        weight = producer[conv.input[1]]
        assert constants[weight.input[0]].dtype == np.int8
        assert constants[weight.input[1]].size == constants[weight.input[0]].shape[0] > 1  # a scale per channel


def test_torchscript_int8_is_refused(tmp_path, capsys):
    with pytest.raises(InputError, match='--format onnx, not --format torchscript'):
        ExportOptions('cmt_ti', output=tmp_path / 'x.pt', format='torchscript', quantize='int8')
    out = tmp_path / 'x.pt'
    assert main(['export', 'cmt_ti', '--format', 'torchscript', '--quantize', 'int8', '-o', str(out)]) == 2
    assert '--quantize int8' in capsys.readouterr().err and not out.exists()


@pytest.mark.parametrize('kwargs, bad', [
    (dict(quantize='int4'), "'int4'"),
    (dict(quantize='int8', calibration_size=0), '--calibration-size must be positive, got 0'),
    (dict(quantize='int8', check_sizes=[64]), '--check-sizes'),
    (dict(quantize='int8', calibration_images='a', data='b'), 'not both'),
    (dict(calibration_images='a'), 'not given'),
])
def test_bad_int8_options_name_the_problem(kwargs, bad, tmp_path):
    with pytest.raises(InputError, match=bad):
        ExportOptions('cmt_ti', output=tmp_path / 'x.onnx', **kwargs)
