// Duplicates, of two kinds:
//  - exact copies: one stored image (same content) found under several paths. The API keeps
//    them as one point whose payload lists every path; the UI finds such images page by page.
//  - near duplicates: different files that look the same (`POST api/v1/duplicates`, a
//    similarity threshold), shown side by side with their sizes and dates.
// Groups can be marked as reviewed; the marks are kept in this browser.

import { h, errorText, formatBytes, formatNumber, formatTime } from '../lib/dom.js';
import { ApiError, getJson, postJson, bodyWithCollection, withCollection, session } from '../lib/api.js';
import { lazyImage, releaseImages, thumbnailPath } from '../lib/images.js';
import { hashOf, replaceHash } from '../lib/router.js';

const GROUPS_PER_PAGE = 10;
const SCAN_PAGE = 500;
/** Images listed per "find more" when the server cannot filter by path count (see ui-notes). */
const SCAN_BUDGET = 5000;
const REVIEWED_STORE = 'imgfleet.reviewedGroups';

function reviewedSet() {
  try {
    return new Set(JSON.parse(localStorage.getItem(REVIEWED_STORE) ?? '[]'));
  } catch {
    return new Set();
  }
}

function saveReviewed(set) {
  try {
    // The newest 5000 marks are enough; the list must not grow without bound.
    localStorage.setItem(REVIEWED_STORE, JSON.stringify([...set].slice(-5000)));
  } catch {
    // No storage: marks last as long as the page.
  }
}

/** A group's key: its collection and its sorted ids, so the same group is recognised again. */
function groupKey(ids) {
  return `${session.collection || '-'}:${[...ids].sort().join(',')}`;
}

export function mount(root, _args, params) {
  const reviewed = reviewedSet();
  const tab = params.get('tab') === 'near' ? 'near' : 'exact';
  const cleanups = [];

  const exactTab = h('button.tab', { type: 'button', role: 'tab', testid: 'dup-tab-exact', 'aria-selected': String(tab === 'exact'), onclick: () => show('exact') }, 'Exact copies');
  const nearTab = h('button.tab', { type: 'button', role: 'tab', testid: 'dup-tab-near', 'aria-selected': String(tab === 'near'), onclick: () => show('near') }, 'Near duplicates');
  const panel = h('div.tab-panel', { role: 'tabpanel' });
  const tabs = h('div.tabs', { role: 'tablist', 'aria-label': 'Kind of duplicates' }, exactTab, nearTab);
  tabs.addEventListener('keydown', (event) => {
    if (event.key === 'ArrowRight' || event.key === 'ArrowLeft') {
      const other = document.activeElement === exactTab ? nearTab : exactTab;
      other.focus();
      other.click();
    }
  });
  root.append(h('section.view.duplicates', null, h('h1', null, 'Duplicates'), tabs, panel));

  function show(which) {
    for (const cleanup of cleanups.splice(0)) cleanup();
    releaseImages(panel);
    panel.replaceChildren();
    exactTab.setAttribute('aria-selected', String(which === 'exact'));
    nearTab.setAttribute('aria-selected', String(which === 'near'));
    replaceHash(hashOf('duplicates', { tab: which === 'near' ? 'near' : '' }));
    cleanups.push(which === 'near' ? near(panel, reviewed) : exact(panel, reviewed));
  }
  show(tab);

  return { cleanup: () => cleanups.splice(0).forEach((cleanup) => cleanup()) };
}

/** The "reviewed" toggle of a group, and the class it sets on the group element. */
function reviewButton(group, ids, reviewed) {
  const key = groupKey(ids);
  const button = h('button.secondary.small', { type: 'button', testid: 'dup-mark-reviewed' });
  const paint = () => {
    const done = reviewed.has(key);
    group.dataset.reviewed = String(done);
    button.textContent = done ? 'Reviewed ✓ (undo)' : 'Mark reviewed';
    button.setAttribute('aria-pressed', String(done));
  };
  button.addEventListener('click', () => {
    if (reviewed.has(key)) reviewed.delete(key);
    else reviewed.add(key);
    saveReviewed(reviewed);
    paint();
  });
  paint();
  return button;
}

