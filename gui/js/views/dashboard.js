// #/ — cards, the live throughput and queue-depth charts (prefilled from
// api/history, then fed only by `stats` events), the per-minute history, the
// latest failures and the workers with their load.
import { h, replace, fmtNum, fmtBytes, fmtDur, relTime, shortId, PRIORITIES, debounce, throttle } from '../dom.js';
import { get } from '../api.js';
import { state, hashFor } from '../state.js';
import { Chart, Series } from '../charts.js';
import { panel, viewHead, errorBox, empty, loadBar, taskLink } from '../widgets.js';

const LIVE_KEEP = 600; // seconds shown by the live charts (what api/history keeps)
const RANGES = { '1h': 60, '6h': 360, '24h': 1440 };
let historyRange = '6h';

function card(name, label, testid = `card-${name}`) {
  const value = h('div', { class: 'card-value', 'data-testid': `${testid}-value` }, '—');
  const sub = h('div', { class: 'card-sub' });
  const el = h('div', { class: 'card', 'data-testid': testid }, h('div', { class: 'card-label' }, label), value, sub);
  return { el, value, sub };
}

export function mount(root, params, scope) {
  const cards = {
    workers: card('workers', 'Workers'),
    queued: card('queued', 'Queued'),
    running: card('running', 'Running'),
    succeeded: card('succeeded', 'Succeeded / min'),
    failed: card('failed', 'Failed / min'),
    cache: card('cache', 'Result cache'),
  };

  const throughputBox = h('div', { class: 'chart', 'data-testid': 'chart-throughput' });
  const queuesBox = h('div', { class: 'chart', 'data-testid': 'chart-queues' });
  const historyBox = h('div', { class: 'chart', 'data-testid': 'chart-history' });
  const historyNote = h('div', { class: 'chart-note' });
  const failuresBox = h('div', { class: 'failures', 'data-testid': 'latest-failures' });
  const workersBox = h('div', { class: 'dash-workers', 'data-testid': 'dash-workers' });

  const rangeButtons = Object.keys(RANGES).map((r) => h('button', {
    type: 'button', class: ['seg', r === historyRange ? 'on' : ''], 'aria-pressed': String(r === historyRange), 'data-range': r,
    on: { click: () => { historyRange = r; for (const b of rangeButtons) { b.classList.toggle('on', b.dataset.range === r); b.setAttribute('aria-pressed', String(b.dataset.range === r)); } drawHistory(); } },
  }, r));

  replace(root,
    viewHead('Dashboard', h('span', { class: 'view-sub', 'data-testid': 'dash-uptime' })),
    h('div', { class: 'cards' }, Object.values(cards).map((c) => c.el)),
    h('div', { class: 'grid2' },
      panel('Throughput, per second', throughputBox, { tools: h('span', { class: 'muted small' }, 'last 10 min, 5 s average, live') }),
      panel('Queue depth', queuesBox, { tools: h('span', { class: 'muted small' }, 'queued per priority, running') })),
    panel('History, per minute', [historyNote, historyBox], { tools: h('div', { class: 'segs', role: 'group', 'aria-label': 'Range' }, rangeButtons) }),
    h('div', { class: 'grid2' },
      panel('Latest failures', failuresBox, { tools: h('a', { href: hashFor('/tasks', { status: 'failure' }), class: 'small' }, 'all failures →') }),
      panel('Workers', workersBox, { tools: h('a', { href: '#/workers', class: 'small' }, 'details →') })),
  );

  // ------------------------------------------------------------- charts
  const thr = new Series(['success', 'failure'], 1, LIVE_KEEP);
  const q = new Series(['queued', 'running', ...PRIORITIES], 1, LIVE_KEEP);
  const mins = new Series(['accepted', 'success', 'failure'], 60, RANGES['24h']);
  const thrChart = new Chart(throughputBox, {
    height: 190,
    series: [
      { label: 'succeeded/s', color: '--c-success', fill: true },
      { label: 'failed/s', color: '--c-failure', fill: true },
    ],
  });
  const qChart = new Chart(queuesBox, {
    height: 190,
    series: [
      { label: 'queued', color: '--c-queued', fill: true, width: 2 },
      { label: 'running', color: '--c-running', width: 2 },
      { label: 'critical', color: '--c-critical', width: 1, dash: [4, 3] },
      { label: 'high', color: '--c-high', width: 1, dash: [4, 3] },
      { label: 'normal', color: '--c-normal', width: 1, dash: [4, 3] },
      { label: 'low', color: '--c-low', width: 1, dash: [4, 3] },
    ],
  });
  const hChart = new Chart(historyBox, {
    height: 170,
    series: [
      { label: 'accepted', color: '--c-accepted', width: 1.5 },
      { label: 'succeeded', color: '--c-success', fill: true },
      { label: 'failed', color: '--c-failure', fill: true },
    ],
  });
  const charts = [thrChart, qChart, hChart];
  scope.add(() => charts.forEach((c) => c.destroy()));
  scope.on('theme', () => { charts.forEach((c) => c.build()); });

  let lastTotals = null; // tasks.totals of the previous stats event
  let histEnd = null; // the last second api/history gave

  function drawLive() {
    // Per-second counts are spiky; a trailing 5 s average reads better.
    // The whole window the card names, not just the seconds seen so far.
    const now = Date.now() / 1000;
    const span = [now - LIVE_KEEP, now];
    const [x, ok, bad] = thr.data();
    thrChart.setData([x, avg(ok, 5), avg(bad, 5)], span);
    qChart.setData(q.data(), span);
  }
  function drawHistory() {
    const now = Date.now() / 1000;
    mins.extendTo(now);
    const from = now - RANGES[historyRange] * 60;
    hChart.setData(mins.data(from), [from, now]);
  }

  async function loadHistory() {
    const hist = await get('api/history');
    replace(historyNote);
    thr.x = []; thr.cols = thr.names.map(() => []);
    q.x = []; q.cols = q.names.map(() => []);
    mins.x = []; mins.cols = mins.names.map(() => []);
    for (const s of hist.seconds || []) {
      const t = Date.parse(s.t) / 1000;
      if (Number.isNaN(t)) continue;
      thr.put(t, { success: s.success ?? 0, failure: s.failure ?? 0 }, 'set');
      // `queued` is a number (docs/gui.md); an array [critical, high, normal,
      // low] or a queued_by_priority object also gives the split.
      let qp = s.queued_by_priority || {};
      let total = s.queued ?? null;
      if (Array.isArray(s.queued)) {
        qp = Object.fromEntries(PRIORITIES.map((p, i) => [p, s.queued[i] ?? 0]));
        total = s.queued.reduce((a, b) => a + (b ?? 0), 0);
      }
      const row = { queued: total, running: s.running ?? null };
      for (const p of PRIORITIES) row[p] = qp[p] ?? null;
      q.put(t, row, 'set', null);
    }
    for (const m of hist.minutes || []) {
      const t = Date.parse(m.t) / 1000;
      if (Number.isNaN(t)) continue;
      mins.put(t, { accepted: m.accepted ?? 0, success: m.success ?? 0, failure: m.failure ?? 0 }, 'set');
    }
    histEnd = thr.x.length ? thr.x[thr.x.length - 1] : null;
    lastTotals = null;
    drawLive();
    drawHistory();
  }

  function onStats(st) {
    renderCards(st);
    const t = Date.parse(st.timestamp) / 1000 || Date.now() / 1000;
    const tasks = st.tasks || {};
    const totals = tasks.totals || {};
    if (lastTotals) {
      const d = (k) => Math.max(0, (totals[k] ?? 0) - (lastTotals[k] ?? 0));
      // A restart resets the totals: take the new ones as the base.
      const reset = ['success', 'failure', 'accepted'].some((k) => (totals[k] ?? 0) < (lastTotals[k] ?? 0));
      if (!reset) {
        // Seconds that api/history already counted are not counted twice.
        if (histEnd === null || Math.floor(t) > histEnd) thr.put(t, { success: d('success'), failure: d('failure') }, 'add');
        mins.put(t, { accepted: d('accepted'), success: d('success'), failure: d('failure') }, 'add');
      }
    }
    lastTotals = { ...totals };
    const qp = tasks.queued_by_priority || {};
    const row = { queued: tasks.queued ?? 0, running: tasks.by_state?.running ?? 0 };
    for (const p of PRIORITIES) row[p] = qp[p] ?? 0;
    q.put(t, row, 'set', null);
    thr.extendTo(t);
    drawLive();
    drawHistory();
  }

  // -------------------------------------------------------------- cards
  function renderCards(st) {
    const sw = st.subworkers || {};
    const tasks = st.tasks || {};
    const bs = tasks.by_state || {};
    const rates = st.rates || {};
    const win = rates.window_seconds || 60;
    const perMin = (n) => ((n ?? 0) * 60) / win;
    const cache = st.cache || {};

    cards.workers.value.textContent = `${sw.active ?? 0} / ${sw.total ?? 0}`;
    replace(cards.workers.sub, 'subworkers active',
      sw.draining ? h('span', { class: 'warn' }, ` · ${sw.draining} draining`) : null,
      sw.inactive ? h('span', { class: 'bad' }, ` · ${sw.inactive} inactive`) : null);

    cards.queued.value.textContent = fmtNum(tasks.queued ?? 0);
    const qp = tasks.queued_by_priority || {};
    replace(cards.queued.sub, PRIORITIES.map((p) => h('span', { class: `pq prio-${p}`, title: `${p}: ${qp[p] ?? 0}`, 'data-testid': `card-queued-${p}` }, `${p[0].toUpperCase()} ${qp[p] ?? 0}`)),
    );
    cards.queued.sub.title = `${bs.scheduled ?? 0} scheduled, ${bs.retrying ?? 0} waiting to retry`;

    cards.running.value.textContent = fmtNum(bs.running ?? 0);
    cards.running.sub.textContent = `${fmtNum(tasks.active ?? 0)} live in all`;

    cards.succeeded.value.textContent = fmtNum(perMin(rates.success));
    cards.succeeded.sub.textContent = `${fmtNum(tasks.totals?.success ?? 0)} since start`;

    cards.failed.value.textContent = fmtNum(perMin(rates.failure));
    cards.failed.el.classList.toggle('card-bad', (rates.failure ?? 0) > 0);
    cards.failed.sub.textContent = `${fmtNum(tasks.totals?.failure ?? 0)} since start · ${fmtNum(tasks.totals?.retries ?? 0)} retries`;

    cards.cache.value.textContent = `${fmtNum(cache.current_size ?? 0)}`;
    cards.cache.sub.textContent = `of ${fmtNum(cache.max_size ?? 0)} · ${fmtBytes(cache.bytes ?? 0)}${cache.evictions ? ` · ${fmtNum(cache.evictions)} evicted` : ''}`;

    const up = root.querySelector('[data-testid=dash-uptime]');
    if (up && st.uptime_seconds !== undefined && st.uptime_seconds !== null) up.textContent = `up ${fmtDur(st.uptime_seconds)}`;
  }

  // ----------------------------------------------------------- failures
  async function loadFailures() {
    try {
      const res = await get('api/tasks', { status: 'failure', limit: 8 });
      if (!scope.alive) return;
      if (!res.tasks.length) { replace(failuresBox, empty('No failures kept.')); return; }
      replace(failuresBox, h('ul', { class: 'fail-list' }, res.tasks.map((t) => h('li', { 'data-testid': 'failure-item', 'data-task-id': t.task_id },
        h('div', { class: 'fail-top' },
          h('span', { class: 'fail-name' }, t.name),
          taskLink(t.task_id, shortId(t.task_id)),
          h('span', { class: 'fail-when muted' }, relTime(t.completed_at || t.submitted_at))),
        h('div', { class: 'fail-err', title: t.error || '' }, t.error || '(no error text)')))));
    } catch (err) {
      if (scope.alive) replace(failuresBox, errorBox(err, 'Could not load failures'));
    }
  }

  // ------------------------------------------------------------ workers
  async function loadWorkers() {
    try {
      const res = await get('api/workers');
      if (!scope.alive) return;
      if (!res.workers.length) { replace(workersBox, empty('No workers.')); return; }
      replace(workersBox, h('ul', { class: 'worker-list' }, res.workers.map((w) => h('li', { 'data-testid': 'dash-worker', 'data-worker-id': w.id },
        h('span', { class: `dot st-${w.status}`, title: w.status }),
        h('span', { class: 'w-id', title: w.address || '' }, w.id, w.is_control_plane ? h('span', { class: 'muted small' }, ' (control plane)') : null),
        loadBar(w.load ?? 0, w.capacity ?? 0),
        h('span', { class: 'muted small w-done' }, `${fmtNum(w.tasks_done ?? 0)} done`)))));
    } catch (err) {
      if (scope.alive) replace(workersBox, errorBox(err, 'Could not load workers'));
    }
  }

  const refreshFailures = scope.keep(debounce(loadFailures, 800));
  const refreshWorkers = scope.keep(throttle(loadWorkers, 2000));

  async function reload() {
    const jobs = [loadFailures(), loadWorkers(), loadHistory().catch((err) => {
      if (scope.alive) replace(historyNote, errorBox(err, 'Could not load the history'));
    })];
    if (state.status) renderCards(state.status);
    await Promise.all(jobs);
  }

  scope.on('stats', onStats);
  scope.on('task.failure', refreshFailures);
  scope.on('task.forgotten', refreshFailures);
  scope.on('task', (d, id, type) => {
    if (type === 'task.started' || type === 'task.success' || type === 'task.failure' || type === 'task.cancelled' || type === 'task.requeued') refreshWorkers();
  });
  scope.on('worker', refreshWorkers);

  reload();
  return { reload };
}

export const title = 'Dashboard';

function avg(col, n) {
  const out = new Array(col.length);
  let sum = 0;
  let cnt = 0;
  for (let i = 0; i < col.length; i++) {
    sum += col[i] ?? 0; cnt += 1;
    if (cnt > n) { sum -= col[i - n] ?? 0; cnt -= 1; }
    out[i] = Math.round((sum / cnt) * 100) / 100;
  }
  return out;
}
