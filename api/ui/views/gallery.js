// Gallery: thumbnails page by page from `GET api/v1/images` as the reader scrolls (an
// IntersectionObserver on a sentinel below the grid), sorted and filtered. Nothing loads the
// whole collection: one page at a time, and the thumbnails only near the viewport.

import { h, debounce, errorText, formatNumber } from '../lib/dom.js';
import { getJson, withCollection } from '../lib/api.js';
import { lazyImage, releaseImages, thumbnailPath } from '../lib/images.js';
import { filterJson, filterPanel } from '../lib/filters.js';
import { hashOf, replaceHash, setBrowse } from '../lib/router.js';

const SORTS = [
  ['ingested_at', 'Date ingested'],
  ['taken_at', 'Date taken'],
  ['bytes', 'File size'],
  ['', 'Id (stable)'],
];

export function mount(root, _args, params) {
  let sort = params.get('sort') ?? 'ingested_at';
  if (sort === 'id') sort = '';
  if (!SORTS.some(([value]) => value === sort)) sort = 'ingested_at';
  let order = params.get('order') === 'asc' ? 'asc' : 'desc';
  // per_page in the URL is for links and tests; 1..500 as the API allows.
  const perPage = Math.min(500, Math.max(1, Number(params.get('per_page')) || 60));

  let page = 0;
  let done = false;
  let loading = false;
  let aborter = null;
  let ids = [];
  // Bumped by every restart: an answer for an earlier sort or filter is dropped.
  let generation = 0;

  const total = h('p.status', { testid: 'gallery-total', 'aria-live': 'polite' }, 'Loading…');
  const sortSelect = h(
    'select',
    {
      testid: 'gallery-sort',
      'aria-label': 'Sort by',
      onchange: () => {
        sort = sortSelect.value;
        restart();
      },
    },
    SORTS.map(([value, label]) => h('option', { value }, label)),
  );
  sortSelect.value = sort;
  const orderButton = h('button.secondary', {
    type: 'button',
    testid: 'gallery-order',
    onclick: () => {
      order = order === 'desc' ? 'asc' : 'desc';
      restart();
    },
  });
  const grid = h('div.grid', { testid: 'gallery-grid' });
  const sentinel = h('div.sentinel', { testid: 'gallery-sentinel', 'aria-hidden': 'true' });
  const end = h('p.status', { testid: 'gallery-end' });

  root.append(
    h(
      'section.view.gallery',
      null,
      h('h1.visually-hidden', null, 'Gallery'),
      h('div.toolbar', null, h('label.inline', null, 'Sort ', sortSelect), orderButton, filterPanel(debounce(restart, 300)), total),
      grid,
      sentinel,
      end,
    ),
  );

  const observer = new IntersectionObserver((entries) => entries.some((e) => e.isIntersecting) && loadNext(), { rootMargin: '800px 0px' });

  function hash() {
    return hashOf('gallery', {
      sort: sort === 'ingested_at' ? '' : sort || 'id',
      order: order === 'desc' ? '' : order,
      per_page: perPage === 60 ? '' : perPage,
    });
  }

  function restart() {
    generation += 1;
    aborter?.abort();
    releaseImages(grid);
    grid.replaceChildren();
    page = 0;
    done = false;
    loading = false;
    ids = [];
    end.textContent = '';
    orderButton.textContent = order === 'desc' ? '↓ Newest / largest first' : '↑ Oldest / smallest first';
    orderButton.setAttribute('aria-label', order === 'desc' ? 'Descending order; switch to ascending' : 'Ascending order; switch to descending');
    replaceHash(hash());
    setBrowse(ids, hash(), loadNext);
    observer.disconnect();
    loadNext().then(() => observer.observe(sentinel));
  }

  async function loadNext() {
    if (loading || done) return;
    loading = true;
    const mine = generation;
    aborter = new AbortController();
    const query = withCollection({ page: page + 1, per_page: perPage, filters: filterJson() ?? undefined });
    if (sort) {
      query.sort_by = sort;
      query.sort_order = order;
    }
    try {
      const result = await getJson('images', query, { signal: aborter.signal });
      if (mine !== generation) return;
      page = result.page;
      for (const item of result.items) {
        ids.push(item.id);
        grid.append(tile(item));
      }
      total.textContent = `${formatNumber(result.total)} image${result.total === 1 ? '' : 's'}`;
      // A page shorter than asked is the end too: sorting by a field skips images without it.
      done = result.depth_limited || result.items.length < perPage || page >= result.total_pages;
      if (done) {
        if (result.depth_limited) end.textContent = 'Listing stops at the first 100,000 images of an order: narrow it with filters to see further.';
        else if (ids.length < result.total && sort) end.textContent = `${formatNumber(result.total - ids.length)} images have no ${SORTS.find(([v]) => v === sort)[1].toLowerCase()} and are not listed in this order.`;
        else end.textContent = ids.length ? 'End of the gallery.' : 'No images here yet: add some on the Jobs page.';
        observer.disconnect();
      }
      loading = false;
      // The sentinel may still be in view after a short page: observe afresh to be told again.
      if (!done) {
        observer.unobserve(sentinel);
        observer.observe(sentinel);
      }
    } catch (error) {
      if (mine !== generation) return;
      loading = false;
      if (error.name === 'AbortError') return;
      end.textContent = errorText(error);
      done = true;
    }
  }

  function tile(item) {
    const p = item.payload ?? {};
    return h(
      'a.tile',
      { href: hashOf(`image/${encodeURIComponent(item.id)}`), testid: 'gallery-item', dataset: { id: item.id }, title: p.caption ? `${p.filename}: ${p.caption}` : p.filename ?? '' },
      lazyImage(thumbnailPath(item.id), { alt: p.caption || p.filename || '' }),
      h('span.tile-label', null, p.filename ?? ''),
    );
  }

  restart();

  return {
    cleanup() {
      aborter?.abort();
      observer.disconnect();
    },
  };
}
