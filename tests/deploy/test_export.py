"""Export of the fused model: ONNX (onnxruntime) and TorchScript parity at two sizes, compile parity."""
import onnx
import pytest
import timm
import torch
from timm.utils import reparameterize_model

import cmtnet  # noqa: F401  (registers the models)
from cmtnet.cli import main
from cmtnet.errors import InputError
from cmtnet.deploy.export import ExportOptions, export_onnx, export_torchscript, parity
from norms import randomise_norms, rel_err


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


@pytest.mark.parametrize('kwargs, bad', [
    (dict(format='tflite'), "'tflite'"), (dict(opset=13), '13'), (dict(check_sizes=[100]), '100')])
def test_bad_export_options_name_the_value(kwargs, bad, tmp_path):
    with pytest.raises(InputError, match=bad):
        ExportOptions('cmt_ti', tmp_path / 'x', **kwargs)
