// Jobs: start an ingest of a folder on the server, upload files, keep folders watched; follow
// every job live (polling `GET api/v1/jobs`), cancel one, read its failures; list, create and
// switch collections.

import { h, dropZone, field, errorText, formatBytes, formatNumber, formatSeconds, formatTime, poll, toast } from '../lib/dom.js';
import { ApiError, askForKey, deleteJson, errorOf, getJson, postJson, session, setCollection, bodyWithCollection } from '../lib/api.js';

const JOBS_SHOWN = 25;
/** Uploads go in requests of at most this many files and bytes: each must finish within the server's request timeout. */
const UPLOAD_FILES = 100;
const UPLOAD_BYTES = 48 * 1024 * 1024;
const IMAGE_NAME = /\.(jpe?g|png|webp|gif|bmp|tiff?|heic|avif)$/i;

export function mount(root) {
  const cleanups = [];
  const jobs = jobsSection(cleanups);
  root.append(
    h(
      'section.view.jobs',
      null,
      h('h1', null, 'Jobs'),
      h(
        'div.columns',
        null,
        h('div', null, ingestSection(jobs.refresh), uploadSection(jobs.refresh), jobs.element),
        h('div', null, collectionsSection(cleanups), watchSection(jobs.refresh, cleanups)),
      ),
    ),
  );
  return { cleanup: () => cleanups.forEach((cleanup) => cleanup()) };
}

function ingestSection(refresh) {
  const path = h('input', { type: 'text', name: 'directory_path', required: true, testid: 'ingest-path', placeholder: '/photos/2024 or s3://bucket/prefix', autocomplete: 'off', spellcheck: 'false' });
  const keep = h('input', { type: 'checkbox', name: 'keep_orphans', testid: 'ingest-keep-orphans' });
  const start = h('button', { type: 'submit', testid: 'ingest-start' }, 'Start ingest');
  return h(
    'form.card-section',
    {
      testid: 'ingest-form',
      onsubmit: async (event) => {
        event.preventDefault();
        start.disabled = true;
        try {
          const job = await postJson('ingest/', bodyWithCollection({ directory_path: path.value.trim(), keep_orphans: keep.checked || undefined }));
          toast(`Ingest of ${job.directory_path} into ${job.collection} started.`);
          refresh();
        } catch (error) {
          toast(errorText(error), 'error');
        } finally {
          start.disabled = false;
        }
      },
    },
    h('h2', null, 'Ingest a folder on the server'),
    field('Folder (absolute path on the server, inside an ingest root)', path),
    h('label.inline', null, keep, ' Keep images whose files are gone (marked orphaned) instead of deleting them'),
    h('div.actions', null, start),
  );
}

function uploadSection(refresh) {
  const results = h('ul.upload-results', { testid: 'upload-results', 'aria-live': 'polite' });
  const progress = h('progress', { max: 1, value: 0, hidden: true, testid: 'upload-progress' });
  const files = h('input.visually-hidden', { type: 'file', multiple: true, accept: 'image/*', testid: 'upload-input', onchange: () => send([...files.files], files) });
  const folder = h('input.visually-hidden', { type: 'file', multiple: true, webkitdirectory: true, testid: 'upload-folder-input', onchange: () => send([...folder.files].filter((f) => f.type.startsWith('image/') || IMAGE_NAME.test(f.name)), folder) });
  const drop = h(
    'div.dropzone',
    { testid: 'upload-drop', tabindex: '0', role: 'button', 'aria-label': 'Upload images: drop files here, or press Enter to pick files' },
    h('span', null, 'Drop images here, or ', h('label.link', null, 'pick files', files), ' or ', h('label.link', null, 'a folder', folder)),
  );
  dropZone(drop, files, (list) => send(list));

  async function send(list, input) {
    if (input) input.value = '';
    if (!list.length) return;
    results.replaceChildren();
    progress.hidden = false;
    progress.value = 0;
    const totalBytes = list.reduce((sum, f) => sum + f.size, 0) || 1;
    let sentBefore = 0;
    try {
      for (const batch of batches(list)) {
        const batchBytes = batch.reduce((sum, f) => sum + f.size, 0);
        const answer = await upload(batch, (loaded) => (progress.value = (sentBefore + Math.min(loaded, batchBytes)) / totalBytes));
        sentBefore += batchBytes;
        for (const f of answer.files) {
          results.append(
            h(
              'li',
              { class: f.outcome === 'failed' ? 'failed' : 'queued', testid: 'upload-result', dataset: { outcome: f.outcome } },
              h('code', null, f.name),
              ` ${formatBytes(f.bytes)}: ${f.outcome}`,
              f.reason ? ` — ${f.reason}` : '',
            ),
          );
        }
        refresh();
      }
      progress.value = 1;
    } catch (error) {
      toast(errorText(error), 'error');
    } finally {
      setTimeout(() => (progress.hidden = true), 1500);
    }
  }

  return h('section.card-section', null, h('h2', null, 'Upload images'), drop, progress, results);
}