function exact(panel, reviewed) {
  const aborter = new AbortController();
  const list = h('div.groups', { testid: 'dup-exact-list' });
  const status = h('p.status', { testid: 'dup-exact-status', 'aria-live': 'polite' });
  const more = h('button.secondary', { type: 'button', testid: 'dup-exact-more', onclick: () => scan() }, 'Find more');
  panel.append(
    h('p.muted', null, 'One picture stored once but found at several paths: the same content, so one entry with every place it lives.'),
    list,
    status,
    more,
  );
  // Ask the server to filter first (a `path_count` field, see ui-notes.md); without it, list the
  // collection page by page and keep the images with more than one path.
  let serverFilter = true;
  let page = 0;
  let scanned = 0;
  let found = 0;
  let total = null;

  async function scan() {
    more.disabled = true;
    status.textContent = 'Looking…';
    let budget = SCAN_BUDGET;
    const before = found;
    try {
      while (budget > 0) {
        let result;
        const query = withCollection({ page: page + 1, per_page: SCAN_PAGE });
        if (serverFilter) query.filters = { path_count: { gte: 2 } };
        try {
          result = await getJson('images', query, { signal: aborter.signal });
        } catch (error) {
          if (serverFilter && error instanceof ApiError && error.status === 422) {
            serverFilter = false;
            continue;
          }
          throw error;
        }
        page = result.page;
        budget -= result.items.length;
        if (!serverFilter) {
          scanned += result.items.length;
          total = result.total;
        }
        for (const item of result.items) {
          const p = item.payload ?? {};
          if ((p.paths?.length ?? 0) > 1 || p.more_paths > 0) {
            found += 1;
            list.append(exactGroup(item, reviewed));
          }
        }
        const end = result.depth_limited || result.items.length < SCAN_PAGE || page >= result.total_pages;
        if (end) {
          more.hidden = true;
          break;
        }
        if (found - before >= GROUPS_PER_PAGE) break;
      }
      status.textContent = serverFilter
        ? `${formatNumber(found)} image${found === 1 ? '' : 's'} with copies${more.hidden ? '' : ' so far'}.`
        : `${formatNumber(found)} image${found === 1 ? '' : 's'} with copies among ${formatNumber(scanned)} of ${formatNumber(total)} images looked at.`;
    } catch (error) {
      if (error.name === 'AbortError') return;
      status.textContent = errorText(error);
    } finally {
      more.disabled = false;
    }
  }
  scan();
  return () => aborter.abort();
}

function exactGroup(item, reviewed) {
  const p = item.payload ?? {};
  const paths = p.paths?.length ? p.paths : [p.path];
  const group = h('article.group', { testid: 'dup-exact-group', dataset: { id: item.id } });
  group.append(
    h(
      'header.group-head',
      null,
      h('h2', null, `${formatNumber(paths.length + (p.more_paths ?? 0))} copies of ${p.filename ?? item.id}`),
      reviewButton(group, [item.id], reviewed),
    ),
    h(
      'div.group-body',
      null,
      h('a.tile', { href: hashOf(`image/${encodeURIComponent(item.id)}`), title: 'Open' }, lazyImage(thumbnailPath(item.id), { alt: p.caption || p.filename || '' })),
      h(
        'div',
        null,
        h('p.muted', null, [p.width && `${p.width} × ${p.height}`, p.format, formatBytes(p.bytes), p.taken_at && `taken ${formatTime(p.taken_at)}`].filter(Boolean).join(' · ')),
        h('ul.paths', null, paths.map((path) => h('li', null, h('code', null, path))), p.more_paths ? h('li.muted', null, `and ${formatNumber(p.more_paths)} more`) : null),
      ),
    ),
  );
  return group;
}

