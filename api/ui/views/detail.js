// One image: the large picture, caption, EXIF, every path, and similar images. Shown over the
// list it was opened from (so closing it keeps the list and its scroll position), or as a page
// of its own for a link opened directly. Arrow keys walk the list, Escape closes.

import { h, formatBytes, formatCoordinates, formatNumber, formatTime, errorText, toast } from '../lib/dom.js';
import { getJson, postJson, bodyWithCollection, withCollection } from '../lib/api.js';
import { eagerImage, lazyImage, openOriginal, releaseImages, thumbnailPath } from '../lib/images.js';
import { browse, hashOf } from '../lib/router.js';

const LARGE = 1024;
const SIMILAR = 12;

/**
 * Renders image `id` into `container` (emptied first). `onClose` leaves the view. Returns a
 * cleanup function.
 */
export function renderDetail(container, id, { onClose }) {
  const aborter = new AbortController();
  releaseImages(container);
  container.replaceChildren();

  const index = browse.ids.indexOf(id);
  const neighbour = async (step) => {
    let at = browse.ids.indexOf(id);
    if (at < 0) return;
    if (at + step >= browse.ids.length && browse.more) {
      await browse.more();
      at = browse.ids.indexOf(id);
    }
    const next = browse.ids[at + step];
    // Replace, not push: Back (or Escape) returns to the list, not through every image seen.
    if (next) location.replace(hashOf(`image/${encodeURIComponent(next)}`));
  };
  const prev = h('button.icon', { type: 'button', testid: 'detail-prev', 'aria-label': 'Previous image', title: 'Previous (←)', disabled: index <= 0, onclick: () => neighbour(-1) }, '←');
  const next = h('button.icon', { type: 'button', testid: 'detail-next', 'aria-label': 'Next image', title: 'Next (→)', disabled: index < 0 || (index >= browse.ids.length - 1 && !browse.more), onclick: () => neighbour(1) }, '→');
  const close = h('button.icon', { type: 'button', testid: 'detail-close', 'aria-label': 'Close', title: 'Close (Esc)', onclick: onClose }, '✕');
  const title = h('h2.detail-title', { id: 'detail-title' }, 'Loading…');
  const picture = eagerImage(thumbnailPath(id, LARGE), { alt: '', className: 'detail-img' });
  picture.dataset.testid = 'detail-image';
  const facts = h('dl.facts', { testid: 'detail-facts' });
  const caption = h('p.caption', { testid: 'detail-caption' });
  const paths = h('ul.paths', { testid: 'detail-paths' });
  const similar = h('div.grid.small', { testid: 'detail-similar', 'aria-live': 'polite' });
  const view = h(
    'article.detail',
    { testid: 'detail-view', dataset: { id }, tabindex: '-1', 'aria-labelledby': 'detail-title' },
    h('header.detail-bar', null, prev, next, title, close),
    h(
      'div.detail-body',
      null,
      h('figure.detail-figure', null, picture),
      h(
        'section.detail-info',
        null,
        caption,
        h(
          'div.actions',
          null,
          h('a.button', { href: hashOf('search', { like: id }), testid: 'detail-more-like-this' }, 'More like this'),
          h(
            'button.secondary',
            {
              type: 'button',
              testid: 'detail-original',
              onclick: () => openOriginal(id).catch((error) => toast(errorText(error), 'error')),
            },
            'Open original',
          ),
        ),
        facts,
        h('h3', null, 'Paths'),
        paths,
      ),
    ),
    h('section.detail-similar', null, h('h3', null, 'Similar images'), similar),
  );
  container.append(view);

  const onKey = (event) => {
    if (event.defaultPrevented || event.altKey || event.ctrlKey || event.metaKey) return;
    if (event.target.closest?.('input, textarea, select')) return;
    if (event.key === 'ArrowLeft') neighbour(-1);
    else if (event.key === 'ArrowRight') neighbour(1);
    else if (event.key === 'Escape') onClose();
    else return;
    event.preventDefault();
  };
  view.addEventListener('keydown', onKey);
  view.focus({ preventScroll: true });

  getJson(`images/${encodeURIComponent(id)}`, withCollection(), { signal: aborter.signal })
    .then((record) => fill(record.payload ?? {}))
    .catch((error) => {
      if (error.name === 'AbortError') return;
      title.textContent = 'Not found';
      caption.textContent = errorText(error);
    });

  function fill(p) {
    title.textContent = p.filename || id;
    picture.alt = p.caption || p.filename || '';
    caption.textContent = p.caption || 'No caption.';
    const rows = [
      ['Dimensions', p.width && p.height ? `${p.width} × ${p.height}` : null],
      ['Format', p.format],
      ['Size', p.bytes != null ? `${formatBytes(p.bytes)} (${formatNumber(p.bytes)} bytes)` : null],
      ['Taken', p.taken_at ? formatTime(p.taken_at) : null],
      ['Camera', [p.camera_make, p.camera_model].filter(Boolean).join(' ') || null],
      [
        'GPS',
        p.gps
          ? h('a', { href: `geo:${p.gps.lat},${p.gps.lon}`, testid: 'detail-gps', title: 'Open in a maps app' }, formatCoordinates(p.gps.lat, p.gps.lon))
          : null,
      ],
      ['Modified', p.mtime ? formatTime(p.mtime) : null],
      ['Ingested', p.ingested_at ? formatTime(p.ingested_at) : null],
      ['SHA-256', p.sha256 ? h('code.hash', null, p.sha256) : null],
      ['Job', p.job_id ? h('code', null, p.job_id) : null],
      ['Orphaned', p.orphaned ? 'yes: no file of the source holds it any more' : null],
    ];
    facts.replaceChildren(...rows.filter(([, v]) => v != null && v !== '').flatMap(([k, v]) => [h('dt', null, k), h('dd', null, v)]));
    const all = p.paths?.length ? p.paths : p.path ? [p.path] : [];
    paths.replaceChildren(...all.map((path) => h('li', null, h('code', null, path))));
    if (p.more_paths) paths.append(h('li.muted', null, `and ${formatNumber(p.more_paths)} more`));
  }

  postJson('search', bodyWithCollection({ like_id: id, limit: SIMILAR + 1 }), { signal: aborter.signal })
    .then((hits) => {
      const others = hits.filter((hit) => hit.id !== id).slice(0, SIMILAR);
      if (!others.length) {
        similar.replaceChildren(h('p.muted', null, 'No other images.'));
        return;
      }
      similar.replaceChildren(
        ...others.map((hit) =>
          h(
            'a.tile',
            { href: hashOf(`image/${encodeURIComponent(hit.id)}`), testid: 'similar-item', dataset: { id: hit.id }, title: hit.payload?.filename ?? '' },
            lazyImage(thumbnailPath(hit.id), { alt: hit.payload?.caption ?? hit.payload?.filename ?? '' }),
            h('span.badge', null, hit.score.toFixed(3)),
          ),
        ),
      );
    })
    .catch((error) => {
      if (error.name !== 'AbortError') similar.replaceChildren(h('p.muted', null, errorText(error)));
    });

  return () => {
    aborter.abort();
    view.removeEventListener('keydown', onKey);
    releaseImages(container);
  };
}

/** `#/image/<id>` opened directly: the detail view as a page; Escape goes to the gallery. */
export function mount(root, args) {
  const id = args[0];
  const cleanup = renderDetail(root, id, { onClose: () => (location.hash = browse.from || '#/gallery') });
  return { cleanup };
}