function* batches(list) {
  let batch = [];
  let bytes = 0;
  for (const file of list) {
    if (batch.length && (batch.length >= UPLOAD_FILES || bytes + file.size > UPLOAD_BYTES)) {
      yield batch;
      batch = [];
      bytes = 0;
    }
    batch.push(file);
    bytes += file.size;
  }
  if (batch.length) yield batch;
}

/**
 * One multipart upload: the `collection` field first (the server reads it before the files),
 * then one `file` part per file. XMLHttpRequest rather than fetch for its upload progress.
 */
function upload(files, onProgress) {
  const form = new FormData();
  if (session.collection) form.append('collection', session.collection);
  for (const file of files) form.append('file', file, file.webkitRelativePath || file.name);
  return new Promise((resolve, reject) => {
    const xhr = new XMLHttpRequest();
    xhr.open('POST', 'api/v1/ingest/upload');
    if (session.key) xhr.setRequestHeader('x-api-key', session.key);
    xhr.upload.onprogress = (event) => onProgress(event.loaded);
    xhr.onerror = () => reject(new ApiError(0, 'network', 'the upload did not reach the server'));
    xhr.onload = async () => {
      const response = new Response(xhr.responseText, { status: xhr.status, statusText: xhr.statusText });
      if (xhr.status === 401) {
        try {
          await askForKey((await errorOf(response)).message);
          resolve(await upload(files, onProgress));
        } catch (error) {
          reject(error);
        }
      } else if (xhr.status >= 200 && xhr.status < 300) {
        resolve(JSON.parse(xhr.responseText));
      } else {
        reject(await errorOf(response));
      }
    };
    xhr.send(form);
  });
}

function watchSection(refresh, cleanups) {
  const path = h('input', { type: 'text', required: true, testid: 'watch-path', placeholder: '/photos/inbox', autocomplete: 'off', spellcheck: 'false' });
  const interval = h('input', { type: 'number', min: 10, max: 604800, step: 1, value: '300', testid: 'watch-interval' });
  const keep = h('input', { type: 'checkbox', testid: 'watch-keep-orphans' });
  const list = h('ul.watches', { testid: 'watches-list' });
  const section = h(
    'section.card-section',
    null,
    h('h2', null, 'Watched folders'),
    h(
      'form',
      {
        onsubmit: async (event) => {
          event.preventDefault();
          try {
            await postJson('watches', bodyWithCollection({ directory_path: path.value.trim(), interval_seconds: Number(interval.value), keep_orphans: keep.checked }));
            path.value = '';
            poller.now();
            refresh();
          } catch (error) {
            toast(errorText(error), 'error');
          }
        },
      },
      field('Folder to keep in sync', path),
      field('Rescan every (seconds)', interval),
      h('label.inline', null, keep, ' Keep images whose files are gone (marked orphaned)'),
      h('div.actions', null, h('button', { type: 'submit', testid: 'watch-create' }, 'Watch')),
    ),
    list,
  );
  const poller = poll(async () => {
    const { watches } = await getJson('watches');
    list.replaceChildren(
      ...watches.map((w) =>
        h(
          'li.watch',
          { testid: 'watch-row', dataset: { id: w.watch_id } },
          h('div', null, h('code', null, w.source), ' → ', h('strong', null, w.collection)),
          h(
            'div.muted',
            null,
            `every ${formatSeconds(w.interval_secs)}`,
            w.last_sync_at ? ` · last sync ${formatTime(w.last_sync_at)}` : ' · not synced yet',
            w.last_counts ? ` · ${formatNumber(w.last_counts.processed)} new, ${formatNumber(w.last_counts.updated)} changed, ${formatNumber(w.last_counts.removed)} removed, ${formatNumber(w.last_counts.failed)} failed` : '',
          ),
          h(
            'button.secondary.small',
            {
              type: 'button',
              testid: 'watch-delete',
              onclick: async () => {
                try {
                  await deleteJson(`watches/${encodeURIComponent(w.watch_id)}`);
                  poller.now();
                } catch (error) {
                  toast(errorText(error), 'error');
                }
              },
            },
            'Stop watching',
          ),
        ),
      ),
    );
    if (!watches.length) list.append(h('li.muted', null, 'No folder is watched.'));
    return 10000;
  });
  cleanups.push(() => poller.stop());
  return section;
}

