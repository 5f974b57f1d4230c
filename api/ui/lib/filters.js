// The filters shared by search and the gallery: one set, kept in localStorage, turned into the
// API's filter language (README "Filters"): `{"taken_at": {"gte": "2024-01-01"}, ...}`.

import { h, field } from './dom.js';

const STORE = 'imgfleet.filters';
const FORMATS = ['jpeg', 'png', 'webp', 'gif', 'bmp', 'tiff'];
const MIB = 1024 * 1024;

const EMPTY = { from: '', to: '', camera: '', format: '', minMb: '', maxMb: '', minWidth: '', minHeight: '', caption: '' };

function load() {
  try {
    return { ...EMPTY, ...JSON.parse(localStorage.getItem(STORE) ?? '{}') };
  } catch {
    return { ...EMPTY };
  }
}

/** The current filter form values (strings, '' = not set). */
export const filters = load();

function save() {
  try {
    localStorage.setItem(STORE, JSON.stringify(filters));
  } catch {
    // No storage: the filters last as long as the page.
  }
}

/** The day after a `YYYY-MM-DD` date, so "to" includes its whole day (`lt` the next one). */
function nextDay(date) {
  const d = new Date(`${date}T00:00:00Z`);
  d.setUTCDate(d.getUTCDate() + 1);
  return d.toISOString().slice(0, 10);
}

function positive(text) {
  const n = Number(text);
  return text !== '' && Number.isFinite(n) && n >= 0 ? n : null;
}

/** The filter object for the API, or null when nothing is set. */
export function filterJson(values = filters) {
  const out = {};
  if (values.from || values.to) {
    out.taken_at = {};
    if (values.from) out.taken_at.gte = values.from;
    if (values.to) out.taken_at.lt = nextDay(values.to);
  }
  const camera = values.camera.trim();
  // One box for the camera: exact make ("Canon") or model ("EOS R5").
  if (camera) out.any = [{ camera_make: camera }, { camera_model: camera }];
  if (values.format) out.format = values.format;
  const minMb = positive(values.minMb);
  const maxMb = positive(values.maxMb);
  if (minMb != null || maxMb != null) {
    out.bytes = {};
    if (minMb != null) out.bytes.gte = Math.round(minMb * MIB);
    if (maxMb != null) out.bytes.lte = Math.round(maxMb * MIB);
  }
  const minWidth = positive(values.minWidth);
  const minHeight = positive(values.minHeight);
  if (minWidth != null) out.width = { gte: Math.round(minWidth) };
  if (minHeight != null) out.height = { gte: Math.round(minHeight) };
  const caption = values.caption.trim();
  if (caption) out.caption = caption;
  return Object.keys(out).length ? out : null;
}

export function activeFilterCount() {
  return Object.entries(filters).filter(([, v]) => v !== '').length;
}

/**
 * The filter panel: a <details> whose summary shows how many filters are set. `onChange` runs
 * after every change (debounced by the caller if it wants).
 */
export function filterPanel(onChange) {
  const summary = h('summary', { testid: 'filters-toggle' });
  const showCount = () => {
    const n = activeFilterCount();
    summary.textContent = n ? `Filters (${n})` : 'Filters';
  };
  showCount();
  const input = (name, props) =>
    h('input', {
      name,
      value: filters[name],
      testid: `filter-${name}`,
      onchange: (event) => {
        filters[name] = event.target.value;
        save();
        showCount();
        onChange();
      },
      ...props,
    });
  const format = h(
    'select',
    {
      name: 'format',
      testid: 'filter-format',
      onchange: (event) => {
        filters.format = event.target.value;
        save();
        showCount();
        onChange();
      },
    },
    h('option', { value: '' }, 'any'),
    FORMATS.map((f) => h('option', { value: f }, f)),
  );
  format.value = filters.format;
  const form = h(
    'form.filters',
    { onsubmit: (event) => event.preventDefault() },
    field('Taken from', input('from', { type: 'date' })),
    field('Taken to', input('to', { type: 'date' })),
    field('Camera', input('camera', { type: 'text', placeholder: 'make or model, exact', autocomplete: 'off' })),
    field('Format', format),
    field('Min size (MiB)', input('minMb', { type: 'number', min: 0, step: 'any', inputmode: 'decimal' })),
    field('Max size (MiB)', input('maxMb', { type: 'number', min: 0, step: 'any', inputmode: 'decimal' })),
    field('Min width (px)', input('minWidth', { type: 'number', min: 0, step: 1, inputmode: 'numeric' })),
    field('Min height (px)', input('minHeight', { type: 'number', min: 0, step: 1, inputmode: 'numeric' })),
    field('Caption has words', input('caption', { type: 'text', autocomplete: 'off' })),
    h(
      'button.secondary',
      {
        type: 'button',
        testid: 'filters-clear',
        onclick: () => {
          Object.assign(filters, EMPTY);
          save();
          for (const control of form.querySelectorAll('input, select')) control.value = '';
          showCount();
          onChange();
        },
      },
      'Clear filters',
    ),
  );
  return h('details.filter-panel', { open: activeFilterCount() > 0 }, summary, form);
}
