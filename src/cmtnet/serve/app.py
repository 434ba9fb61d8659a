"""The HTTP API of `cmtnet serve`, on FastAPI: predictions, activation maps, health, metrics, the page.

    POST /predict      one image (form field `image`, or a raw image/* body) -> the task's JSON
                       (Hugging Face Inference API); ?top_k= (classification), ?threshold= (detection)
    POST /cam          one image -> its top class's Grad-CAM overlay, {"image": "data:image/png;base64,..."}
    GET  /info         task, model, labels, precision, whether activation maps can be drawn
    GET  /health       alive;  GET /ready: the model is loaded and warmed up (503 until then)
    GET  /metrics      Prometheus text;  GET /docs: OpenAPI;  GET /: the page

Whatever the client sent wrong is answered 4xx with a one-line JSON `{"error": "..."}` that names it, and
the service goes on; a full queue is 503 with Retry-After. With an API key, /predict, /cam and /info
take `Authorization: Bearer KEY`; the key is compared in constant time and never logged.
"""
import asyncio
import hmac
import logging
import math
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass
from importlib import resources
from typing import Any, AsyncIterator, Awaitable, Callable, Optional

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException

from ..errors import InputError
from .batching import Batcher, QueueFull, Ticket
from .handlers import Handler, Params
from .metrics import CONTENT_TYPE_LATEST, ServiceMetrics
from .uploads import UploadError, decode_image, read_upload

__all__ = ['Limits', 'create_app']

_logger = logging.getLogger('cmtnet.serve')
_STATIC = resources.files('cmtnet.serve') / 'static'


@dataclass(frozen=True)
class Limits:
    """How much the service takes: batch size, batch wait (seconds), queue, upload size (bytes)."""
    max_batch_size: int = 16
    batch_timeout: float = 0.005
    max_queue: int = 256
    max_upload: int = 20 * 2 ** 20
    api_key: Optional[str] = None


def _error(status: int, message: str, headers: Optional[dict] = None) -> JSONResponse:
    return JSONResponse({'error': message}, status_code=status, headers=headers)


def _params(request: Request) -> Params:
    query = request.query_params
    unknown = sorted(set(query) - {'top_k', 'threshold'})
    if unknown:
        raise UploadError(400, f'unknown query parameter {unknown[0]!r}; expected top_k or threshold')
    try:
        top_k = int(query.get('top_k', 5))
    except ValueError:
        raise UploadError(400, f'top_k must be a whole number, got {query["top_k"]!r}') from None
    try:
        threshold = float(query.get('threshold', 0.5))
    except ValueError:
        raise UploadError(400, f'threshold must be a number, got {query["threshold"]!r}') from None
    if top_k < 1:
        raise UploadError(400, f'top_k must be at least 1, got {top_k}')
    if not 0 <= threshold <= 1:
        raise UploadError(400, f'threshold must be in [0, 1], got {threshold}')
    return Params(top_k, threshold)


async def _until_disconnected(request: Request) -> None:
    while (await request.receive())['type'] != 'http.disconnect':
        pass


