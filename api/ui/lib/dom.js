// Small DOM helpers shared by every view. Text always goes in as text nodes (never innerHTML),
// so a caption or file name from the payload cannot inject markup.

/**
 * `h('div.card.big', {testid: 'x', onclick: f, href: '#/a'}, child, [children], 'text')`.
 * Props: `on*` functions become listeners, `testid` becomes `data-testid`, `dataset` is merged
 * into `data-*`, `true` sets an empty attribute, `null`/`false`/`undefined` are skipped, and the
 * live properties `value`, `checked` and `disabled` are assigned rather than set as attributes.
 */
export function h(tag, props, ...children) {
  const [name, ...classes] = tag.split('.');
  const el = document.createElement(name || 'div');
  if (classes.length) el.className = classes.join(' ');
  for (const [key, value] of Object.entries(props ?? {})) {
    if (value == null || value === false) continue;
    if (key.startsWith('on') && typeof value === 'function') el.addEventListener(key.slice(2), value);
    else if (key === 'testid') el.dataset.testid = value;
    else if (key === 'dataset') Object.assign(el.dataset, value);
    else if (key === 'class') el.className = [el.className, value].filter(Boolean).join(' ');
    else if (key === 'value' || key === 'checked' || key === 'disabled') el[key] = value;
    else el.setAttribute(key, value === true ? '' : String(value));
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const child of children) {
    if (child == null || child === false) continue;
    if (Array.isArray(child)) append(el, child);
    else el.append(child instanceof Node ? child : String(child));
  }
}

/** Shows a short message in the toast region; errors stay longer and are announced at once. */
export function toast(message, kind = 'info') {
  const region = document.getElementById('toasts');
  const item = h('div.toast', { class: kind, role: kind === 'error' ? 'alert' : 'status', testid: 'toast' }, String(message));
  region.append(item);
  setTimeout(() => item.remove(), kind === 'error' ? 10000 : 4000);
}

/** An error as a line for the user: the API's own message when there is one. */
export function errorText(error) {
  if (error?.name === 'AbortError') return '';
  return error?.message || String(error);
}

const UNITS = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];

export function formatBytes(bytes) {
  if (bytes == null || Number.isNaN(Number(bytes))) return '–';
  let value = Number(bytes);
  let unit = 0;
  while (value >= 1024 && unit < UNITS.length - 1) {
    value /= 1024;
    unit += 1;
  }
  return `${unit === 0 ? value : value.toFixed(value < 10 ? 1 : 0)} ${UNITS[unit]}`;
}

const NUMBER = new Intl.NumberFormat();

export function formatNumber(n) {
  return n == null ? '–' : NUMBER.format(n);
}

/** An RFC 3339 time in the reader's locale; the raw text when it does not parse. */
export function formatTime(text) {
  if (!text) return '–';
  const date = new Date(text);
  return Number.isNaN(date.getTime()) ? text : date.toLocaleString();
}

export function formatSeconds(seconds) {
  if (seconds == null) return '–';
  const s = Math.round(seconds);
  if (s < 60) return `${s} s`;
  if (s < 3600) return s % 60 ? `${Math.floor(s / 60)} min ${s % 60} s` : `${s / 60} min`;
  const minutes = Math.floor((s % 3600) / 60);
  return minutes ? `${Math.floor(s / 3600)} h ${minutes} min` : `${Math.floor(s / 3600)} h`;
}

/** Decimal degrees as "48.85837° N, 2.29448° E". */
export function formatCoordinates(lat, lon) {
  const part = (value, positive, negative) => `${Math.abs(value).toFixed(5)}° ${value >= 0 ? positive : negative}`;
  return `${part(lat, 'N', 'S')}, ${part(lon, 'E', 'W')}`;
}

/** Calls `fn` once `ms` have passed without another call. */
export function debounce(fn, ms) {
  let timer;
  return (...args) => {
    clearTimeout(timer);
    timer = setTimeout(() => fn(...args), ms);
  };
}

/** A polling loop that pauses while the page is hidden; `stop()` ends it. `fn` returns the next delay. */
export function poll(fn, firstDelay = 0) {
  let timer = null;
  let stopped = false;
  const tick = async () => {
    timer = null;
    if (stopped) return;
    if (document.hidden) {
      document.addEventListener('visibilitychange', tick, { once: true });
      return;
    }
    let next = 5000;
    try {
      next = await fn();
    } catch (error) {
      if (error?.name !== 'AbortError') console.warn(error);
    }
    if (!stopped) timer = setTimeout(tick, next);
  };
  timer = setTimeout(tick, firstDelay);
  return {
    stop() {
      stopped = true;
      if (timer) clearTimeout(timer);
      document.removeEventListener('visibilitychange', tick);
    },
    /** Runs the next tick now (after an action that changes what is polled). */
    now() {
      if (stopped) return;
      if (timer) clearTimeout(timer);
      timer = setTimeout(tick, 0);
    },
  };
}

/** `<label>` + control in one row of a form. */
export function field(label, control, hint) {
  return h('label.field', null, h('span.label', null, label), control, hint ? h('span.hint', null, hint) : null);
}

/** Reads an image file the user gave (drop, paste, picker) as a data URL. */
export function readAsDataUrl(file) {
  return new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onload = () => resolve(reader.result);
    reader.onerror = () => reject(reader.error);
    reader.readAsDataURL(file);
  });
}

/**
 * Makes `zone` a drop target that also opens `input` on Enter or Space (it is a button to the
 * keyboard); `onFiles` gets the dropped files.
 */
export function dropZone(zone, input, onFiles) {
  zone.addEventListener('keydown', (event) => {
    if (event.key === 'Enter' || event.key === ' ') {
      event.preventDefault();
      input.click();
    }
  });
  zone.addEventListener('dragover', (event) => {
    event.preventDefault();
    zone.classList.add('over');
  });
  zone.addEventListener('dragleave', () => zone.classList.remove('over'));
  zone.addEventListener('drop', (event) => {
    event.preventDefault();
    zone.classList.remove('over');
    onFiles([...(event.dataTransfer?.files ?? [])]);
  });
}