function collectionsSection(cleanups) {
  const list = h('ul.collections', { testid: 'collections-list' });
  const name = h('input', { type: 'text', required: true, pattern: '[A-Za-z0-9][A-Za-z0-9_\\-]{0,63}', testid: 'collection-name', placeholder: 'holiday-2024', autocomplete: 'off', title: '1–64 letters, digits, _ and -, starting with a letter or digit' });
  const section = h(
    'section.card-section',
    null,
    h('h2', null, 'Collections'),
    list,
    h(
      'form.inline-form',
      {
        onsubmit: async (event) => {
          event.preventDefault();
          try {
            const made = await postJson('collections', { collection_name: name.value.trim() });
            name.value = '';
            toast(`Collection ${made.collection_name} created.`);
            document.dispatchEvent(new CustomEvent('imgfleet:collections'));
            refresh();
          } catch (error) {
            toast(errorText(error), 'error');
          }
        },
      },
      field('New collection', name),
      h('button', { type: 'submit', testid: 'collection-create' }, 'Create'),
    ),
  );

  async function refresh() {
    const names = await getJson('collections');
    const infos = await Promise.all(names.map((n) => getJson(`collections/${encodeURIComponent(n)}`).catch(() => null)));
    list.replaceChildren(
      ...names.map((n, i) => {
        const info = infos[i];
        const used = (session.collection || '') === n;
        return h(
          'li.collection',
          { testid: 'collection-row', dataset: { name: n }, class: used ? 'current' : '' },
          h('strong', null, n),
          info ? h('span.muted', null, ` ${formatNumber(info.points)} images · ${info.vector_size}-d ${info.distance}`) : null,
          h(
            'span.actions',
            null,
            used
              ? h('span.badge', null, 'in use here')
              : h('button.secondary.small', { type: 'button', testid: 'collection-use', onclick: () => setCollection(n) }, 'Use here'),
            h(
              'button.secondary.small',
              {
                type: 'button',
                testid: 'collection-select',
                title: 'Make it the collection every client uses when it names none (POST collections/select)',
                onclick: async () => {
                  try {
                    await postJson('collections/select', { collection_name: n });
                    toast(`${n} is now the server's selected collection.`);
                  } catch (error) {
                    toast(errorText(error), 'error');
                  }
                },
              },
              'Make server default',
            ),
          ),
        );
      }),
    );
  }
  const onChange = () => refresh().catch((error) => toast(errorText(error), 'error'));
  document.addEventListener('imgfleet:collection', onChange);
  cleanups.push(() => document.removeEventListener('imgfleet:collection', onChange));
  onChange();
  return section;
}

const ACTIVE = new Set(['queued', 'running']);

function jobsSection(cleanups) {
  const list = h('div.job-list', { testid: 'jobs-list', 'aria-live': 'polite' });
  const empty = h('p.muted', { hidden: true }, 'No jobs yet.');
  const rows = new Map();
  const element = h('section.card-section.jobs-section', null, h('h2', null, 'Recent jobs'), empty, list);
  const poller = poll(async () => {
    const { jobs } = await getJson('jobs', { limit: JOBS_SHOWN });
    const seen = new Set();
    jobs.forEach((job, index) => {
      seen.add(job.job_id);
      let row = rows.get(job.job_id);
      if (!row) {
        row = jobRow(job, () => poller.now());
        rows.set(job.job_id, row);
      }
      row.update(job);
      // Keep the server's order (newest first) without rebuilding rows: an open <details> stays open.
      if (list.children[index] !== row.element) list.insertBefore(row.element, list.children[index] ?? null);
    });
    for (const [id, row] of rows) {
      if (!seen.has(id)) {
        row.element.remove();
        rows.delete(id);
      }
    }
    empty.hidden = jobs.length > 0;
    // Quick while something runs, slow otherwise.
    return jobs.some((job) => ACTIVE.has(job.status)) ? 1000 : 5000;
  });
  cleanups.push(() => poller.stop());
  return { element, refresh: () => poller.now() };
}

