// Talking to the API. Every URL is relative (api/v1/...), never rooted at the host: the page is always
// served at the root of wherever the server is mounted, so a reverse proxy may put it under any
// path prefix. The API key, when the server wants one, is kept in localStorage and sent as
// `x-api-key` on every request; a 401 opens the key dialog and the request is sent again.

const KEY_STORE = 'imgfleet.apiKey';
const COLLECTION_STORE = 'imgfleet.collection';

function stored(name) {
  try {
    return localStorage.getItem(name) ?? '';
  } catch {
    return '';
  }
}

function store(name, value) {
  try {
    if (value) localStorage.setItem(name, value);
    else localStorage.removeItem(name);
  } catch {
    // Private mode without storage: the value lives as long as the page.
  }
}

/** What every request carries: the key, and the collection the UI works on ('' = the server's selected one). */
export const session = {
  key: stored(KEY_STORE),
  collection: stored(COLLECTION_STORE),
};

export function setKey(key) {
  session.key = key;
  store(KEY_STORE, key);
  document.dispatchEvent(new CustomEvent('imgfleet:key'));
}

export function setCollection(name) {
  if (name === session.collection) return;
  session.collection = name;
  store(COLLECTION_STORE, name);
  document.dispatchEvent(new CustomEvent('imgfleet:collection'));
}

/** An error answered by the API (`{"error": {"code", "message"}}`) or by the network. */
export class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.name = 'ApiError';
    this.status = status;
    this.code = code;
  }
}

/** `api/v1/<path>?<query>`; query entries that are null, undefined or '' are left out. */
export function apiUrl(path, query) {
  const params = new URLSearchParams();
  for (const [name, value] of Object.entries(query ?? {})) {
    if (value != null && value !== '') params.set(name, typeof value === 'object' ? JSON.stringify(value) : String(value));
  }
  const qs = params.toString();
  return `api/v1/${path}${qs ? `?${qs}` : ''}`;
}

/** The query of a GET that works on the UI's collection. */
export function withCollection(query = {}) {
  return session.collection ? { ...query, collection: session.collection } : query;
}

/** The JSON body of a POST that works on the UI's collection. */
export function bodyWithCollection(body = {}) {
  return session.collection ? { ...body, collection: session.collection } : body;
}

export async function errorOf(response) {
  let code = `http_${response.status}`;
  let message = `${response.status} ${response.statusText}`.trim();
  try {
    const body = await response.json();
    if (body?.error) {
      code = body.error.code ?? code;
      message = body.error.message ?? message;
    }
  } catch {
    // Not JSON (a proxy's error page): the status line says enough.
  }
  return new ApiError(response.status, code, message);
}

/**
 * Sends a request and returns the Response once it is 2xx. A 401 asks for a key (one dialog for
 * every request refused at once) and sends the request again; cancelling the dialog rejects.
 */
export async function request(path, { method = 'GET', query, json, body, signal } = {}) {
  const url = apiUrl(path, query);
  for (;;) {
    const headers = {};
    if (session.key) headers['x-api-key'] = session.key;
    let payload = body;
    if (json !== undefined) {
      headers['content-type'] = 'application/json';
      payload = JSON.stringify(json);
    }
    let response;
    try {
      response = await fetch(url, { method, headers, body: payload, signal });
    } catch (error) {
      if (error?.name === 'AbortError') throw error;
      throw new ApiError(0, 'network', `the server did not answer (${error.message})`);
    }
    if (response.ok) return response;
    const error = await errorOf(response);
    if (response.status === 401) {
      await askForKey(error.message);
      continue;
    }
    throw error;
  }
}

export async function getJson(path, query, options = {}) {
  return (await request(path, { ...options, query })).json();
}

export async function postJson(path, json, options = {}) {
  return (await request(path, { ...options, method: 'POST', json })).json();
}

export async function deleteJson(path, query) {
  return (await request(path, { method: 'DELETE', query })).json();
}

let pendingPrompt = null;

/**
 * Opens the key dialog (once, however many requests were refused) and resolves when a key is
 * saved; rejects with a 401 ApiError when the user cancels.
 */
export function askForKey(reason) {
  pendingPrompt ??= showKeyDialog(reason).finally(() => {
    pendingPrompt = null;
  });
  return pendingPrompt;
}

function showKeyDialog(reason) {
  const dialog = document.getElementById('key-dialog');
  const form = dialog.querySelector('form');
  const input = dialog.querySelector('input[name=key]');
  const message = dialog.querySelector('.key-reason');
  dialog.querySelector('#key-forget').hidden = !session.key;
  message.textContent = session.key
    ? `The server refused the key saved in this browser: ${reason}`
    : `This server needs an API key: ${reason}`;
  input.value = '';
  return new Promise((resolve, reject) => {
    const done = (event) => {
      form.removeEventListener('submit', done);
      dialog.removeEventListener('close', closed);
      event.preventDefault();
      const key = input.value.trim();
      dialog.close();
      setKey(key);
      resolve();
    };
    // Escape or the cancel button: the request fails as refused.
    const closed = () => {
      form.removeEventListener('submit', done);
      reject(new ApiError(401, 'unauthorized', 'no API key given'));
    };
    form.addEventListener('submit', done);
    dialog.addEventListener('close', closed, { once: true });
    if (!dialog.open) dialog.showModal();
    input.focus();
  });
}

/** Opens the key dialog on the user's request (header button): change or forget the key. */
export function editKey() {
  const dialog = document.getElementById('key-dialog');
  const form = dialog.querySelector('form');
  const input = dialog.querySelector('input[name=key]');
  dialog.querySelector('#key-forget').hidden = !session.key;
  dialog.querySelector('.key-reason').textContent = session.key
    ? 'A key is saved in this browser. Enter another one, or forget it.'
    : 'Enter the API key the server was started with (--api-key).';
  input.value = '';
  const done = (event) => {
    event.preventDefault();
    form.removeEventListener('submit', done);
    const key = input.value.trim();
    dialog.close();
    if (key) setKey(key);
  };
  form.addEventListener('submit', done);
  dialog.addEventListener('close', () => form.removeEventListener('submit', done), { once: true });
  dialog.showModal();
  input.focus();
}
