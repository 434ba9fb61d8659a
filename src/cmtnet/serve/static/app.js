// The page of `cmtnet serve`: one image in, the model's answer drawn: the top classes as bars beside the
// class activation map, the detected boxes, or the class masks coloured over the image. It speaks only the
// service's own API (/info, /predict, /cam) and needs no build step.
'use strict';

const $ = (selector) => document.querySelector(selector);
const KEY_STORE = 'cmtnet-api-key';
const TOP_K = 5;
// the drawing's longer side in canvas pixels: sharp on a large screen, whatever the input's size
const DRAWING_SIDE = 800;
const TASK_NAMES = {
  'image-classification': 'classification',
  'object-detection': 'detection',
  'image-segmentation': 'segmentation',
};

const page = {info: null, file: null, url: null, key: sessionStorage.getItem(KEY_STORE) || '', run: 0};

class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

// The service's JSON answer, or an ApiError with its one-line message.
async function api(path, file) {
  const headers = page.key ? {Authorization: `Bearer ${page.key}`} : {};
  const options = {headers};
  if (file) {
    options.method = 'POST';
    options.body = new FormData();
    options.body.append('image', file);
  }
  let response;
  try {
    response = await fetch(path, options);
  } catch (e) {
    throw new ApiError(0, `The service cannot be reached (${e.message}).`);
  }
  const answer = await response.json().catch(() => null);
  if (!response.ok) {
    throw new ApiError(response.status, (answer && answer.error) || `${response.status} ${response.statusText}`);
  }
  return answer;
}

function loadImage(src) {
  const image = new Image();
  image.src = src;
  return image.decode().then(() => image, () => {
    throw new Error('This browser cannot display the image, so it cannot be drawn on.');
  });
}

const percent = (score) => `${(100 * score).toFixed(1)}%`;

// A colour per class, the same wherever the class appears; the golden angle keeps neighbouring classes apart.
function colourOf(label) {
  const index = Math.max(0, page.info.labels.indexOf(label));
  const h = (index * 137.508 + 200) % 360, s = 0.8, l = 0.5;
  const a = s * Math.min(l, 1 - l);
  const f = (n) => {
    const k = (n + h / 30) % 12;
    return Math.round(255 * (l - a * Math.max(-1, Math.min(k - 3, 9 - k, 1))));
  };
  return [f(0), f(8), f(4)];
}
const css = ([r, g, b], alpha = 1) => `rgb(${r} ${g} ${b} / ${alpha})`;

function setState(state, message) {
  const result = $('#result');
  result.dataset.state = state;
  result.setAttribute('aria-busy', String(state === 'busy'));
  $('#status').textContent = message;
  $('#status').hidden = !message;
  if (state !== 'error') $('#error').hidden = true;
}

function showError(message) {
  setState('error', '');
  $('#error').textContent = message;
  $('#error').hidden = false;
}

// The key field, with the service's refusal when a key was sent.
function askForKey(refusal) {
  $('#key-form').hidden = false;
  $('#key').focus();
  if (page.key) showError(`The key was refused: ${refusal}`);
  else setState('idle', 'This service needs an API key: enter it to start.');
}

async function loadInfo() {
  try {
    page.info = await api('/info');
  } catch (e) {
    $('#model').textContent = e.status === 401 ? 'API key required' : 'Service unavailable';
    if (e.status === 401) askForKey(e.message);
    else showError(e.message);
    return;
  }
  const {model, task, precision} = page.info;
  $('#key-form').hidden = true;
  $('#model').textContent = `${model} · ${TASK_NAMES[task] || task} · ${precision}`;
  $('#result').dataset.task = task;
  $('#threshold-row').hidden = task !== 'object-detection';
  const {labels, img_size: side, max_upload_bytes: limit} = page.info;
  $('#classes').textContent = `${labels.length}: ${labels.slice(0, 6).join(', ')}${labels.length > 6 ? ', …' : ''}`;
  $('#input-size').textContent = side ? `${side} × ${side} px` : 'any size';
  $('#upload-limit').textContent = `up to ${(limit / 2 ** 20).toFixed(limit % 2 ** 20 ? 1 : 0)} MB`;
  $('#details').hidden = false;
  setState('idle', 'Choose an image to see what the model finds.');
  if (page.file) predict();
}