function near(panel, reviewed) {
  let aborter = null;
  let groups = [];
  let page = 0;
  const threshold = h('input', { type: 'range', min: 0.8, max: 1, step: 0.005, value: '0.97', testid: 'dup-threshold', 'aria-label': 'Similarity threshold' });
  const thresholdValue = h('output', { testid: 'dup-threshold-value' }, '0.970');
  threshold.addEventListener('input', () => (thresholdValue.textContent = Number(threshold.value).toFixed(3)));
  const maxPoints = h(
    'select',
    { testid: 'dup-max-points', 'aria-label': 'Images examined at most' },
    [10000, 50000, 200000, 1000000].map((n) => h('option', { value: String(n) }, formatNumber(n))),
  );
  maxPoints.value = '50000';
  const hideReviewed = h('input', { type: 'checkbox', testid: 'dup-hide-reviewed', onchange: () => render() });
  const find = h('button', { type: 'submit', testid: 'dup-find' }, 'Find near duplicates');
  const status = h('p.status', { testid: 'dup-status', 'aria-live': 'polite' });
  const list = h('div.groups', { testid: 'dup-near-list' });
  const prev = h('button.secondary', { type: 'button', testid: 'dup-prev', onclick: () => turn(-1) }, '← Previous');
  const next = h('button.secondary', { type: 'button', testid: 'dup-next', onclick: () => turn(1) }, 'Next →');
  const pageLabel = h('span', { testid: 'dup-page' });
  const pager = h('nav.pager', { 'aria-label': 'Groups pages', hidden: true }, prev, pageLabel, next);
  panel.append(
    h(
      'form.toolbar',
      {
        onsubmit: (event) => {
          event.preventDefault();
          search();
        },
      },
      h('label.inline', null, 'Similarity at least ', threshold, ' ', thresholdValue),
      h('label.inline', null, 'Examine up to ', maxPoints, ' images'),
      find,
      h('label.inline', null, hideReviewed, ' Hide reviewed'),
    ),
    status,
    list,
    pager,
  );

  async function search() {
    aborter?.abort();
    aborter = new AbortController();
    find.disabled = true;
    status.textContent = 'Comparing images… (up to 10 s)';
    try {
      const body = bodyWithCollection({ threshold: Number(threshold.value), limit: 1000, max_points: Number(maxPoints.value) });
      const result = await postJson('duplicates', body, { signal: aborter.signal });
      groups = result.duplicates;
      page = 0;
      status.textContent =
        `${formatNumber(groups.length)} group${groups.length === 1 ? '' : 's'} among ${formatNumber(result.scanned)} images examined` +
        (result.complete ? ' (the whole collection).' : ' (stopped early: not every image was examined; raise the limit or run again).');
      render();
    } catch (error) {
      if (error.name !== 'AbortError') status.textContent = errorText(error);
    } finally {
      find.disabled = false;
    }
  }

  function visible() {
    return hideReviewed.checked ? groups.filter((g) => !reviewed.has(groupKey(g.items.map((i) => i.id)))) : groups;
  }

  function turn(step) {
    page += step;
    render();
    list.scrollIntoView({ block: 'start' });
  }

  function render() {
    releaseImages(list);
    const shown = visible();
    const pages = Math.max(1, Math.ceil(shown.length / GROUPS_PER_PAGE));
    page = Math.min(Math.max(0, page), pages - 1);
    list.replaceChildren(...shown.slice(page * GROUPS_PER_PAGE, (page + 1) * GROUPS_PER_PAGE).map((g) => nearGroup(g, reviewed, aborter?.signal)));
    pager.hidden = shown.length <= GROUPS_PER_PAGE;
    prev.disabled = page === 0;
    next.disabled = page >= pages - 1;
    pageLabel.textContent = `Page ${page + 1} of ${pages}`;
  }

  return () => aborter?.abort();
}

function nearGroup(g, reviewed, signal) {
  const ids = g.items.map((i) => i.id);
  const group = h('article.group', { testid: 'dup-near-group', dataset: { ids: ids.join(',') } });
  const items = g.items.map((item) => {
    const details = h('p.muted.item-details', { testid: 'dup-item-details' }, '…');
    // Sizes and dates are not in the duplicates answer: read each image's payload.
    getJson(`images/${encodeURIComponent(item.id)}`, withCollection(), { signal })
      .then(({ payload: p }) => {
        details.replaceChildren(
          [p.width && `${p.width} × ${p.height}`, p.format, formatBytes(p.bytes)].filter(Boolean).join(' · '),
          h('br'),
          p.taken_at ? `taken ${formatTime(p.taken_at)}` : p.mtime ? `modified ${formatTime(p.mtime)}` : '',
        );
      })
      .catch((error) => error.name !== 'AbortError' && (details.textContent = errorText(error)));
    return h(
      'figure.dup-item',
      { testid: 'dup-item', dataset: { id: item.id } },
      h('a.tile', { href: hashOf(`image/${encodeURIComponent(item.id)}`), title: 'Open' }, lazyImage(thumbnailPath(item.id), { alt: item.filename ?? '' })),
      h('figcaption', null, h('strong', null, item.filename ?? item.id), h('code.path', null, item.path ?? ''), details),
    );
  });
  group.append(
    h('header.group-head', null, h('h2', null, `${g.items.length} images, similarity ≥ ${g.min_score.toFixed(3)}`), reviewButton(group, ids, reviewed)),
    h('div.side-by-side', null, items),
  );
  return group;
}
