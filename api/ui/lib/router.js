// Hash routing: the page itself is always the server's root ("/"), so it works under any path
// prefix and needs no server-side routes. `#/search?q=dog`, `#/gallery`, `#/image/<id>`,
// `#/duplicates`, `#/jobs`, `#/fleet`.

/** `#/image/abc?x=1` -> { name: 'image', args: ['abc'], params: URLSearchParams('x=1') }. */
export function parseHash(hash = location.hash) {
  const raw = hash.replace(/^#\/?/, '');
  const at = raw.indexOf('?');
  const path = at < 0 ? raw : raw.slice(0, at);
  const [name, ...args] = path.split('/').filter(Boolean);
  return { name: name || '', args: args.map(decodeURIComponent), params: new URLSearchParams(at < 0 ? '' : raw.slice(at + 1)) };
}

/** `hashOf('search', {q: 'dog'})` -> `#/search?q=dog` (empty values left out). */
export function hashOf(name, params = {}) {
  const qs = new URLSearchParams(Object.entries(params).filter(([, v]) => v != null && v !== '')).toString();
  return `#/${name}${qs ? `?${qs}` : ''}`;
}

/** The hash the mounted view stands for; a view that changes its own state updates it here. */
export const current = { hash: null };

/** A new history entry for the mounted view's state, without remounting it (no hashchange fires). */
export function pushHash(hash) {
  if (hash === location.hash) return;
  history.pushState(null, '', hash);
  // As the browser serialises it, for comparing with location.hash later.
  current.hash = location.hash;
}

/** The same, replacing the entry (sorting, a slider: not worth a Back step each). */
export function replaceHash(hash) {
  history.replaceState(null, '', hash);
  current.hash = location.hash;
}

/**
 * The list an image was opened from: the detail view's previous/next (arrow keys) walk it. Views
 * keep `ids` up to date as they load more.
 */
export const browse = { ids: [], from: '#/gallery', more: null };

export function setBrowse(ids, from, more = null) {
  browse.ids = ids;
  browse.from = from;
  // Called by the detail view at the end of the list: loads the next page if the list has one.
  browse.more = more;
}