function choose(file) {
  if (!file) return;
  if (page.url) URL.revokeObjectURL(page.url);
  page.file = file;
  page.url = URL.createObjectURL(file);
  $('#file-name').textContent = `${file.name} (${Math.ceil(file.size / 1024)} KB)`;
  predict();
}

async function predict() {
  if (!page.file || !page.info) return;
  const run = ++page.run;  // a newer image or threshold wins over an answer still on its way
  const current = () => run === page.run;
  setState('busy', `Running ${page.info.model} on ${page.file.name}…`);
  try {
    await DRAW[page.info.task](page.file, current);
    if (current()) setState('done', '');
  } catch (e) {
    if (!current()) return;
    if (e.status === 401) askForKey(e.message);
    else showError(e.message);
  }
}

async function classify(file, current) {
  const [top, cam] = await Promise.all([
    api(`/predict?top_k=${TOP_K}`, file),
    page.info.cam ? api('/cam', file).catch((e) => ({error: e.message})) : null,
  ]);
  if (!current()) return;
  const preview = $('#preview');
  preview.src = page.url;
  preview.alt = `The uploaded image, ${file.name}`;
  $('#top-label').textContent = top.length ? top[0].label : '';
  $('#top-score').textContent = top.length ? percent(top[0].score) : '';
  $('#bars').replaceChildren(...top.map(({label, score}) => {
    const row = document.createElement('li');
    row.className = 'bar';
    row.dataset.label = label;
    row.dataset.score = score;
    row.innerHTML = '<span class="label"></span><span class="track" aria-hidden="true"><span class="fill"></span>'
      + '</span><span class="pct"></span>';
    row.querySelector('.label').textContent = label;
    row.querySelector('.fill').style.width = percent(score);
    row.querySelector('.pct').textContent = percent(score);
    return row;
  }));
  const image = $('#cam');
  image.parentElement.hidden = !cam;
  if (cam && !cam.error) {
    image.src = cam.image;
    image.alt = `Class activation map of ${cam.label}: the warm areas are where the model looked`;
    $('#cam-caption').textContent = `Where the model sees ${cam.label}`;
    await image.decode();
  } else if (cam) {
    image.removeAttribute('src');
    image.alt = '';
    $('#cam-caption').textContent = `No activation map: ${cam.error}`;
  }
  $('#classification').hidden = false;
}

// The image on the canvas at DRAWING_SIDE; the scale from the image's pixels to the canvas's, and canvas
// pixels per pixel on the screen (for lines and text of one size on the screen, however large it is shown).
function drawBase(image, description) {
  const canvas = $('#drawing');
  const scale = DRAWING_SIDE / Math.max(image.naturalWidth, image.naturalHeight);
  canvas.width = Math.round(image.naturalWidth * scale);
  canvas.height = Math.round(image.naturalHeight * scale);
  canvas.setAttribute('aria-label', description);
  $('#dense').hidden = false;
  const shown = canvas.getBoundingClientRect().width;
  const ctx = canvas.getContext('2d');
  ctx.drawImage(image, 0, 0, canvas.width, canvas.height);
  return {canvas, ctx, scale, px: shown ? canvas.width / shown : 1};
}

// One line per class or box: its colour, label (and where it is) and score.
function showLegend(entries) {
  $('#legend').replaceChildren(...entries.map(({label, score, where}) => {
    const item = document.createElement('li');
    item.dataset.label = label;
    item.dataset.score = score;
    item.innerHTML = '<span class="swatch" aria-hidden="true"></span><span class="label"></span>'
      + '<span class="pct"></span>';
    item.querySelector('.swatch').style.background = css(colourOf(label));
    item.querySelector('.label').textContent = label;
    if (where) {
      const small = item.querySelector('.label').appendChild(document.createElement('small'));
      small.textContent = where;
    }
    item.querySelector('.pct').textContent = percent(score);
    return item;
  }));
}

