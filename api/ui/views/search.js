// Search: words (CLIP's text tower), an image dropped, pasted or picked (CLIP's image tower), or
// "more like this" of a stored image; filters shared with the gallery; a score cut-off.

import { h, debounce, dropZone, errorText, readAsDataUrl } from '../lib/dom.js';
import { postJson, bodyWithCollection } from '../lib/api.js';
import { lazyImage, thumbnailPath } from '../lib/images.js';
import { filterJson, filterPanel } from '../lib/filters.js';
import { current, hashOf, pushHash, setBrowse } from '../lib/router.js';

const PAGE = 48;
const MAX_OFFSET = 10000;
const CUTOFF_STORE = 'imgfleet.minScore';
/** Query images above this are shrunk in the browser first: CLIP sees 224 px anyway. */
const SHRINK_ABOVE = 4 * 1024 * 1024;

// The last image query survives a visit to a result and back (it is too big for the URL).
let lastImage = null;

export function mount(root, _args, params) {
  let query = null; // {text} | {image_base64} | {like_id}
  let offset = 0;
  let ids = [];
  let aborter = null;
  let cutoff = Number(localStorage.getItem(CUTOFF_STORE) ?? 0) || 0;

  const input = h('input', {
    type: 'search',
    name: 'q',
    testid: 'search-input',
    placeholder: 'Describe the pictures you want…',
    'aria-label': 'Search by words',
    autocomplete: 'off',
    enterkeyhint: 'search',
  });
  const form = h(
    'form.searchbar',
    {
      role: 'search',
      onsubmit: (event) => {
        event.preventDefault();
        const text = input.value.trim();
        if (!text) return;
        pushHash(hashOf('search', { q: text }));
        start({ text });
      },
    },
    input,
    h('button', { type: 'submit', testid: 'search-submit' }, 'Search'),
  );

  const file = h('input.visually-hidden', {
    type: 'file',
    accept: 'image/*',
    testid: 'search-file',
    onchange: () => {
      if (file.files[0]) searchByFile(file.files[0]);
      file.value = '';
    },
  });
  const preview = h('img.query-preview', { alt: '', hidden: true, testid: 'query-preview' });
  const drop = h(
    'div.dropzone',
    { testid: 'drop-zone', tabindex: '0', role: 'button', 'aria-label': 'Search by image: drop an image here, paste one, or press Enter to pick a file' },
    preview,
    h('span', null, 'Drop an image here, paste one (Ctrl+V), or ', h('label.link', null, 'pick a file', file)),
  );
  dropZone(drop, file, (list) => {
    const image = list.find((f) => f.type.startsWith('image/')) ?? list[0];
    if (image) searchByFile(image);
  });
  const onPaste = (event) => {
    if (event.target.closest?.('input, textarea')) return;
    const image = [...(event.clipboardData?.files ?? [])].find((f) => f.type.startsWith('image/'));
    if (image) {
      event.preventDefault();
      searchByFile(image);
    }
  };
  document.addEventListener('paste', onPaste);

  const cutoffValue = h('output', { testid: 'score-threshold-value' }, cutoff ? cutoff.toFixed(2) : 'off');
  const slider = h('input', {
    type: 'range',
    min: 0,
    max: 1,
    step: 0.01,
    value: String(cutoff),
    testid: 'score-threshold',
    'aria-label': 'Score cut-off',
  });
  const rerun = debounce(() => query && start(query), 300);
  slider.addEventListener('input', () => {
    cutoff = Number(slider.value);
    cutoffValue.textContent = cutoff ? cutoff.toFixed(2) : 'off';
    localStorage.setItem(CUTOFF_STORE, String(cutoff));
    rerun();
  });

  const status = h('p.status', { testid: 'search-status', 'aria-live': 'polite' });
  const heading = h('div.query-heading');
  const grid = h('div.grid', { testid: 'search-results' });
  const more = h('button.secondary.more', { type: 'button', testid: 'search-more', hidden: true, onclick: () => run(false) }, 'More results');

  root.append(
    h(
      'section.view.search',
      null,
      h('h1.visually-hidden', null, 'Search'),
      form,
      drop,
      h(
        'div.toolbar',
        null,
        h('label.inline', null, 'Score cut-off ', slider, ' ', cutoffValue),
        filterPanel(debounce(() => query && start(query), 300)),
      ),
      heading,
      status,
      grid,
      more,
    ),
  );

  async function searchByFile(image) {
    let data = image;
    if (image.size > SHRINK_ABOVE) data = await shrink(image).catch(() => image);
    const url = await readAsDataUrl(data);
    lastImage = { image_base64: url, name: image.name };
    pushHash(hashOf('search', { image: image.name || 'pasted image' }));
    start(lastImage);
  }

  function start(q) {
    query = q;
    offset = 0;
    ids = [];
    grid.replaceChildren();
    preview.hidden = !q.image_base64;
    if (q.image_base64) preview.src = q.image_base64;
    heading.replaceChildren();
    if (q.like_id) {
      heading.append(
        h('p', null, 'Images like ', h('a', { href: hashOf(`image/${encodeURIComponent(q.like_id)}`) }, lazyImage(thumbnailPath(q.like_id, 64), { className: 'inline-thumb' }), ' this one')),
      );
    }
    if (q.text) input.value = q.text;
    run(true);
  }

  async function run(first) {
    aborter?.abort();
    aborter = new AbortController();
    const { image_base64, text, like_id } = query;
    const body = bodyWithCollection({ limit: PAGE, offset, filters: filterJson() ?? undefined });
    if (text) body.text = text;
    if (image_base64) body.image_base64 = image_base64;
    if (like_id) body.like_id = like_id;
    if (cutoff > 0) body.score_threshold = cutoff;
    status.textContent = first ? 'Searching…' : 'Loading more…';
    more.hidden = true;
    try {
      const hits = await postJson('search', body, { signal: aborter.signal });
      offset += hits.length;
      for (const hit of hits) {
        ids.push(hit.id);
        grid.append(card(hit));
      }
      setBrowse(ids, current.hash ?? location.hash);
      status.textContent = ids.length
        ? `${ids.length} result${ids.length === 1 ? '' : 's'}${cutoff > 0 ? ` scoring at least ${cutoff.toFixed(2)}` : ''}`
        : 'Nothing found. Try other words, a lower cut-off or fewer filters.';
      more.hidden = hits.length < PAGE || offset + PAGE > MAX_OFFSET;
    } catch (error) {
      if (error.name === 'AbortError') return;
      status.textContent = errorText(error);
      status.classList.add('error');
      setTimeout(() => status.classList.remove('error'), 4000);
    }
  }

  function card(hit) {
    const p = hit.payload ?? {};
    const open = hashOf(`image/${encodeURIComponent(hit.id)}`);
    return h(
      'article.card',
      { testid: 'search-result', dataset: { id: hit.id, score: String(hit.score) } },
      h('a.thumb', { href: open, testid: 'result-open', title: p.filename ?? '' }, lazyImage(thumbnailPath(hit.id), { alt: p.caption || p.filename || '' })),
      h(
        'div.card-body',
        null,
        h('span.score', { title: 'Similarity to the query', testid: 'result-score' }, hit.score.toFixed(3)),
        h('p.caption', { testid: 'result-caption' }, p.caption || p.filename || ''),
        h('a.button.small.secondary', { href: hashOf('search', { like: hit.id }), testid: 'more-like-this' }, 'More like this'),
      ),
    );
  }

  // What the URL asks for.
  const q = params.get('q');
  const like = params.get('like');
  if (like) start({ like_id: like });
  else if (q) start({ text: q });
  else if (params.has('image') && lastImage) start(lastImage);
  else {
    status.textContent = 'Search your images by words, or by an image.';
    input.focus();
  }

  return {
    cleanup() {
      aborter?.abort();
      document.removeEventListener('paste', onPaste);
    },
  };
}

/** The image scaled to at most 1024 px on its longest side, as a JPEG. */
async function shrink(file) {
  const bitmap = await createImageBitmap(file);
  const scale = Math.min(1, 1024 / Math.max(bitmap.width, bitmap.height));
  const canvas = new OffscreenCanvas(Math.round(bitmap.width * scale), Math.round(bitmap.height * scale));
  canvas.getContext('2d').drawImage(bitmap, 0, 0, canvas.width, canvas.height);
  return canvas.convertToBlob({ type: 'image/jpeg', quality: 0.9 });
}
