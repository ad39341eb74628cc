// #/tasks?status=…&name=…&priority=…&worker=…&q=…&since=…&until=…&sort=…&limit=…&cursor=…
// State chips with counts, filters (all in the URL), search, paging by
// cursor, multi-select with bulk actions, a "new tasks" banner instead of
// rows jumping, rows updated in place from events, CSV/NDJSON export.
import { h, replace, statusBadge, priorityTag, relTime, elapsed, fmtDur, fmtNum, shortId, STATES, PRIORITIES, debounce, throttle, eventAfter } from '../dom.js';
import { get, post, exportUrl } from '../api.js';
import * as live from '../live.js';
import { state, navigate, hashFor, taskHref } from '../state.js';
import { toast, toastError, confirmDialog } from '../ui.js';
import { viewHead, errorBox, taskLink } from '../widgets.js';

export const title = 'Tasks';

const FILTER_KEYS = ['status', 'name', 'priority', 'worker', 'q', 'since', 'until'];
const SORTS = [['newest', 'Newest first'], ['oldest', 'Oldest first'], ['finished', 'Recently finished'], ['duration', 'Longest run']];
const LIMITS = ['25', '50', '100', '200', '500'];

// Cursors of the pages before this one, kept while the filters stay the same
// (the Back button; the browser's back button works too, by the URL).
let cursorTrail = { key: '', stack: [] };

const filterKey = (p) => FILTER_KEYS.map((k) => p[k] || '').join('\u0001') + (p.sort || '') + (p.limit || '');

function listParams(p) {
  const out = {};
  for (const k of [...FILTER_KEYS, 'sort', 'limit', 'cursor']) if (p[k]) out[k] = p[k];
  return out;
}

function filterOnly(p) {
  const out = {};
  for (const k of FILTER_KEYS) if (p[k]) out[k] = p[k];
  return out;
}

const splitList = (v) => (v ? v.split(',').map((s) => s.trim()).filter(Boolean) : []);