async function detect(file, current) {
  const pending = loadImage(page.url);
  pending.catch(() => {});
  const boxes = await api(`/predict?threshold=${$('#threshold').value}`, file);
  const image = await pending;
  if (!current()) return;
  const names = boxes.map((b) => b.label).join(', ');
  const {canvas, ctx, scale, px} = drawBase(image, `${file.name} with ${boxes.length} detected object(s)${
    boxes.length ? `: ${names}` : ''}`);
  const [line, height] = [2 * px, 18 * px];
  ctx.lineWidth = line;
  ctx.font = `600 ${12 * px}px system-ui, sans-serif`;
  ctx.textBaseline = 'middle';
  for (const {label, score, box} of [...boxes].reverse()) {  // the best box drawn last, on top
    const colour = css(colourOf(label));
    const [x, y] = [box.xmin * scale, box.ymin * scale];
    ctx.strokeStyle = colour;
    ctx.strokeRect(x, y, (box.xmax - box.xmin) * scale, (box.ymax - box.ymin) * scale);
    const tag = `${label} ${percent(score)}`;
    const width = ctx.measureText(tag).width + 8 * px;
    const [left, top] = [Math.max(0, Math.min(x - line / 2, canvas.width - width)), y >= height ? y - height : y];
    ctx.fillStyle = colour;
    ctx.fillRect(left, top, width, height);
    ctx.fillStyle = '#fff';
    ctx.fillText(tag, left + 4 * px, top + height / 2);
  }
  canvas.dataset.boxes = boxes.length;
  delete canvas.dataset.segments;
  const at = (v) => Math.round(v);
  showLegend(boxes.map(({label, score, box}) => ({label, score, where: `(${at(box.xmin)}, ${at(box.ymin)})–(${
    at(box.xmax)}, ${at(box.ymax)})`})));
}

// A mask (white on the class) as a canvas of the class's colour, transparent elsewhere.
function tint(mask, [r, g, b]) {
  const layer = document.createElement('canvas');
  layer.width = mask.naturalWidth;
  layer.height = mask.naturalHeight;
  const ctx = layer.getContext('2d', {willReadFrequently: true});
  ctx.drawImage(mask, 0, 0);
  const pixels = ctx.getImageData(0, 0, layer.width, layer.height);
  const d = pixels.data;
  for (let i = 0; i < d.length; i += 4) {
    d[i + 3] = d[i];
    d[i] = r;
    d[i + 1] = g;
    d[i + 2] = b;
  }
  ctx.putImageData(pixels, 0, 0);
  return layer;
}

async function segment(file, current) {
  const pending = loadImage(page.url);
  pending.catch(() => {});
  const segments = await api('/predict', file);
  const masks = segments.map((s) => loadImage(`data:image/png;base64,${s.mask}`));
  const [image, ...layers] = await Promise.all([pending, ...masks]);
  if (!current()) return;
  const names = segments.map((s) => s.label).join(', ');
  const {canvas, ctx} = drawBase(image, `${file.name} with the classes found coloured over it: ${names}`);
  ctx.globalAlpha = 0.5;
  ctx.imageSmoothingEnabled = false;  // crisp class borders when a small image is drawn large
  segments.forEach(({label}, i) => ctx.drawImage(tint(layers[i], colourOf(label)), 0, 0, canvas.width, canvas.height));
  ctx.globalAlpha = 1;
  canvas.dataset.segments = segments.length;
  delete canvas.dataset.boxes;
  showLegend(segments);
}

const DRAW = {'image-classification': classify, 'object-detection': detect, 'image-segmentation': segment};

function listen() {
  $('#file').addEventListener('change', (e) => choose(e.target.files[0]));
  const drop = $('#drop');
  document.addEventListener('dragover', (e) => {
    e.preventDefault();
    drop.classList.add('over');
  });
  document.addEventListener('dragleave', (e) => {
    if (!e.relatedTarget) drop.classList.remove('over');
  });
  document.addEventListener('drop', (e) => {
    e.preventDefault();
    drop.classList.remove('over');
    choose(e.dataTransfer.files[0]);
  });
  const threshold = $('#threshold');
  const showThreshold = () => {
    $('#threshold-value').textContent = Number(threshold.value).toFixed(2);
  };
  threshold.addEventListener('input', showThreshold);
  threshold.addEventListener('change', () => {
    showThreshold();
    predict();
  });
  $('#key-form').addEventListener('submit', (e) => {
    e.preventDefault();
    page.key = $('#key').value.trim();
    sessionStorage.setItem(KEY_STORE, page.key);
    loadInfo();
  });
}

listen();
loadInfo();
