"""The benchmark library: interleaved timing, options that name bad values, a tiny end-to-end run."""
import pytest
import torch

from cmtnet.analysis.speed import (
    CMT_PATHS, PEER_PATHS, BenchOptions, bench_table, build_step, interleaved, peak_memory, run_bench,
)
from cmtnet.cli import main
from cmtnet.errors import InputError
from cmtnet.models.variants import PUBLISHED


def test_interleaved_warms_up_then_takes_turns():
    calls = []
    steps = {name: (lambda name=name: calls.append(name)) for name in ('a', 'b', 'c')}
    warm, times = interleaved(steps, warmup=2, rounds=3)
    assert calls == ['a', 'a', 'b', 'b', 'c', 'c'] + ['a', 'b', 'c'] * 3
    assert set(warm) == set(times) == {'a', 'b', 'c'} and all(len(t) == 3 for t in times.values())


@pytest.mark.parametrize('kwargs, bad', [
    (dict(paths=['warp']), "'warp'"), (dict(models=['no_such_net']), "'no_such_net'"),
    (dict(baseline='cmt_s'), "'cmt_s'"), (dict(rounds=0), '0'),
    (dict(device='cuda', paths=['onnxruntime']), 'cuda')])
def test_bad_options_name_the_value(kwargs, bad):
    with pytest.raises(InputError, match=bad):
        BenchOptions(**kwargs)


def test_tiny_run_reports_every_path_against_the_baseline():
    options = BenchOptions(models=['cmt_ti'], paths=['eager', 'fused_cl', 'compiled'], baseline='cmt_ti:eager',
                           batch_size=1, warmup=0, rounds=2)
    results = run_bench(options, log=lambda msg: None)
    assert [(r.model, r.path) for r in results] == [('cmt_ti', 'eager'), ('cmt_ti', 'fused_cl')]  # 'compiled': peers
    assert all(r.img_size == 160 and len(r.seconds) == 2 and r.images_per_second > 0 for r in results)
    assert 0.6 < results[0].gmacs < 0.7  # cmt_ti at 160: 0.65 GMACs
    table = bench_table(results, options).splitlines()
    assert len(table) == 4 and '| cmt_ti | eager | 160 |' in table[2] and '| 1.00x |' in table[2]


def test_peak_memory_is_measured_in_a_process_of_its_own():
    weights_mib = PUBLISHED['cmt_ti'].released_params * 4 / 2 ** 20  # cmt_ti's parameters in fp32
    # the child's own figure: the weights and a batch's activations, not this test process's memory
    assert weights_mib < peak_memory('cmt_ti', 'eager', 4) < 1024


def test_bench_command_prints_the_table_and_draws_the_chart(tmp_path, capsys):
    chart = tmp_path / 'speed.png'
    argv = ['bench', '--models', 'cmt_ti', '--paths', 'eager', 'fused', '--baseline', 'cmt_ti:fused',
            '--batch-size', '1', '--warmup', '0', '--rounds', '1', '--chart', str(chart)]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert '| cmt_ti | fused | 160 |' in out and 'baseline cmt_ti:fused' in out
    assert chart.read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'


def test_the_default_paths_name_each_mode_once():
    paths = BenchOptions().paths
    assert len(paths) == len(set(paths)) and set(paths) == set(CMT_PATHS) | set(PEER_PATHS)


def test_a_compiled_step_freezes_for_its_own_calls_only(monkeypatch, tmp_path):
    import torch._inductor.config as inductor
    seen = []

    def compile_later(model, **kwargs):  # as torch.compile: the compile happens at the first call
        def compiled(x):
            seen.append(inductor.freezing)
            return model(x)
        return compiled

    monkeypatch.setattr(torch, 'compile', compile_later)
    before = inductor.freezing
    step = build_step('cmt_ti', 'fused_compiled', 1, torch.device('cpu'), None, str(tmp_path), 0)
    assert inductor.freezing == before
    step()
    assert seen == [True] and inductor.freezing == before


def test_the_runs_threads_are_restored_after_it():
    before = torch.get_num_threads()
    seen = []
    options = BenchOptions(models=['cmt_ti'], paths=['eager'], baseline='cmt_ti:eager', batch_size=1, warmup=0,
                           rounds=1, threads=before + 1)
    run_bench(options, log=lambda msg: seen.append(torch.get_num_threads()))
    assert seen and set(seen) == {before + 1}
    assert torch.get_num_threads() == before
