"""Export of the fused model: ONNX (onnxruntime) and TorchScript parity at two sizes, compile parity; the
ONNX file's metadata, and the documented onnxruntime client that reads it."""
import contextlib
import io
import json
import re

import numpy as np
import onnx
import pytest
import timm
import torch
from PIL import Image
from timm.utils import reparameterize_model

import cmtnet  # noqa: F401  (registers the models)
from cmtnet.checkpoints import export_weights
from cmtnet.cli import main
from cmtnet.errors import InputError
from cmtnet.deploy.export import ExportOptions, export_onnx, export_torchscript, parity
from markdown_blocks import ROOT, blocks
from norms import randomise_norms, rel_err

# what the tiny checkpoint below records of its training
META = dict(model='cmt_ti', img_size=32, num_classes=3, class_names=['cat', 'cup', 'person'], crop_pct=0.9,
            interpolation='bilinear')


@pytest.fixture(scope='module')
def models():
    """(unfused reference, fused) cmt_ti with non-trivial norms, any input size."""
    torch.manual_seed(0)
    reference = randomise_norms(timm.create_model('cmt_ti', dynamic_img_size=True)).eval()
    return reference, reparameterize_model(reference)


def test_onnx_matches_eager_at_two_sizes_with_dynamic_axes(models, tmp_path):
    reference, fused = models
    path = tmp_path / 'cmt_ti.onnx'
    export_onnx(fused, path, img_size=160, opset=17)
    graph = onnx.load(str(path))
    assert max(o.version for o in graph.opset_import if o.domain in ('', 'ai.onnx')) >= 17
    dims = graph.graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_param for d in dims] == ['batch', '', 'height', 'width']
    assert 'Resize' in {n.op_type for n in graph.graph.node}  # the position-bias resize is in the graph
    errors = parity(path, 'onnx', reference, [160, 96], batch_size=3)  # own size, and another size and batch
    assert all(err <= 1e-4 for err in errors.values()), errors


def test_torchscript_matches_eager_at_two_sizes(models, tmp_path):
    reference, fused = models
    path = tmp_path / 'cmt_ti.pt'
    export_torchscript(fused, path)
    errors = parity(path, 'torchscript', reference, [160, 64])
    assert all(err <= 1e-5 for err in errors.values()), errors


def test_compiled_fused_model_matches_eager():
    """Inductor on the fused model (one block per stage keeps compiling short; every fused part is there)."""
    torch.manual_seed(0)
    reference = randomise_norms(timm.create_model('cmt_ti', depths=(1, 1, 1, 1), img_size=64)).eval()
    compiled = torch.compile(reparameterize_model(reference), dynamic=False)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert rel_err(compiled(x), reference(x)) <= 1e-5


def test_export_command_writes_a_checked_file(tmp_path, capsys):
    out = tmp_path / 'ti.onnx'
    assert main(['export', 'cmt_ti', '--format', 'onnx', '--output', str(out), '--check-sizes', '64']) == 0
    printed = capsys.readouterr().out
    assert out.is_file() and 'onnx parity at 64x64' in printed
    err = float(printed.split('= ')[1].split()[0])
    assert err <= 1e-4
    # without a checkpoint: the variant's own size, ImageNet's labels
    assert 'ONNX metadata: model cmt_ti; img_size 160; crop_pct 0.875; interpolation bicubic; ' in printed
    assert '... (1000 names)]' in printed


@pytest.fixture(scope='module')
def exported(tmp_path_factory):
    """(folder, what `cmtnet export --checkpoint` printed): a 32 px cmt_ti checkpoint of 3 classes, as training
    writes it, exported to cmt_ti.onnx without naming the model."""
    folder = tmp_path_factory.mktemp('exported')
    torch.manual_seed(0)
    model = randomise_norms(timm.create_model('cmt_ti', img_size=32, num_classes=3))
    export_weights(folder / 'model.safetensors', model.state_dict(), META)
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert main(['export', '--checkpoint', str(folder / 'model.safetensors'), '-o',
                     str(folder / 'cmt_ti.onnx')]) == 0
    return folder, printed.getvalue()


def test_the_onnx_file_carries_its_classes_and_preprocessing_and_parity_is_at_the_checkpoints_size(exported):
    folder, printed = exported
    props = {p.key: p.value for p in onnx.load(str(folder / 'cmt_ti.onnx')).metadata_props}
    assert props == dict(model='cmt_ti', img_size='32', crop_pct='0.9', interpolation='bilinear',
                         mean='[0.485, 0.456, 0.406]', std='[0.229, 0.224, 0.225]',
                         class_names='["cat", "cup", "person"]')
    assert ('ONNX metadata: model cmt_ti; img_size 32; crop_pct 0.9; interpolation bilinear; '
            'mean [0.485, 0.456, 0.406]; std [0.229, 0.224, 0.225]; class_names ["cat", "cup", "person"]') in printed
    assert re.findall(r'onnx parity at (\d+)x', printed) == ['32', '64']  # the checkpoint's size, and another


def _client_code() -> str:
    """The python block of the docs' "An onnxruntime client" section, wherever the docs put it."""
    for path in [ROOT / 'README.md', *sorted((ROOT / 'docs').rglob('*.md'))]:
        lines = path.read_text().splitlines()
        heading = next((i + 1 for i, line in enumerate(lines) if re.match(r'#+ An onnxruntime client$', line)), None)
        if heading is not None:
            return next(b.code for b in blocks(path) if b.lang == 'python' and b.line > heading)
    raise AssertionError('no "An onnxruntime client" section with a python block in README.md or docs/')


def test_the_documented_onnxruntime_client_gives_predicts_class_and_probability(exported, monkeypatch, capsys):
    folder, _ = exported
    monkeypatch.chdir(folder)  # the client reads cmt_ti.onnx and photo.jpg where it runs
    pixels = np.random.default_rng(0).integers(0, 256, (41, 57, 3), dtype=np.uint8)  # wider than tall
    for name, image in (('photo.jpg', pixels), ('tall.jpg', pixels.transpose(1, 0, 2))):
        Image.fromarray(image).save(name)
        exec(compile(_client_code().replace("'photo.jpg'", repr(name)), 'the onnxruntime client', 'exec'), {})
        label, probability = capsys.readouterr().out.split()
        assert main(['predict', '--checkpoint', 'model.safetensors', '--json', name]) == 0
        best = json.loads(capsys.readouterr().out)['predictions'][0]
        assert label == best['label'] and float(probability) == pytest.approx(best['score'], abs=1e-4)


@pytest.mark.parametrize('kwargs, bad', [
    (dict(format='tflite'), "'tflite'"), (dict(opset=13), '13'), (dict(check_sizes=[100]), '100')])
def test_bad_export_options_name_the_value(kwargs, bad, tmp_path):
    with pytest.raises(InputError, match=bad):
        ExportOptions('cmt_ti', output=tmp_path / 'x', **kwargs)
