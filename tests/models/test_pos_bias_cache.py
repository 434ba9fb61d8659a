"""The position bias resized per grid, through the stage's GridCache: reused in eager inference, never
stale after the weights change, bounded, and out of the way wherever the resize must stay in the graph."""
import copy

import pytest
import timm
import torch

import cmtnet  # noqa: F401  (registers the models)
from cmtnet.models import pos_bias
from cmtnet.models.grid_cache import GridCache


@pytest.fixture
def resize_calls(monkeypatch):
    """Count the bias resizes the cache lets through (the eager path resolves the function at call time)."""
    calls = []
    original = pos_bias.resize_rel_pos_bias

    def counting(bias, old_grid, new_grid, sr_ratio):
        calls.append(tuple(new_grid))
        return original(bias, old_grid, new_grid, sr_ratio)

    monkeypatch.setattr(pos_bias, 'resize_rel_pos_bias', counting)
    return calls


def _model(**kwargs):
    torch.manual_seed(0)
    return timm.create_model('cmt_ti', num_classes=0, dynamic_img_size=True, **kwargs).eval()


def _uncached(model, x):
    """The output with every cache emptied before each stage runs (a fresh resize everywhere)."""
    for stage in model.stages:
        stage.bias_cache.clear()
    with torch.no_grad():
        out = model(x)
    for stage in model.stages:
        stage.bias_cache.clear()
    return out


def test_repeated_grid_is_not_resized_again(resize_calls):
    model = _model()
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        first = model(x)
        assert len(resize_calls) == 4  # one resize per stage
        second = model(x)
    assert len(resize_calls) == 4
    torch.testing.assert_close(first, second)


def test_new_weight_version_is_resized(resize_calls):
    model = _model()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        before = model(x)
        model.stages[0].rel_pos_bias.mul_(3.)  # an in-place update, as an optimizer step makes
        after = model(x)
    assert len(resize_calls) == 5  # only the changed stage again
    assert not torch.allclose(before, after)
    torch.testing.assert_close(after, _uncached(model, x))

    # loading a state_dict copies into the same tensors: the cache must notice too
    state = {k: v.clone() for k, v in model.state_dict().items()}
    state['stages.2.rel_pos_bias'] += 1.
    model.load_state_dict(state)
    with torch.no_grad():
        loaded = model(x)
    torch.testing.assert_close(loaded, _uncached(model, x))


def test_weights_made_in_inference_mode_are_cached(resize_calls):
    """A model converted under `torch.inference_mode` (to bfloat16, say) holds inference tensors, which keep
    no version counter: the cache must take them, and serve repeated grids from memory."""
    model = _model()
    x = torch.randn(1, 3, 64, 96)
    with torch.inference_mode():
        converted = copy.deepcopy(model).to(torch.bfloat16)
        assert next(converted.parameters()).is_inference()
        first = converted(x.to(torch.bfloat16))
        second = converted(x.to(torch.bfloat16))
    assert len(resize_calls) == 4
    torch.testing.assert_close(first, second)


def test_cache_is_lru_and_bounded():
    cache = GridCache(max_entries=2)
    source = torch.randn(3)
    computed = []

    def value(grid):
        return cache.get(grid, (source,), lambda: computed.append(grid) or source * grid[0])

    for grid in [(1, 1), (2, 2), (1, 1), (3, 3), (1, 1), (2, 2)]:
        torch.testing.assert_close(value(grid), source * grid[0])
    # (2, 2) was the least recently used when (3, 3) came, so it had to be computed again
    assert computed == [(1, 1), (2, 2), (3, 3), (2, 2)]
    assert len(cache) == 2
    with pytest.raises(ValueError, match='max_entries=0'):
        GridCache(max_entries=0)


def test_training_keeps_the_resize_in_the_graph(resize_calls):
    model = _model().train()
    x = torch.randn(2, 3, 64, 96)
    for _ in range(2):
        model(x).sum().backward()
    assert len(resize_calls) == 8  # resized on every forward, never cached
    assert all(len(stage.bias_cache) == 0 for stage in model.stages)
    for stage in model.stages:
        grad = stage.rel_pos_bias.grad
        assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0


def test_frozen_bias_is_cached_in_training(resize_calls):
    """A stage frozen for fine-tuning (no grad on its bias) reuses its resize even with grad enabled."""
    model = _model().train()
    model.stages[0].rel_pos_bias.requires_grad_(False)
    x = torch.randn(2, 3, 64, 64)
    model(x).sum().backward()
    model(x).sum().backward()
    assert resize_calls.count((16, 16)) == 1  # stage 0's grid, resized once
    assert model.stages[1].rel_pos_bias.grad is not None


def test_inference_mode_entries_stay_in_inference_mode():
    model = _model()
    model.stages[0].rel_pos_bias.requires_grad_(False)
    x = torch.randn(1, 3, 64, 64)
    with torch.inference_mode():
        model(x)
    # an inference tensor cannot be saved for backward; a cached one must not leak into training
    model.train()
    model(x).sum().backward()
    assert model.stages[1].rel_pos_bias.grad is not None


def test_script_and_trace_resize_at_other_sizes():
    model = _model()
    x_other = torch.randn(1, 3, 96, 64)
    expected = _uncached(model, x_other)
    scripted = torch.jit.script(model)
    with torch.no_grad():
        traced = torch.jit.trace(model, torch.randn(1, 3, 64, 64))
        torch.testing.assert_close(scripted(x_other), expected)
        torch.testing.assert_close(traced(x_other), expected)


def test_copies_start_empty():
    model = _model()
    with torch.no_grad():
        model(torch.randn(1, 3, 64, 64))
    assert len(model.stages[0].bias_cache) == 1
    assert len(copy.deepcopy(model).stages[0].bias_cache) == 0


def test_compiled_stage_resizes_in_its_graph():
    model = _model()
    stage = model.stages[3]  # the smallest stage keeps compiling quick
    x = torch.randn(1, 184, 4, 6)  # CMT-Ti stage 3 input: a 2x3 grid, not the native 5x5
    with torch.no_grad():
        expected = stage(x)
        stage.bias_cache.clear()
        compiled = torch.compile(stage, backend='eager')
        torch.testing.assert_close(compiled(x), expected)
    assert len(stage.bias_cache) == 0
