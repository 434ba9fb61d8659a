"""The page of `cmtnet serve` in a real browser (headless Chromium through Playwright) on a real server: an
uploaded image's answer is drawn as the API gives it, for each task; the API key and the API's errors reach
the user; the page fits a narrow screen."""
import base64
from pathlib import Path

import pytest
from PIL import Image

from page_helpers import chromium, keep_screenshot, sample_photo, serving_together, wait_for_result
from servers import (CLASSES, DETECTION_CLASSES, SEGMENTATION_CLASSES, classifier_checkpoint, detector_checkpoint,
                     segmenter_checkpoint)

sync_api = pytest.importorskip('playwright.sync_api', reason='the page tests drive Chromium with Playwright, '
                                                            'which is not installed')
if chromium() is None:
    pytest.skip('the page tests need Chromium (/usr/bin/chromium or chromium on PATH); none is installed',
                allow_module_level=True)

pytestmark = pytest.mark.filterwarnings('ignore::DeprecationWarning')

KEY = 'page-test-key'
WIDE = {'width': 1280, 'height': 800}


@pytest.fixture(scope='module')
def browser():
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium(), headless=True)
        yield browser
        browser.close()


@pytest.fixture(scope='module')
def photo(tmp_path_factory) -> Path:
    return sample_photo(tmp_path_factory.mktemp('photos') / 'chelsea.png')


@pytest.fixture(scope='module')
def servers(tmp_path_factory):
    root = tmp_path_factory.mktemp('servers')
    runs = [(classifier_checkpoint(root / 'classifier.safetensors'), root / 'classifier.log', '--api-key', KEY),
            (detector_checkpoint(root / 'detector.safetensors'), root / 'detector.log'),
            (segmenter_checkpoint(root / 'segmenter.safetensors'), root / 'segmenter.log')]
    with serving_together(runs) as started:
        yield started


@pytest.fixture(scope='module')
def classifier(servers):
    return servers[0]


@pytest.fixture(scope='module')
def detector(servers):
    return servers[1]


@pytest.fixture(scope='module')
def segmenter(servers):
    return servers[2]


@pytest.fixture
def open_page(browser):
    """The page of a server in a browser tab of its own (a new session), once it shows the model (`shown`);
    with `key`, entered in the API key field first."""
    pages, refused, missing = [], [], []

    def open_page(server, viewport=WIDE, key=None, shown=True):
        page = browser.new_page(viewport=viewport)
        page.on('console', lambda m: refused.append(m.text) if 'Content Security Policy' in m.text else None)
        page.on('response', lambda r: missing.append(r.url) if r.status == 404 else None)
        pages.append(page)
        page.goto(server.url)
        if key is not None:
            page.wait_for_selector('#key-form:not([hidden])')
            page.fill('#key', key)
            page.click('#key-form button')
        if shown:
            # locator waits: a polled string predicate is eval, which the page's CSP refuses
            page.locator('#model').filter(has_text='·').wait_for(state='attached')
        return page
    yield open_page
    for page in pages:
        page.close()
    assert not refused, f'the page broke its own Content-Security-Policy: {refused}'
    assert not missing, f'the page asked for what the service does not have: {missing}'


def _data_url(path: Path) -> str:
    return 'data:image/png;base64,' + base64.b64encode(path.read_bytes()).decode('ascii')


# the mean absolute difference (0-255) of a canvas's pixels from those of an image drawn alone at its size
_MEAN_CHANGE = '''async (canvas, url) => {
    const image = new Image();
    image.src = url;
    await image.decode();
    const plain = document.createElement('canvas');
    [plain.width, plain.height] = [canvas.width, canvas.height];
    plain.getContext('2d').drawImage(image, 0, 0, plain.width, plain.height);
    const [a, b] = [canvas, plain].map(c => c.getContext('2d').getImageData(0, 0, c.width, c.height).data);
    let total = 0;
    for (let i = 0; i < a.length; i += 4) for (let k = 0; k < 3; k++) total += Math.abs(a[i + k] - b[i + k]);
    return total / (a.length / 4 * 3);
}'''


# the result's states as the page goes through them
_RECORD_STATES = '''() => {
    const result = document.querySelector('#result');
    window.states = [];
    new MutationObserver(() => window.states.push(result.dataset.state))
        .observe(result, {attributes: true, attributeFilter: ['data-state']});
}'''

# a file dropped on the page, as a browser delivers one dragged from the desktop
_DROP = '''async ([name, url]) => {
    const bytes = Uint8Array.from(atob(url.split(',')[1]), c => c.charCodeAt(0));
    const blob = new Blob([bytes], {type: url.slice(5, url.indexOf(';'))});
    const dropped = new DataTransfer();
    dropped.items.add(new File([blob], name, {type: blob.type}));
    document.body.dispatchEvent(new DragEvent('drop', {dataTransfer: dropped, bubbles: true, cancelable: true}));
}'''


def _api(server, photo: Path, **params):
    with server.client(headers={'Authorization': f'Bearer {KEY}'}) as client:
        response = client.post('/predict', params=params, files={'image': (photo.name, photo.read_bytes())})
    assert response.status_code == 200, response.text
    return response.json()


