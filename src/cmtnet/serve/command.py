"""`cmtnet serve`: its options and the server process (uvicorn).

The process binds `--host:--port`, loads and warms the model, and answers until SIGINT or SIGTERM; then it
stops taking connections, finishes the requests in flight and exits 0.
"""
import logging
import os
import signal
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Optional, Tuple

from ..engine.options import command_parser, device_option, option, precision_option
from ..errors import InputError

if TYPE_CHECKING:
    from .handlers import Handler

__all__ = ['API_KEY_VARIABLE', 'ServeOptions', 'add_parser', 'loaded_on_model_thread', 'serve_command']

API_KEY_VARIABLE = 'CMTNET_API_KEY'


@dataclass
class ServeOptions:
    """`cmtnet serve`: which weights, where, and how much the service takes."""
    checkpoint: Optional[str] = option(
        None, metavar='PATH', required=True,
        help='weights to serve: classification .safetensors / .pth (a released one with --model), an int8 program '
             '(cmtnet quantize, .pt2), or the weights of a detection or segmentation run')
    model: Optional[str] = option(None, metavar='NAME', help='CMT variant of a classification checkpoint',
                                  unset='the one named in the checkpoint')
    img_size: Optional[int] = option(None, metavar='N', help='classification input side, a multiple of 32',
                                     unset='the checkpoint\'s')
    host: str = option('127.0.0.1', help='address to bind (0.0.0.0: every interface)')
    port: int = option(8000, help='port to bind')
    device: Optional[str] = device_option()
    precision: str = precision_option()
    compile: bool = option(False, help='compile the classifier (torch.compile) for its batch sizes before '
                                       'serving; an int8 program is compiled always')
    max_batch_size: int = option(16, metavar='N', help='most requests in one forward')
    batch_timeout: float = option(5.0, metavar='MS', help='longest wait, in milliseconds, for a batch to fill')
    max_queue: int = option(256, metavar='N', help='most requests waiting; past it the answer is 503')
    max_upload_mb: float = option(20.0, metavar='MB', help='largest upload accepted')
    api_key: Optional[str] = option(None, metavar='KEY', help='require Authorization: Bearer KEY on /predict, '
                                                              f'/cam and /info (or set {API_KEY_VARIABLE})',
                                    unset='no key')
    config: Optional[str] = option(None, metavar='YAML', help='YAML file of options (the command line wins)')


def _check(o: ServeOptions) -> None:
    for flag, value, low in (('--max-batch-size', o.max_batch_size, 1), ('--max-queue', o.max_queue, 1),
                             ('--port', o.port, 0)):
        if value < low:
            raise InputError(f'{flag} must be at least {low}, got {value}')
    if o.batch_timeout < 0:
        raise InputError(f'--batch-timeout must be 0 or more milliseconds, got {o.batch_timeout}')
    if o.max_upload_mb <= 0:
        raise InputError(f'--max-upload-mb must be positive, got {o.max_upload_mb}')


def loaded_on_model_thread(options: ServeOptions) -> Tuple['Handler', ThreadPoolExecutor]:
    """The handler of `options`, loaded on the model's thread (`batching.model_thread`), and that thread, which
    is to run all of its torch work."""
    from .batching import model_thread
    from .handlers import load_handler
    thread = model_thread()
    try:
        return thread.submit(load_handler, options).result(), thread
    except BaseException:
        thread.shutdown()
        raise


def serve_command(options: ServeOptions) -> int:
    """Serve until SIGINT or SIGTERM; 0 once the requests in flight are answered."""
    import uvicorn

    from .app import Limits, create_app
    _check(options)
    api_key = options.api_key or os.environ.get(API_KEY_VARIABLE) or None
    handler, thread = loaded_on_model_thread(options)
    limits = Limits(options.max_batch_size, options.batch_timeout / 1000, options.max_queue,
                    int(options.max_upload_mb * 2 ** 20), api_key)
    logging.getLogger('cmtnet.serve').setLevel(logging.INFO)
    info = handler.info
    print(f'cmtnet serve: {info["model"]} {info["task"]} ({info["precision"]}) from {options.checkpoint} at '
          f'http://{options.host}:{options.port} (batches of up to {limits.max_batch_size} within '
          f'{options.batch_timeout:g} ms, queue {limits.max_queue}{", API key required" if api_key else ""})',
          flush=True)
    config = uvicorn.Config(create_app(handler, limits, thread), host=options.host, port=options.port,
                            log_level='info', timeout_graceful_shutdown=60)
    server = uvicorn.Server(config)
    # uvicorn shuts down gracefully on SIGTERM, then raises the signal again for the handler it found; with
    # the default one that kills the process, and a clean stop would not exit 0
    signal.signal(signal.SIGTERM, lambda signum, frame: None)
    server.run()
    return 0 if server.started else 1


add_parser = command_parser(
    'serve', ServeOptions, serve_command,
    help='serve a checkpoint over HTTP: dynamic batching, a web page, metrics',
    description='Serve a classification, detection or segmentation checkpoint over HTTP: POST /predict '
                'answers in the Hugging Face Inference API\'s JSON, / is a web page that draws the result, '
                '/metrics is Prometheus text. Requests arriving together share one forward. SIGTERM '
                'finishes the requests in flight, then exits.')