export function mount(root, initialParams, scope) {
  let params = { ...initialParams };
  let data = null; // the last answer of api/tasks
  let rows = new Map(); // task_id -> {tr, cells}
  let selected = new Set();
  let allMatching = false;
  let lastClicked = null;
  const newIds = new Set();
  let seq = 0; // answers to older requests are dropped

  // ---------------------------------------------------------------- DOM
  const chipsBox = h('div', { class: 'chips', role: 'group', 'aria-label': 'Filter by state' });
  const exportCsv = h('a', { class: 'btn small', 'data-testid': 'export-csv', download: '' }, 'CSV');
  const exportNd = h('a', { class: 'btn small', 'data-testid': 'export-ndjson', download: '' }, 'NDJSON');

  const search = h('input', { type: 'search', class: 'search', id: 'tasks-search', placeholder: 'Search id, name, arguments, error, result…   /', 'aria-label': 'Search tasks', 'data-testid': 'tasks-search', autocomplete: 'off', spellcheck: 'false' });
  const nameIn = h('input', { type: 'text', id: 'f-name', list: 'dl-names', placeholder: 'any', 'data-testid': 'filter-name', autocomplete: 'off' });
  const prioIn = h('select', { id: 'f-priority', 'data-testid': 'filter-priority' },
    h('option', { value: '' }, 'any'), PRIORITIES.map((p) => h('option', { value: p }, p)));
  const workerIn = h('input', { type: 'text', id: 'f-worker', list: 'dl-workers', placeholder: 'any', 'data-testid': 'filter-worker', autocomplete: 'off' });
  const sinceIn = h('input', { type: 'text', id: 'f-since', placeholder: '15m, 2h, 1d, RFC 3339', 'data-testid': 'filter-since', autocomplete: 'off' });
  const untilIn = h('input', { type: 'text', id: 'f-until', placeholder: 'e.g. 1h', 'data-testid': 'filter-until', autocomplete: 'off' });
  const sortIn = h('select', { id: 'f-sort', 'data-testid': 'filter-sort' }, SORTS.map(([v, t]) => h('option', { value: v }, t)));
  const limitIn = h('select', { id: 'f-limit', 'data-testid': 'filter-limit' }, LIMITS.map((v) => h('option', { value: v }, v)));
  const resetBtn = h('button', { type: 'button', class: 'btn small ghost', 'data-testid': 'filter-reset' }, 'Clear filters');
  const dlNames = h('datalist', { id: 'dl-names' });
  const dlWorkers = h('datalist', { id: 'dl-workers' });

  const field = (label, input, cls) => h('div', { class: ['field', cls] }, h('label', { for: input.id }, label), input);

  const banner = h('button', { type: 'button', class: 'new-banner', 'data-testid': 'new-tasks-banner', hidden: true });
  const bulkCount = h('span', { class: 'bulk-count', 'data-testid': 'bulk-count' });
  const bulkAll = h('button', { type: 'button', class: 'linkish', 'data-testid': 'bulk-select-all', hidden: true });
  const bulkBtn = (action, label, cls) => h('button', { type: 'button', class: `btn small ${cls}`, 'data-testid': `bulk-${action}`, on: { click: () => bulk(action) } }, label);
  const bulkBar = h('div', { class: 'bulkbar action', 'data-testid': 'bulk-bar', hidden: true },
    bulkCount, bulkAll,
    h('span', { class: 'spacer' }),
    bulkBtn('cancel', 'Cancel', ''), bulkBtn('retry', 'Retry', ''), bulkBtn('delete', 'Delete', 'danger'),
    h('button', { type: 'button', class: 'btn small ghost', 'data-testid': 'bulk-clear', on: { click: () => clearSelection() } }, 'Clear'));

  const headCheck = h('input', { type: 'checkbox', 'aria-label': 'Select every task on this page', 'data-testid': 'select-page', class: 'action' });
  const tbody = h('tbody');
  const table = h('table', { class: 'tasks-table', 'data-testid': 'tasks-table' },
    h('thead', null, h('tr', null,
      h('th', { class: 'c-check action' }, headCheck),
      h('th', { class: 'c-status' }, 'Status'),
      h('th', { class: 'c-name' }, 'Task'),
      h('th', { class: 'c-input' }, 'Arguments'),
      h('th', { class: 'c-result' }, 'Result / error'),
      h('th', { class: 'c-prio' }, 'Priority'),
      h('th', { class: 'c-worker' }, 'Worker'),
      h('th', { class: 'c-time' }, 'Submitted'),
      h('th', { class: 'c-dur num' }, 'Duration'),
      h('th', { class: 'c-att num', title: 'Attempts' }, 'Att.'))),
    tbody);
  const tableWrap = h('div', { class: 'table-wrap' }, table);
  const msgBox = h('div', { class: 'list-msg' });

  const pageInfo = h('span', { class: 'muted', 'data-testid': 'page-info' });
  const firstBtn = h('button', { type: 'button', class: 'btn small', 'data-testid': 'page-first' }, '« First');
  const prevBtn = h('button', { type: 'button', class: 'btn small', 'data-testid': 'page-prev' }, '‹ Back');
  const nextBtn = h('button', { type: 'button', class: 'btn small', 'data-testid': 'page-next' }, 'Next ›');
  const pager = h('div', { class: 'pager' }, pageInfo, h('span', { class: 'spacer' }), firstBtn, prevBtn, nextBtn);

  replace(root,
    viewHead('Tasks', h('span', { class: 'view-sub', 'data-testid': 'tasks-total' }),
      h('span', { class: 'spacer' }),
      h('span', { class: 'muted small' }, 'Export'), exportCsv, exportNd),
    chipsBox,
    h('form', { class: 'filters', role: 'search', on: { submit: (e) => e.preventDefault() } },
      h('div', { class: 'field grow' }, h('label', { for: 'tasks-search', class: 'sr-only' }, 'Search'), search),
      field('Name', nameIn), field('Priority', prioIn), field('Worker', workerIn),
      field('Since', sinceIn, 'narrow'), field('Until', untilIn, 'narrow'), field('Sort', sortIn), field('Rows', limitIn, 'narrow'),
      h('div', { class: 'field' }, h('span', { class: 'label-space' }, '\u00a0'), resetBtn),
      dlNames, dlWorkers),
    banner, bulkBar, msgBox, tableWrap, pager);

  // -------------------------------------------------------- URL <-> form
  function syncForm() {
    const setIf = (el, v) => { if (document.activeElement !== el) el.value = v || ''; };
    setIf(search, params.q);
    setIf(nameIn, params.name);
    prioIn.value = PRIORITIES.includes(params.priority) ? params.priority : '';
    setIf(workerIn, params.worker);
    setIf(sinceIn, params.since);
    setIf(untilIn, params.until);
    sortIn.value = params.sort || 'newest';
    limitIn.value = LIMITS.includes(params.limit) ? params.limit : '50';
    const f = { ...filterOnly(params), sort: params.sort };
    exportCsv.href = exportUrl('csv', f);
    exportNd.href = exportUrl('ndjson', f);
  }

  function go(next, { replaceEntry = false } = {}) {
    const p = {};
    for (const [k, v] of Object.entries(next)) if (v) p[k] = v;
    if (p.sort === 'newest') delete p.sort;
    if (p.limit === '50') delete p.limit;
    navigate(hashFor('/tasks', p), { replace: replaceEntry });
  }

  /** A filter changed: back to the first page. */
  function setFilter(k, v, opts) {
    const next = { ...params, [k]: v };
    delete next.cursor;
    go(next, opts);
  }

  const typed = (k, el) => {
    const d = scope.keep(debounce(() => setFilter(k, el.value.trim(), { replaceEntry: true }), 350));
    el.addEventListener('input', d);
    el.addEventListener('change', () => { d.cancel(); if ((params[k] || '') !== el.value.trim()) setFilter(k, el.value.trim()); });
  };
  typed('q', search);
  typed('name', nameIn);
  typed('worker', workerIn);
  typed('since', sinceIn);
  typed('until', untilIn);
  prioIn.addEventListener('change', () => setFilter('priority', prioIn.value));
  sortIn.addEventListener('change', () => setFilter('sort', sortIn.value));
  limitIn.addEventListener('change', () => setFilter('limit', limitIn.value));
  search.addEventListener('keydown', (e) => { if (e.key === 'Escape') search.blur(); });
  resetBtn.addEventListener('click', () => go({}));

  firstBtn.addEventListener('click', () => { cursorTrail.stack = []; go({ ...params, cursor: '' }); });
  prevBtn.addEventListener('click', () => {
    const prev = cursorTrail.stack.pop();
    go({ ...params, cursor: prev || '' });
  });
  nextBtn.addEventListener('click', () => {
    if (!data || !data.next_cursor) return;
    cursorTrail.stack.push(params.cursor || '');
    go({ ...params, cursor: data.next_cursor });
  });
  banner.addEventListener('click', () => {
    if (params.cursor) { cursorTrail.stack = []; go({ ...params, cursor: '' }); } else reload();
  });

  // --------------------------------------------------------------- chips
  function renderChips(counts) {
    const active = new Set(splitList(params.status));
    const sum = STATES.reduce((a, s) => a + (counts?.[s] ?? 0), 0);
    const chip = (st, label, n) => {
      const on = st ? active.has(st) : active.size === 0;
      return h('button', {
        type: 'button', class: ['chip', st ? `chip-${st}` : 'chip-all', on ? 'on' : ''], 'aria-pressed': String(on),
        'data-testid': st ? `chip-${st}` : 'chip-all', 'data-count': String(n ?? 0),
        title: st ? `${label}: click to show only these; Ctrl/Shift-click to add or remove` : 'Every state',
        on: { click: (e) => chipClick(st, e) },
      }, st ? h('span', { class: `dot st-${st}` }) : null, h('span', { class: 'chip-label' }, label), h('span', { class: 'count' }, counts ? fmtNum(n ?? 0) : '…'));
    };
    replace(chipsBox, chip(null, 'All', sum), STATES.map((s) => chip(s, s, counts?.[s])));
  }

  function chipClick(st, e) {
    let set = new Set(splitList(params.status));
    if (!st) set = new Set();
    else if (e.ctrlKey || e.metaKey || e.shiftKey) { if (set.has(st)) set.delete(st); else set.add(st); }
    else if (set.size === 1 && set.has(st)) set = new Set();
    else set = new Set([st]);
    setFilter('status', STATES.filter((s) => set.has(s)).join(','));
  }

  // ---------------------------------------------------------------- rows
  function resultCell(t) {
    if (t.error) return h('span', { class: t.status === 'cancelled' ? 'muted' : 'err', title: t.error }, t.error);
    if (t.result !== null && t.result !== undefined) {
      const txt = typeof t.result === 'string' ? t.result : JSON.stringify(t.result);
      return h('span', { class: 'mono res', title: txt }, txt);
    }
    return h('span', { class: 'muted' }, t.eta && t.status === 'scheduled' ? 'runs ' : '', t.eta && t.status === 'scheduled' ? relTime(t.eta) : '');
  }

  function rowFor(t) {
    const check = h('input', { type: 'checkbox', 'aria-label': `Select task ${t.task_id}`, 'data-testid': 'row-check', checked: selected.has(t.task_id) || allMatching });
    const cells = {
      status: h('td', { class: 'c-status' }, statusBadge(t.status, { 'data-testid': 'row-status' })),
      result: h('td', { class: 'c-result' }, resultCell(t)),
      worker: h('td', { class: 'c-worker' }, t.worker || h('span', { class: 'muted' }, '—')),
      dur: h('td', { class: 'c-dur num' }, t.status === 'running' && t.started_at ? elapsed(t.started_at) : fmtDur(t.duration_seconds)),
      att: h('td', { class: 'c-att num' }, String(t.attempts ?? 0)),
    };
    const tr = h('tr', { 'data-testid': 'task-row', 'data-task-id': t.task_id, 'data-status': t.status, class: selected.has(t.task_id) ? 'sel' : '' },
      h('td', { class: 'c-check action' }, check),
      cells.status,
      h('td', { class: 'c-name' },
        h('a', { href: taskHref(t.task_id), class: 'tname', 'data-testid': 'row-link' }, t.name),
        h('span', { class: 'tid mono', title: t.task_id }, shortId(t.task_id)),
        t.retry_of ? h('span', { class: 'tag small', title: `retry of ${t.retry_of}` }, 'retry') : null),
      h('td', { class: 'c-input mono', title: t.input || '' }, t.input || ''),
      cells.result,
      h('td', { class: 'c-prio' }, priorityTag(t.priority)),
      cells.worker,
      h('td', { class: 'c-time' }, relTime(t.submitted_at)),
      cells.dur,
      cells.att);
    check.addEventListener('click', (e) => toggleRow(t.task_id, check.checked, e.shiftKey));
    tr.addEventListener('click', (e) => {
      if (e.target.closest('a, input, button, label') || window.getSelection().toString()) return;
      navigate(taskHref(t.task_id));
    });
    rows.set(t.task_id, { tr, cells, check, task: t });
    return tr;
  }

  function renderRows() {
    rows = new Map();
    if (!data.tasks.length) {
      replace(tbody, h('tr', null, h('td', { colspan: '10', class: 'empty' }, 'No task matches.')));
    } else {
      replace(tbody, data.tasks.map(rowFor));
    }
    // The server knows the offset of a page reached by `o` cursors (and of
    // the first page); for the others, the pages walked here tell it.
    let offset = data.offset;
    if (offset === null || offset === undefined) {
      offset = params.cursor ? (cursorTrail.stack.length ? cursorTrail.stack.length * (data.limit || 50) : null) : 0;
    }
    if (!data.tasks.length) {
      pageInfo.textContent = `0 of ${fmtNum(data.total)}`;
    } else if (offset === null) {
      pageInfo.textContent = `${fmtNum(data.tasks.length)} of ${fmtNum(data.total)}`;
    } else {
      pageInfo.textContent = `${fmtNum(offset + 1)}–${fmtNum(offset + data.tasks.length)} of ${fmtNum(data.total)}`;
    }
    root.querySelector('[data-testid=tasks-total]').textContent = `${fmtNum(data.total)} matching`;
    nextBtn.disabled = !data.next_cursor;
    prevBtn.disabled = !params.cursor;
    firstBtn.hidden = !params.cursor || cursorTrail.stack.length > 0;
    updateBulk();
  }

  // ----------------------------------------------------------- selection
  function toggleRow(id, on, range) {
    allMatching = false;
    const ids = [...rows.keys()];
    if (range && lastClicked && ids.includes(lastClicked)) {
      const [a, b] = [ids.indexOf(lastClicked), ids.indexOf(id)].sort((x, y) => x - y);
      for (const x of ids.slice(a, b + 1)) if (on) selected.add(x); else selected.delete(x);
    } else if (on) selected.add(id); else selected.delete(id);
    lastClicked = id;
    syncChecks();
  }

  function clearSelection() {
    selected = new Set();
    allMatching = false;
    syncChecks();
  }

  function syncChecks() {
    for (const [id, r] of rows) {
      const on = allMatching || selected.has(id);
      r.check.checked = on;
      r.tr.classList.toggle('sel', on);
    }
    updateBulk();
  }

  headCheck.addEventListener('change', () => {
    allMatching = false;
    for (const id of rows.keys()) if (headCheck.checked) selected.add(id); else selected.delete(id);
    syncChecks();
  });

  bulkAll.addEventListener('click', () => { allMatching = !allMatching; if (!allMatching) selected = new Set(); syncChecks(); });

  function updateBulk() {
    const n = allMatching ? (data?.total ?? 0) : selected.size;
    bulkBar.hidden = n === 0 || state.readOnly;
    bulkCount.textContent = allMatching ? `All ${fmtNum(n)} matching tasks selected` : `${fmtNum(n)} selected`;
    const pageIds = [...rows.keys()];
    const pageAll = pageIds.length > 0 && pageIds.every((id) => selected.has(id));
    headCheck.checked = allMatching || pageAll;
    headCheck.indeterminate = !headCheck.checked && pageIds.some((id) => selected.has(id));
    const more = data && data.total > pageIds.length;
    bulkAll.hidden = !(more && (pageAll || allMatching));
    bulkAll.textContent = allMatching ? 'Select only the tasks ticked' : `Select all ${fmtNum(data?.total ?? 0)} matching`;
  }

  async function bulk(action) {
    const n = allMatching ? data.total : selected.size;
    if (!n) return;
    const what = { cancel: 'Cancel', retry: 'Retry', delete: 'Delete' }[action];
    const detail = {
      cancel: 'Live tasks are stopped; finished ones are left as they are.',
      retry: 'Each finished task is submitted again as a new task with the same arguments and priority.',
      delete: 'Finished tasks and their results are dropped; live ones are left as they are.',
    }[action];
    const ok = await confirmDialog(`${what} ${fmtNum(n)} task${n === 1 ? '' : 's'}?`, detail, what, action !== 'retry');
    if (!ok) return;
    const body = allMatching ? { action, filter: filterOnly(params) } : { action, ids: [...selected] };
    try {
      const r = await post('api/tasks/bulk', body);
      const failed = r.failed || [];
      const msg = `${what}: ${fmtNum(r.done ?? 0)} of ${fmtNum(r.matched ?? 0)} done${failed.length ? `; ${failed.length} not: ${failed[0].error || ''}${failed.length > 1 ? ' …' : ''}` : ''}`;
      toast(msg, failed.length ? 'error' : 'ok');
      clearSelection();
      reload();
    } catch (err) {
      toastError(err, `${what} failed`);
    }
  }

  // -------------------------------------------------------- live updates
  function applyEvent(d, id, type) {
    if (type === 'task.forgotten') {
      for (const tid of d.task_ids || []) {
        const r = rows.get(tid);
        if (r) { r.tr.classList.add('gone'); r.tr.title = `dropped (${d.reason || 'forgotten'})`; }
      }
      return;
    }
    const r = rows.get(d.task_id);
    if (r) {
      if (d.status && d.status !== r.tr.dataset.status) {
        r.tr.dataset.status = d.status;
        replace(r.cells.status, statusBadge(d.status, { 'data-testid': 'row-status' }));
        r.tr.classList.remove('flash');
        void r.tr.offsetWidth; // restart the highlight
        r.tr.classList.add('flash');
      }
      if (type === 'task.started' && d.worker) replace(r.cells.worker, d.worker);
      if (type === 'task.started') replace(r.cells.dur, elapsed(r.task.started_at || d.at || new Date().toISOString()));
      if (d.attempt) r.cells.att.textContent = String(d.attempt);
      if (d.attempts) r.cells.att.textContent = String(d.attempts);
      if (d.duration_seconds !== undefined && d.duration_seconds !== null) replace(r.cells.dur, fmtDur(d.duration_seconds));
      else if (type !== 'task.started') replace(r.cells.dur, '—');
      if (type === 'task.success' || type === 'task.failure' || type === 'task.cancelled' || type === 'task.retrying') {
        replace(r.cells.result, resultCell({ ...r.task, status: d.status, error: d.error ?? null, result: d.result ?? null }));
      }
      return;
    }
    if ((type === 'task.queued' || type === 'task.scheduled') && d.from === null && matchesNew(d)) {
      if (data && !eventAfter(id, data.last_event_id)) return;
      newIds.add(d.task_id);
      showBanner();
    }
  }

  /** Whether a new task would show in this list (the filters the event can tell). */
  function matchesNew(d) {
    const st = splitList(params.status);
    if (st.length && !st.includes(d.status)) return false;
    const names = splitList(params.name);
    if (names.length && !names.includes(d.name)) return false;
    const pr = splitList(params.priority);
    if (pr.length && !pr.includes(d.priority)) return false;
    if (params.worker) return false; // a new task has no worker yet
    if (params.until) return false; // submitted now: after any `until` but the far future
    if (params.q) {
      const q = params.q.toLowerCase();
      const hay = `${d.task_id} ${d.name} ${d.input || ''}`.toLowerCase();
      if (!hay.includes(q)) return false;
    }
    return true;
  }

  function showBanner() {
    const n = newIds.size;
    banner.hidden = n === 0;
    banner.textContent = n ? `${fmtNum(n)} new task${n === 1 ? '' : 's'} — show` : '';
  }

  // The chips' counts change with every event; read them again now and then.
  const refreshCounts = scope.keep(throttle(async () => {
    if (live.conn.state !== 'live') return;
    try {
      const r = await get('api/tasks', { ...listParams(params), cursor: undefined, limit: 1 });
      if (scope.alive && r.counts) renderChips(r.counts);
    } catch { /* the next event tries again */ }
  }, 3000));

  scope.on('task', (d, id, type) => {
    applyEvent(d, id, type);
    if (type !== 'task.started' && type !== 'task.requeued') refreshCounts();
  });

  // ---------------------------------------------------------------- load
  async function reload() {
    const my = ++seq;
    msgBox.replaceChildren();
    table.classList.add('loading-rows');
    try {
      const res = await get('api/tasks', listParams(params));
      if (!scope.alive || my !== seq) return;
      data = res;
      newIds.clear();
      showBanner();
      const keep = new Set(res.tasks.map((t) => t.task_id));
      for (const id of [...selected]) if (!keep.has(id) && !allMatching) selected.delete(id);
      renderChips(res.counts);
      renderRows();
      // Events that came in while the request was under way.
      for (const ev of live.recentTaskEvents()) if (eventAfter(ev.id, res.last_event_id) && rows.has(ev.d.task_id)) applyEvent(ev.d, ev.id, ev.type);
    } catch (err) {
      if (!scope.alive || my !== seq) return;
      replace(msgBox, errorBox(err, 'Could not list the tasks'));
    } finally {
      table.classList.remove('loading-rows');
    }
  }

  async function loadDatalists() {
    try {
      const [reg, wk] = await Promise.all([get('api/registered-tasks'), get('api/workers')]);
      if (!scope.alive) return;
      replace(dlNames, reg.tasks.map((t) => h('option', { value: t.name })));
      replace(dlWorkers, wk.workers.map((w) => h('option', { value: w.id })));
    } catch { /* suggestions only */ }
  }

  function update(p) {
    const fk = filterKey(p);
    if (fk !== cursorTrail.key) cursorTrail = { key: fk, stack: [] };
    const filtersChanged = FILTER_KEYS.some((k) => (p[k] || '') !== (params[k] || ''));
    params = { ...p };
    if (filtersChanged) { selected = new Set(); allMatching = false; }
    syncForm();
    renderChips(data && !filtersChanged ? data.counts : null);
    reload();
  }

  if (filterKey(params) !== cursorTrail.key) cursorTrail = { key: filterKey(params), stack: [] };
  syncForm();
  renderChips(null);
  reload();
  loadDatalists();

  return {
    reload: () => { reload(); loadDatalists(); },
    update,
    focusSearch: () => { search.focus(); search.select(); },
  };
}