def test_classification_draws_the_top_classes_and_the_activation_map(open_page, classifier, photo, tmp_path):
    page = open_page(classifier, key=KEY)
    assert page.text_content('#model') == 'cmt_ti · classification · fp32'
    page.evaluate(_RECORD_STATES)
    page.set_input_files('#file', str(photo))
    assert wait_for_result(page) == 'done', page.text_content('#error')
    assert page.evaluate('window.states') == ['busy', 'done']
    keep_screenshot(page, tmp_path, 'page_classification')
    expected = _api(classifier, photo, top_k=5)
    bars = page.locator('.bar')
    assert bars.count() == len(CLASSES) == len(expected)
    assert [bars.nth(i).get_attribute('data-label') for i in range(bars.count())] == [e['label'] for e in expected]
    assert page.text_content('#top-label') == expected[0]['label']
    assert page.text_content('.bar .pct') == f'{100 * expected[0]["score"]:.1f}%'
    drawn = page.locator('.bar').evaluate_all(
        'rows => rows.map(r => r.querySelector(".fill").offsetWidth / r.querySelector(".track").offsetWidth)')
    assert drawn == pytest.approx([e['score'] for e in expected], abs=0.01)  # bar lengths are the scores
    assert page.eval_on_selector('img#cam', 'image => image.complete && image.naturalWidth') > 0
    assert expected[0]['label'] in page.get_attribute('img#cam', 'alt')
    assert page.get_attribute('img#preview', 'alt')


def test_the_page_asks_for_the_api_key_and_shows_the_services_error(open_page, classifier, tmp_path):
    page = open_page(classifier, shown=False)
    page.wait_for_selector('#key-form:not([hidden])')
    assert page.text_content('#model') == 'API key required'
    assert page.get_attribute('#result', 'data-state') == 'idle' and 'API key' in page.text_content('#status')
    keep_screenshot(page, tmp_path, 'page_key')
    page.fill('#key', 'wrong')
    page.click('#key-form button')
    with classifier.client(headers={'Authorization': 'Bearer wrong'}) as client:
        refused = client.get('/info').json()['error']
    page.locator('#error').filter(has_text=refused).wait_for(state='attached')
    assert page.is_visible('#error') and page.get_attribute('#result', 'data-state') == 'error'
    page.fill('#key', KEY)
    page.click('#key-form button')
    page.wait_for_selector('#key-form[hidden]', state='attached')
    assert page.evaluate('sessionStorage.getItem("cmtnet-api-key")') == KEY

    not_an_image = tmp_path / 'notes.png'
    not_an_image.write_text('these are words, not pixels')
    page.set_input_files('#file', str(not_an_image))
    assert wait_for_result(page) == 'error'
    with classifier.client(headers={'Authorization': f'Bearer {KEY}'}) as client:
        error = client.post('/predict', files={'image': (not_an_image.name, not_an_image.read_bytes())}).json()['error']
    assert page.text_content('#error') == error
    keep_screenshot(page, tmp_path, 'page_error')


def test_detection_draws_each_box_the_api_finds(open_page, detector, photo, tmp_path):
    scores = sorted((d['score'] for d in _api(detector, photo, threshold=0)), reverse=True)
    assert scores, 'the detector finds nothing even at threshold 0'
    threshold = int(scores[min(3, len(scores) - 1)] * 100) / 100  # a few boxes: the slider's steps are 0.01
    page = open_page(detector)
    assert page.is_visible('#threshold')
    page.eval_on_selector('#threshold', '(slider, value) => { slider.value = value; '
                                        'slider.dispatchEvent(new Event("change")); }', str(threshold))
    assert page.text_content('#threshold-value') == f'{threshold:.2f}'
    page.set_input_files('#file', str(photo))
    assert wait_for_result(page) == 'done', page.text_content('#error')
    keep_screenshot(page, tmp_path, 'page_detection')
    expected = _api(detector, photo, threshold=threshold)
    assert len(expected) >= 4
    assert int(page.get_attribute('canvas#drawing', 'data-boxes')) == len(expected)
    assert page.locator('#legend li').evaluate_all('items => items.map(i => i.dataset.label)') == \
        [e['label'] for e in expected]
    assert set(e['label'] for e in expected) <= set(DETECTION_CLASSES)
    width, height = Image.open(photo).size  # drawn with its longer side 800 canvas pixels, its aspect kept
    assert page.eval_on_selector('canvas#drawing', 'c => [c.width, c.height]') == [800, round(height * 800 / width)]


def test_segmentation_colours_each_class_with_its_legend(open_page, segmenter, photo, tmp_path):
    page = open_page(segmenter)
    assert page.is_hidden('#threshold')
    page.evaluate(_DROP, ['dropped.png', _data_url(photo)])  # dropped on the page rather than chosen
    assert wait_for_result(page) == 'done', page.text_content('#error')
    keep_screenshot(page, tmp_path, 'page_segmentation')
    expected = _api(segmenter, photo)
    legend = page.locator('#legend li').evaluate_all('items => items.map(i => i.dataset.label)')
    assert legend == [e['label'] for e in expected] and set(legend) <= set(SEGMENTATION_CLASSES)
    assert int(page.get_attribute('canvas#drawing', 'data-segments')) == len(expected)
    # the masks are tinted over the photo at half opacity: every pixel is the photo's moved halfway to a colour
    assert page.eval_on_selector('canvas#drawing', _MEAN_CHANGE, _data_url(photo)) > 20


def test_the_page_fits_a_narrow_screen(open_page, segmenter, photo, tmp_path):
    page = open_page(segmenter, viewport={'width': 390, 'height': 844})
    page.set_input_files('#file', str(photo))
    assert wait_for_result(page) == 'done', page.text_content('#error')
    keep_screenshot(page, tmp_path, 'page_narrow')
    assert page.evaluate('document.documentElement.scrollWidth') <= 390
    assert page.eval_on_selector('canvas#drawing', 'c => c.getBoundingClientRect().width') <= 390
