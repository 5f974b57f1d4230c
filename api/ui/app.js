// The imgfleet web UI: plain ES modules, no build step. This file is the shell: the header
// (navigation, collection, theme, API key) and the hash router that mounts one view at a time.

import { h, toast, errorText } from './lib/dom.js';
import { editKey, getJson, session, setCollection, setKey } from './lib/api.js';
import { releaseImages } from './lib/images.js';
import { current, parseHash } from './lib/router.js';
import * as search from './views/search.js';
import * as gallery from './views/gallery.js';
import * as detail from './views/detail.js';
import * as duplicates from './views/duplicates.js';
import * as jobs from './views/jobs.js';
import * as fleet from './views/fleet.js';

const VIEWS = {
  search: { module: search, title: 'Search', list: true },
  gallery: { module: gallery, title: 'Gallery', list: true },
  image: { module: detail, title: 'Image' },
  duplicates: { module: duplicates, title: 'Duplicates', list: true },
  jobs: { module: jobs, title: 'Jobs' },
  fleet: { module: fleet, title: 'Fleet' },
};

const main = document.getElementById('main');
const overlay = document.getElementById('detail-dialog');
let mounted = null; // { name, cleanup }
let overlayCleanup = null;

function route() {
  const { name, args, params } = parseHash();
  const view = VIEWS[name];
  if (!view) {
    location.replace('#/search');
    return;
  }
  // Already showing it (the view changed its own URL, or a second event for one change).
  if (mounted && !overlay.open && location.hash === current.hash) return;
  // An image opened from a list: show it over the list, which stays mounted (and scrolled).
  if (name === 'image' && mounted && VIEWS[mounted.name].list) {
    openOverlay(args[0]);
    return;
  }
  // Back from an image to the list it was opened from.
  if (overlay.open) {
    closeOverlay();
    if (location.hash === current.hash) return;
  }
  mount(name, args, params);
}

function mount(name, args, params) {
  mounted?.cleanup?.();
  releaseImages(main);
  main.replaceChildren();
  current.hash = location.hash;
  const view = VIEWS[name];
  document.title = `${view.title} · imgfleet`;
  for (const link of document.querySelectorAll('nav.main-nav a')) {
    if (link.dataset.view === name || (name === 'image' && link.dataset.view === 'gallery')) link.setAttribute('aria-current', 'page');
    else link.removeAttribute('aria-current');
  }
  let controller = {};
  try {
    controller = view.module.mount(main, args, params) ?? {};
  } catch (error) {
    main.append(h('p.error', null, errorText(error)));
    console.error(error);
  }
  mounted = { name, cleanup: controller.cleanup };
}

function openOverlay(id) {
  overlayCleanup?.();
  overlayCleanup = detail.renderDetail(overlay, id, { onClose: () => history.back() });
  if (!overlay.open) overlay.showModal();
}

function closeOverlay() {
  overlayCleanup?.();
  overlayCleanup = null;
  releaseImages(overlay);
  overlay.replaceChildren();
  overlay.close();
}

// Escape on the dialog: go back (the router then closes it), rather than closing it under the URL.
overlay.addEventListener('cancel', (event) => {
  event.preventDefault();
  history.back();
});
// Inside the overlay, moving to another image replaces the entry: Back and Escape return to the list.
overlay.addEventListener('click', (event) => {
  const link = event.target.closest?.('a[href^="#/image/"]');
  if (link && !event.ctrlKey && !event.metaKey && !event.shiftKey) {
    event.preventDefault();
    location.replace(link.getAttribute('href'));
  }
});

// --- header -------------------------------------------------------------------------------

const collectionSelect = document.getElementById('collection-select');

async function loadCollections() {
  try {
    const [names, selected] = await Promise.all([getJson('collections'), getJson('collections/selected').catch(() => null)]);
    const chosen = session.collection;
    const fallback = selected ? `server default (${selected.collection_name})` : 'server default';
    collectionSelect.replaceChildren(h('option', { value: '' }, fallback), ...names.map((n) => h('option', { value: n }, n)));
    if (chosen && !names.includes(chosen)) {
      toast(`Collection ${chosen} is gone; using the server's default.`, 'error');
      setCollection('');
    }
    collectionSelect.value = session.collection;
  } catch (error) {
    toast(errorText(error), 'error');
  }
}

collectionSelect.addEventListener('change', () => setCollection(collectionSelect.value));
document.addEventListener('imgfleet:collections', loadCollections);
document.addEventListener('imgfleet:collection', () => {
  collectionSelect.value = session.collection;
  // Everything shown belongs to the old collection: mount the view again.
  if (overlay.open) closeOverlay();
  const { name, args, params } = parseHash();
  if (VIEWS[name] && name !== 'jobs') mount(name, args, params);
});

const THEME_STORE = 'imgfleet.theme';
const THEMES = ['auto', 'light', 'dark'];
const themeButton = document.getElementById('theme-toggle');

function applyTheme(theme) {
  if (theme === 'auto') delete document.documentElement.dataset.theme;
  else document.documentElement.dataset.theme = theme;
  themeButton.textContent = { auto: '◐ Auto', light: '☀ Light', dark: '☾ Dark' }[theme];
  themeButton.setAttribute('aria-label', `Colour theme: ${theme}. Change it.`);
}

themeButton.addEventListener('click', () => {
  const now = localStorage.getItem(THEME_STORE) ?? 'auto';
  const next = THEMES[(THEMES.indexOf(now) + 1) % THEMES.length];
  if (next === 'auto') localStorage.removeItem(THEME_STORE);
  else localStorage.setItem(THEME_STORE, next);
  applyTheme(next);
});
applyTheme(localStorage.getItem(THEME_STORE) ?? 'auto');

const keyButton = document.getElementById('key-button');
const showKeyState = () => {
  keyButton.textContent = session.key ? 'Key set' : 'API key';
  keyButton.setAttribute('aria-label', session.key ? 'API key: one is saved. Change or forget it.' : 'API key: none saved. Enter one.');
};
keyButton.addEventListener('click', editKey);
document.addEventListener('imgfleet:key', () => {
  showKeyState();
  loadCollections();
});
showKeyState();

document.getElementById('key-forget').addEventListener('click', () => {
  document.getElementById('key-dialog').close();
  setKey('');
  toast('The API key is forgotten in this browser.');
});
document.getElementById('key-cancel').addEventListener('click', () => document.getElementById('key-dialog').close());

// The skip link moves focus without touching the hash (which is the router's).
document.getElementById('skip').addEventListener('click', (event) => {
  event.preventDefault();
  main.focus();
});

window.addEventListener('hashchange', route);
if (!location.hash) location.replace('#/search');
route();
loadCollections();
