// Fleet: the live encoder workers (`GET api/v1/workers`) with the batch each pulls and its rate,
// and the queue depths per stream (`GET api/v1/queues`).

import { h, errorText, formatNumber, formatSeconds, poll } from '../lib/dom.js';
import { getJson } from '../lib/api.js';

const STREAMS = ['scan', 'files', 'prepared', 'encoded'];

export function mount(root) {
  const totals = h('p.status', { testid: 'fleet-totals', 'aria-live': 'polite' }, 'Loading…');
  const body = h('tbody');
  const table = h(
    'table.data',
    { testid: 'fleet-workers' },
    h('caption.visually-hidden', null, 'Encoder workers'),
    h(
      'thead',
      null,
      h('tr', null, ['Worker', 'Device', 'Models', 'Batch pulled', 'Safe CLIP / BLIP batch', 'Images/s', 'Images', 'Last heard'].map((t) => h('th', { scope: 'col' }, t))),
    ),
    body,
  );
  const queues = h('div.queues', { testid: 'fleet-queues' });
  root.append(
    h(
      'section.view.fleet',
      null,
      h('h1', null, 'Fleet'),
      h('h2', null, 'Encoder workers'),
      totals,
      h('div.table-scroll', null, table),
      h('h2', null, 'Queues'),
      queues,
    ),
  );

  const poller = poll(async () => {
    try {
      const list = await getJson('workers');
      body.replaceChildren(
        ...list.workers.map((w) =>
          h(
            'tr',
            { testid: 'fleet-worker', dataset: { id: w.worker_id } },
            h('th', { scope: 'row' }, w.worker_id),
            h('td', null, w.device),
            h('td', null, h('code', null, w.clip_model), w.blip_model ? [h('br'), h('code', null, w.blip_model)] : h('span.muted', null, ' (no captions)')),
            h('td.num', null, formatNumber(w.batch)),
            h('td.num', null, `${formatNumber(w.safe_clip_batch)} / ${formatNumber(w.safe_blip_batch)}`),
            h('td.num', null, w.images_per_second.toFixed(1)),
            h('td.num', null, formatNumber(w.images_total)),
            h('td', null, `${formatSeconds(w.last_seen_seconds)} ago`),
          ),
        ),
      );
      totals.textContent = list.workers.length
        ? `${list.workers.length} worker${list.workers.length === 1 ? '' : 's'} · ${formatNumber(list.total_batch)} images per pull in all · ${list.images_per_second.toFixed(1)} images/s`
        : 'No encoder worker is reporting: this server does not run a pipeline, or its workers are down.';
    } catch (error) {
      totals.textContent = errorText(error);
    }
    try {
      showQueues(queues, await queueDepths());
    } catch (error) {
      queues.replaceChildren(h('p.muted', null, `Queue depths are not available: ${errorText(error)}`));
    }
    return 2000;
  });
  return { cleanup: () => poller.stop() };
}

/** `{stream: {pending, in_flight}}`, read from the queue now. */
async function queueDepths() {
  const { streams } = await getJson('queues');
  return Object.fromEntries(streams.map((s) => [s.stream, { pending: s.pending, in_flight: s.in_flight }]));
}

function showQueues(container, depths) {
  const streams = STREAMS.filter((s) => depths[s]).concat(Object.keys(depths).filter((s) => !STREAMS.includes(s)));
  if (!streams.length) {
    container.replaceChildren(h('p.muted', null, 'This server reports no queue depths (it runs no pipeline).'));
    return;
  }
  const most = Math.max(1, ...streams.map((s) => (depths[s].pending ?? 0) + (depths[s].in_flight ?? 0)));
  container.replaceChildren(
    h(
      'table.data',
      null,
      h('caption.visually-hidden', null, 'Queue depths'),
      h('thead', null, h('tr', null, ['Stream', 'Waiting', 'Being worked on', ''].map((t) => h('th', { scope: 'col' }, t)))),
      h(
        'tbody',
        null,
        streams.map((s) =>
          h(
            'tr',
            { testid: 'fleet-queue', dataset: { stream: s } },
            h('th', { scope: 'row' }, s),
            h('td.num', null, formatNumber(depths[s].pending ?? 0)),
            h('td.num', null, formatNumber(depths[s].in_flight ?? 0)),
            h('td', null, h('meter', { min: 0, max: most, value: (depths[s].pending ?? 0) + (depths[s].in_flight ?? 0), 'aria-label': `${s} depth` })),
          ),
        ),
      ),
    ),
  );
}