function jobRow(job, refresh) {
  const status = h('span.badge', { testid: 'job-status' });
  const source = h('code.job-source');
  const progress = h('progress', { max: 100, testid: 'job-progress' });
  const percent = h('span.percent');
  const counts = h('p.counts', { testid: 'job-counts' });
  const timing = h('p.muted');
  const failures = h('details.failures', { testid: 'job-failures', hidden: true });
  const log = h('details.log', { testid: 'job-log' });
  const cancel = h(
    'button.secondary.small',
    {
      type: 'button',
      testid: 'job-cancel',
      onclick: async () => {
        cancel.disabled = true;
        try {
          await deleteJson(`ingest/${encodeURIComponent(job.job_id)}`);
          toast('Job cancelled.');
        } catch (error) {
          toast(errorText(error), 'error');
        }
        refresh();
      },
    },
    'Cancel',
  );
  const element = h(
    'article.job',
    { testid: 'job-row', dataset: { jobId: job.job_id } },
    h('header.job-head', null, status, source, h('span.muted', null, ' → '), h('strong.job-collection'), cancel),
    h('div.job-progress', null, progress, percent),
    counts,
    timing,
    failures,
    log,
  );
  let lastLog = null;

  function update(j) {
    element.dataset.status = j.status;
    element.dataset.dir = j.directory_path;
    status.textContent = j.status;
    status.className = `badge status-${j.status}`;
    source.textContent = j.directory_path;
    element.querySelector('.job-collection').textContent = j.collection;
    progress.value = j.progress;
    progress.setAttribute('aria-label', `Progress of ${j.directory_path}`);
    percent.textContent = `${j.progress.toFixed(j.progress < 10 ? 1 : 0)} %${j.scan_complete ? '' : ' (still scanning)'}`;
    const c = j.counts;
    counts.textContent = `${formatNumber(c.discovered)} found · ${formatNumber(c.processed)} processed · ${formatNumber(c.duplicates)} duplicates · ${formatNumber(c.failed)} failed${c.updated ? ` · ${formatNumber(c.updated)} changed` : ''}${c.removed ? ` · ${formatNumber(c.removed)} removed` : ''}`;
    const parts = [`started ${formatTime(j.started_at ?? j.created_at)}`];
    if (j.eta_seconds != null) parts.push(`about ${formatSeconds(j.eta_seconds)} left`);
    if (j.finished_at) parts.push(`ended ${formatTime(j.finished_at)}`);
    if (j.result) parts.push(`${j.result.images_per_second.toFixed(1)} images/s over ${formatSeconds(j.result.elapsed_seconds)}`);
    timing.textContent = parts.join(' · ');
    cancel.hidden = !ACTIVE.has(j.status);
    const failed = j.logs.filter((line) => line.startsWith('failed: '));
    failures.hidden = !failed.length && !j.error;
    if (failed.length || j.error) {
      const open = failures.open;
      const summary = j.error ? 'Why it failed' : `${failed.length} failure${failed.length === 1 ? '' : 's'}${c.failed > failed.length ? ` (the newest ${failed.length} of ${c.failed})` : ''}`;
      failures.replaceChildren(
        h('summary', null, summary),
        ...(j.error ? [h('p.error', null, j.error)] : []),
        h('ul', null, failed.map((line) => h('li', { testid: 'job-failure' }, line.slice('failed: '.length)))),
      );
      failures.open = open;
    }
    // The log keeps its newest 200 lines: its length alone stops changing.
    const logKey = `${j.logs.length}|${j.logs.at(-1) ?? ''}`;
    if (logKey !== lastLog) {
      lastLog = logKey;
      const open = log.open;
      log.replaceChildren(h('summary', null, `Log (${j.logs.length} lines)`), h('pre', null, j.logs.join('\n')));
      log.open = open;
    }
  }

  return { element, update };
}