def create_app(handler: Handler, limits: Limits = Limits()) -> FastAPI:
    """The service of `handler` within `limits`."""
    state: dict = {'ready': False, 'batcher': None}

    def queue_depth() -> float:
        return state['batcher'].waiting if state['batcher'] else 0

    metrics = ServiceMetrics(queue_depth)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        batcher = Batcher(handler.run, limits.max_batch_size, limits.batch_timeout, limits.max_queue,
                          metrics.observe_batch)
        state['batcher'] = batcher
        batcher.start()

        async def warm_up() -> None:
            await batcher.call(handler.warm_up)
            state['ready'] = True
            _logger.info('ready: %s warmed up', handler.info['model'])

        warming = asyncio.get_running_loop().create_task(warm_up())
        try:
            yield
        finally:
            warming.cancel()
            await batcher.stop()

    app = FastAPI(title='cmtnet serve', summary='CMT models over HTTP: classification, detection, segmentation',
                  version='1', lifespan=lifespan)
    app.mount('/static', StaticFiles(directory=str(_STATIC)), name='static')

    @app.middleware('http')
    async def count(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        start = time.perf_counter()
        route = request.url.path if request.url.path in _ROUTES else 'other'
        response = await call_next(request)
        metrics.requests.labels(route, str(response.status_code)).inc()
        if route in ('/predict', '/cam'):
            metrics.latency.labels(route).observe(time.perf_counter() - start)
        return response

    def authorised(request: Request) -> bool:
        if limits.api_key is None:
            return True
        sent = request.headers.get('authorization', '')
        scheme, _, token = sent.partition(' ')
        return scheme.lower() == 'bearer' and hmac.compare_digest(token.strip().encode(), limits.api_key.encode())

    def unauthorised() -> JSONResponse:
        return _error(401, 'missing or wrong API key: send the header Authorization: Bearer KEY',
                      {'WWW-Authenticate': 'Bearer'})

    async def answer(request: Request, work: Callable[[Any, Params], Awaitable[Any]]) -> Response:
        if not authorised(request):
            return unauthorised()
        batcher: Batcher = state['batcher']
        try:
            ticket = batcher.admit()
        except QueueFull as e:
            seconds = max(1, math.ceil(batcher.waiting * limits.batch_timeout + 1))
            return _error(503, f'the service is busy: {e}; retry later', {'Retry-After': str(seconds)})
        try:
            params = _params(request)
            data = await read_upload(request, limits.max_upload)
            image, _ = await run_in_threadpool(decode_image, data)
            return await _unless_disconnected(request, work(image, params, ticket))
        except UploadError as e:
            return _error(e.status, e.message)
        except InputError as e:
            return _error(400, str(e))
        finally:
            batcher.release(ticket)

    async def submit(image: Any, params: Params, ticket: Ticket) -> Any:
        """The batch's answer for `image`."""
        prepared = await run_in_threadpool(handler.prepare, image)
        return await state['batcher'].submit((prepared, params), ticket)

    async def cam_one(image: Any, params: Params, ticket: Ticket) -> Any:
        top = await submit(image, Params(top_k=1), ticket)
        drawn = await state['batcher'].call(handler.activation_map, image)  # with gradients: alone, not batched
        return dict(top[0], **drawn)

    async def _unless_disconnected(request: Request, work: Awaitable[Any]) -> Response:
        job = asyncio.ensure_future(work)
        gone = asyncio.ensure_future(_until_disconnected(request))
        done, _ = await asyncio.wait({job, gone}, return_when=asyncio.FIRST_COMPLETED)
        if job not in done:  # the client went away: its request leaves the queue, the batch goes on
            job.cancel()
            return _error(499, 'the client closed the connection')
        gone.cancel()
        return JSONResponse(job.result())

    @app.post('/predict', summary='the task\'s prediction for one image (Hugging Face Inference API JSON)')
    async def predict(request: Request) -> Response:
        return await answer(request, submit)

    @app.post('/cam', summary='the Grad-CAM overlay of the top class of one image (classification)')
    async def cam(request: Request) -> Response:
        if not handler.info['cam']:
            return _error(404, handler.info['cam_unavailable'])
        return await answer(request, cam_one)

    @app.get('/info', summary='what is served')
    async def info(request: Request) -> Response:
        if not authorised(request):
            return unauthorised()
        shown = {k: v for k, v in handler.info.items() if k != 'cam_unavailable'}
        return JSONResponse(dict(shown, max_batch_size=limits.max_batch_size,
                                 max_upload_bytes=limits.max_upload))

    @app.get('/health', summary='the process is alive')
    async def health() -> Response:
        return JSONResponse({'status': 'alive'})

    @app.get('/ready', summary='the model is loaded and warmed up')
    async def ready() -> Response:
        if not state['ready']:
            return _error(503, 'warming up: the model is not ready yet', {'Retry-After': '1'})
        return JSONResponse({'status': 'ready', 'model': handler.info['model'], 'task': handler.info['task']})

    @app.get('/metrics', summary='Prometheus metrics')
    async def prometheus() -> Response:
        return Response(metrics.text(), media_type=CONTENT_TYPE_LATEST)

    @app.get('/', include_in_schema=False)
    async def page() -> Response:
        return FileResponse(str(_STATIC / 'index.html'))

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, e: HTTPException) -> Response:
        message = f'no such endpoint: {request.method} {request.url.path}' if e.status_code == 404 else str(e.detail)
        return _error(e.status_code, message, getattr(e, 'headers', None))

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, e: RequestValidationError) -> Response:
        return _error(422, '; '.join(str(err.get('msg')) for err in e.errors()) or 'invalid request')

    return app


_ROUTES = {'/predict', '/cam', '/info', '/health', '/ready', '/metrics', '/'}
