"""`cmtnet serve` loads its model on the thread that runs it: one OpenMP team, as in a bare forward."""
import threading
import time

import torch
from starlette.testclient import TestClient

import cmtnet.serve.handlers as handlers
from cmtnet.serve.app import Limits, create_app
from cmtnet.serve.command import ServeOptions, loaded_on_model_thread

from servers import classifier_checkpoint, photo


def test_the_model_is_loaded_warmed_up_and_run_on_one_thread_in_the_state_of_a_bare_forward(tmp_path, monkeypatch):
    loads, forwards = [], []
    load = handlers.load_handler
    monkeypatch.setattr(handlers, 'load_handler', lambda options: (loads.append(threading.get_ident()), load(options))[1])
    handler, thread = loaded_on_model_thread(ServeOptions(checkpoint=str(classifier_checkpoint(tmp_path / 'c.safetensors'))))
    handler.model.register_forward_pre_hook(lambda module, args: forwards.append((
        threading.get_ident(), torch.is_inference_mode_enabled(), torch.is_autocast_enabled('cpu'),
        torch.get_num_threads())))
    image = photo(tmp_path / 'x.png', seed=1).read_bytes()
    with TestClient(create_app(handler, Limits(), thread)) as client:
        deadline = time.monotonic() + 120
        while client.get('/ready').status_code != 200 and time.monotonic() < deadline:
            time.sleep(0.05)
        answer = client.post('/predict', content=image, headers={'Content-Type': 'image/png'})
    assert answer.status_code == 200, answer.text
    assert len(forwards) >= 3  # warm-up at batch 1 and 16, then the request
    # loaded, warmed up and run on one thread, not the caller's: OpenMP keeps one team for all of it
    assert len(loads) == 1 and loads[0] != threading.get_ident()
    assert {ident for ident, *_ in forwards} == set(loads)
    with torch.inference_mode():  # a bare forward's state, on this thread
        bare = (torch.is_inference_mode_enabled(), torch.is_autocast_enabled('cpu'), torch.get_num_threads())
    assert {tuple(state) for _, *state in forwards} == {bare}
