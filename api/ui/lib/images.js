// Thumbnails and large images. Every picture is fetched with `fetch` (so the API key goes along
// as a header, which an <img src> cannot send) and shown through an object URL. Fetching
// ourselves also lets us
//  - load only what is near the viewport (an IntersectionObserver) and drop what scrolled far
//    away (the object URL is revoked; the HTTP cache makes a second visit cheap), so a gallery
//    of 100,000 images holds a bounded number of decoded pictures;
//  - keep at most a few requests in flight: the server renders a thumbnail per core and
//    answers 429 past a short queue, which a page of <img> tags would hit at once;
//  - retry a 429 or 503 after a pause instead of showing a broken image.

import { request, session, apiUrl } from './api.js';

const IN_FLIGHT = 6;
const RETRIES = 5;

/** img -> { path, url, status: idle|queued|loading|loaded|failed, near, attempt } */
const images = new Map();
const queue = [];
let running = 0;

const observer = new IntersectionObserver(
  (entries) => {
    for (const entry of entries) {
      const state = images.get(entry.target);
      if (!state) continue;
      state.near = entry.isIntersecting;
      if (state.near && state.status === 'idle') enqueue(entry.target, state);
      else if (!state.near && state.status === 'loaded') unload(entry.target, state);
    }
  },
  // Start a screen ahead; unload only well out of sight.
  { rootMargin: '1200px 0px' },
);

/** The API path of a thumbnail (longest side `size`) of image `id` in the UI's collection. */
export function thumbnailPath(id, size = 256) {
  return { path: `images/${id}/thumbnail`, query: { size, collection: session.collection || undefined } };
}

/**
 * An <img> that loads `source` ({path, query}) once it comes near the viewport. Call
 * `releaseImages(container)` when the view goes away.
 */
export function lazyImage(source, { alt = '', className = 'thumb-img', width, height } = {}) {
  const img = document.createElement('img');
  img.alt = alt;
  img.className = className;
  img.decoding = 'async';
  img.dataset.lazy = '';
  if (width) img.width = width;
  if (height) img.height = height;
  images.set(img, { source, url: null, status: 'idle', near: false, attempt: 0 });
  observer.observe(img);
  return img;
}

/** Loads `source` into `img` at once (the large picture of the detail view). */
export function eagerImage(source, options) {
  const img = lazyImage(source, options);
  const state = images.get(img);
  state.near = true;
  state.eager = true;
  enqueue(img, state, true);
  return img;
}

function enqueue(img, state, first = false) {
  state.status = 'queued';
  if (first) queue.unshift(img);
  else queue.push(img);
  pump();
}

function pump() {
  while (running < IN_FLIGHT && queue.length) {
    const img = queue.shift();
    const state = images.get(img);
    if (!state || state.status !== 'queued') continue;
    if (!state.near && !state.eager) {
      state.status = 'idle';
      continue;
    }
    running += 1;
    state.status = 'loading';
    load(img, state).finally(() => {
      running -= 1;
      pump();
    });
  }
}

async function load(img, state) {
  try {
    const response = await request(state.source.path, { query: state.source.query });
    const blob = await response.blob();
    if (!images.has(img)) return; // released meanwhile
    state.url = URL.createObjectURL(blob);
    img.src = state.url;
    state.status = 'loaded';
    state.attempt = 0;
    img.classList.remove('failed');
    if (!state.near && !state.eager) unload(img, state);
  } catch (error) {
    if (!images.has(img)) return;
    const busy = error.status === 429 || error.status === 503 || error.status === 0;
    if (busy && state.attempt < RETRIES) {
      state.attempt += 1;
      state.status = 'waiting';
      setTimeout(() => {
        if (images.has(img) && state.status === 'waiting') enqueue(img, state);
      }, 400 * 2 ** state.attempt);
      return;
    }
    state.status = 'failed';
    img.classList.add('failed');
    img.title = error.message;
  }
}

function unload(img, state) {
  if (state.url) URL.revokeObjectURL(state.url);
  state.url = null;
  state.status = 'idle';
  img.removeAttribute('src');
}

/** Forgets every image inside `container` (a view being unmounted), revoking its object URL. */
export function releaseImages(container) {
  for (const img of container.querySelectorAll('img[data-lazy]')) {
    const state = images.get(img);
    if (!state) continue;
    observer.unobserve(img);
    if (state.url) URL.revokeObjectURL(state.url);
    images.delete(img);
  }
}

/**
 * Opens the original file in a new tab. With a key the file is fetched (with the header) and
 * opened as an object URL; the tab is opened before the fetch, while the click still counts as
 * the user's, so no popup blocker stops it.
 */
export async function openOriginal(id) {
  const query = { collection: session.collection || undefined };
  if (!session.key) {
    window.open(apiUrl(`images/${id}/file`, query), '_blank', 'noopener');
    return;
  }
  const tab = window.open('', '_blank');
  try {
    const response = await request(`images/${id}/file`, { query });
    const url = URL.createObjectURL(await response.blob());
    if (tab) tab.location.href = url;
    else window.location.href = url;
    // The tab holds its own reference once loaded.
    setTimeout(() => URL.revokeObjectURL(url), 60000);
  } catch (error) {
    tab?.close();
    throw error;
  }
}
