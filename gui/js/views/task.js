// #/tasks/<id> — the whole record: arguments, result, every attempt with its
// stderr, the timeline; Cancel / Retry / Delete; copy as a CLI command. Read
// again whenever an event names the task (or a retry of it).
import { h, replace, svgIcon, statusBadge, priorityTag, relTime, fmtTime, fmtAbs, fmtDur, jsonView, elapsed, isLive, shortId, debounce } from '../dom.js';
import { get, post, del, taskPath } from '../api.js';
import { navigate, taskHref } from '../state.js';
import { toast, toastError, confirmDialog, copyText } from '../ui.js';
import { panel, errorBox, loading, kv, taskLink } from '../widgets.js';

export const title = 'Task';

const ATTEMPT_OK = new Set(['success']);

function when(iso) {
  if (!iso) return null;
  return h('span', { title: fmtAbs(iso) }, fmtTime(iso), ' ', h('span', { class: 'muted' }, '(', relTime(iso), ')'));
}

function exitText(a) {
  if (!a.exit) return null;
  if (a.exit.code !== undefined && a.exit.code !== null) return `code ${a.exit.code}`;
  if (a.exit.signal !== undefined && a.exit.signal !== null) return `signal ${a.exit.signal}`;
  return JSON.stringify(a.exit);
}

function attemptView(a) {
  const te = a.task_error;
  const facts = [
    a.worker ? ['worker', a.worker] : null,
    a.pid ? ['pid', String(a.pid)] : null,
    exitText(a) ? ['exit', exitText(a)] : null,
    a.duration_ms !== undefined && a.duration_ms !== null ? ['took', fmtDur(a.duration_ms / 1000)] : null,
    a.started_at ? ['started', fmtTime(a.started_at)] : null,
    a.limit_ms ? ['timeout', fmtDur(a.limit_ms / 1000)] : null,
    a.limit !== undefined && typeof a.limit !== 'object' ? ['limit', String(a.limit)] : null,
    a.process_lost ? ['process', 'lost'] : null,
  ].filter(Boolean);
  return h('div', { class: ['attempt', ATTEMPT_OK.has(a.status) ? 'att-ok' : 'att-bad'], 'data-testid': `attempt-${a.attempt}` },
    h('div', { class: 'attempt-head' },
      h('span', { class: 'attempt-n' }, `#${a.attempt}`),
      h('span', { class: `badge at-${a.status}`, 'data-testid': 'attempt-status' }, a.status),
      facts.map(([k, v]) => h('span', { class: 'fact' }, h('span', { class: 'muted' }, `${k} `), h('span', { 'data-testid': `attempt-${k}` }, v)))),
    a.error && !ATTEMPT_OK.has(a.status) ? h('div', { class: 'attempt-error', 'data-testid': 'attempt-error' }, a.error) : null,
    te && (te.type || te.message) ? h('div', { class: 'attempt-te' }, h('strong', null, te.type || 'Error'), te.message ? `: ${te.message}` : '') : null,
    te && te.traceback ? h('details', { class: 'tb', open: true }, h('summary', null, 'Traceback'), h('pre', { class: 'pre scroll', 'data-testid': 'attempt-traceback' }, te.traceback)) : null,
    a.message ? h('div', { class: 'muted' }, a.message) : null,
    a.head ? h('details', null, h('summary', null, 'Output head'), h('pre', { class: 'pre scroll' }, a.head)) : null,
    a.cause ? h('div', { class: 'muted' }, `cause: ${a.cause}`) : null,
    a.stderr ? h('details', { class: 'stderr', open: true }, h('summary', null, `stderr (${a.stderr.length} chars, the tail is kept)`), h('pre', { class: 'pre scroll', 'data-testid': 'attempt-stderr' }, a.stderr)) : null);
}

export function mount(root, params, scope) {
  const id = params.id;
  let rec = null;
  let seq = 0;
  let gone = false;

  replace(root, h('div', { class: 'crumbs' }, h('a', { href: '#/tasks' }, 'Tasks'), ' / ', h('span', { class: 'mono' }, id)), loading());

  async function reload() {
    if (gone) return;
    const my = ++seq;
    try {
      const r = await get(taskPath(id));
      if (!scope.alive || my !== seq) return;
      rec = r;
      render();
    } catch (err) {
      if (!scope.alive || my !== seq) return;
      if (err.status === 404) {
        gone = true;
        replace(root, h('div', { class: 'crumbs' }, h('a', { href: '#/tasks' }, 'Tasks'), ' / ', h('span', { class: 'mono' }, id)),
          errorBox({ message: 'the control plane does not know this task: it never existed, or its result expired or was deleted.' }, 'Not found'));
      } else if (rec) {
        toastError(err, 'Could not refresh the task');
      } else {
        replace(root, errorBox(err, 'Could not load the task'));
      }
    }
  }

  const refresh = scope.keep(debounce(reload, 120));

  function render() {
    const t = rec.task;
    t.attempts = t.attempts || [];
    const liveNow = isLive(t.status);
    const last = t.attempts[t.attempts.length - 1];
    const statusEl = statusBadge(t.status, { 'data-testid': 'task-status', 'aria-live': 'polite' });

    const btnCancel = h('button', { type: 'button', class: 'btn action', 'data-testid': 'btn-cancel', hidden: !liveNow, on: { click: cancel } }, 'Cancel');
    const btnRetry = h('button', { type: 'button', class: 'btn action', 'data-testid': 'btn-retry', hidden: liveNow, on: { click: retry } }, 'Retry');
    const btnDelete = h('button', { type: 'button', class: 'btn danger action', 'data-testid': 'btn-delete', hidden: liveNow, on: { click: remove } }, 'Delete');
    const btnCli = h('button', { type: 'button', class: 'btn', 'data-testid': 'btn-copy-cli', hidden: !rec.cli, on: { click: copyCli } }, 'Copy as CLI command');

    let timing;
    if (t.status === 'running' && t.started_at) timing = ['Running for', elapsed(t.started_at, { 'data-testid': 'task-elapsed' })];
    else if (liveNow) timing = ['Waiting for', elapsed(t.submitted_at, { 'data-testid': 'task-elapsed' })];
    else if (t.started_at && t.finished_at) timing = ['Took', h('span', { 'data-testid': 'task-elapsed' }, fmtDur((Date.parse(t.finished_at) - Date.parse(t.started_at)) / 1000))];

    const retryOf = rec.retry_of ?? t.retry_of;
    const retriedBy = rec.retried_by ?? t.retried_by;
    const overview = kv([
      ['Status', statusEl],
      ['Priority', priorityTag(t.priority)],
      ['Submitted', when(t.submitted_at)],
      t.eta ? ['Runs at', when(t.eta)] : null,
      ['Started', when(t.started_at)],
      ['Finished', when(t.finished_at)],
      timing ? [timing[0], timing[1]] : null,
      ['Attempts', String((t.attempts || []).length)],
      last && last.worker ? ['Worker', last.worker] : null,
      retryOf ? ['Retry of', taskLink(retryOf, retryOf, { 'data-testid': 'retry-of' })] : null,
      retriedBy ? ['Retried by', taskLink(retriedBy, retriedBy, { 'data-testid': 'retried-by' })] : null,
      t.callback ? ['Callback', h('span', { class: 'mono' }, JSON.stringify(t.callback))] : null,
    ]);

    const hasResult = t.status === 'success' || (t.result !== null && t.result !== undefined);
    const outcome = hasResult
      ? panel('Result', jsonView(t.result, { 'data-testid': 'task-result' }))
      : t.error ? panel('Error', h('pre', { class: 'pre error-text', 'data-testid': 'task-error' }, t.error))
        : null;

    const timeline = h('ol', { class: 'timeline', 'data-testid': 'task-timeline' }, (rec.timeline || []).map((e) => h('li', { class: `tl-${(e.what || '').split(' ').pop()}` },
      h('span', { class: 'tl-at', title: fmtAbs(e.at) }, fmtTime(e.at)),
      h('span', { class: 'tl-what' }, e.what),
      e.detail ? h('span', { class: 'tl-detail' }, e.detail) : null)));

    replace(root,
      h('div', { class: 'crumbs' }, h('a', { href: '#/tasks' }, 'Tasks'), ' / ', h('span', { class: 'mono' }, shortId(t.task_id))),
      h('div', { class: 'detail-head' },
        h('div', { class: 'detail-title' },
          h('h1', null, h('span', { 'data-testid': 'task-name' }, t.name)),
          statusBadge(t.status, { class: `badge big st-${t.status}` }),
          h('span', { class: 'mono muted tid-full', 'data-testid': 'task-id', title: 'task id' }, t.task_id),
          h('button', { type: 'button', class: 'icon-btn small', title: 'Copy the id', 'aria-label': 'Copy the task id', 'data-testid': 'btn-copy-id', on: { click: async () => { toast((await copyText(t.task_id)) ? 'Id copied' : 'Could not copy', 'info', 1500); } } },
            svgIcon('M9 9h10v10H9zM5 15V5h10'))),
        h('div', { class: 'detail-actions' }, btnCancel, btnRetry, btnDelete, btnCli)),
      h('div', { class: 'detail-grid' },
        h('div', { class: 'detail-main' },
          outcome,
          panel('Arguments', h('div', { class: 'args' },
            h('div', { class: 'args-part' }, h('div', { class: 'sub-label' }, 'args'), jsonView(t.args ?? [], { 'data-testid': 'task-args' })),
            h('div', { class: 'args-part' }, h('div', { class: 'sub-label' }, 'kwargs'), jsonView(t.kwargs ?? {}, { 'data-testid': 'task-kwargs' })))),
          panel(`Attempts (${(t.attempts || []).length})`, (t.attempts || []).length
            ? h('div', { class: 'attempts' }, [...t.attempts].reverse().map(attemptView))
            : h('div', { class: 'empty' }, liveNow ? 'Not started yet.' : 'No attempt ran.'), { testid: 'task-attempts' })),
        h('div', { class: 'detail-side' },
          panel('Overview', overview),
          panel('Timeline', timeline),
          rec.cli ? panel('CLI', h('pre', { class: 'pre cli', 'data-testid': 'task-cli' }, rec.cli)) : null)));
  }

  async function cancel(e) {
    const btn = e.currentTarget;
    btn.disabled = true;
    try {
      const r = await post(`${taskPath(id)}/cancel`);
      toast(r.status === 'running' ? 'Stopping the task…' : 'Task cancelled', 'ok');
      refresh();
    } catch (err) {
      toastError(err, 'Cancel failed');
      btn.disabled = false;
    }
  }

  async function retry(e) {
    const btn = e.currentTarget;
    btn.disabled = true;
    try {
      const r = await post(`${taskPath(id)}/retry`);
      toast(h('span', null, 'Retried as ', h('a', { href: taskHref(r.task_id) }, shortId(r.task_id))), 'ok');
      navigate(taskHref(r.task_id));
    } catch (err) {
      toastError(err, 'Retry failed');
      btn.disabled = false;
    }
  }

  async function remove() {
    const ok = await confirmDialog('Delete this task?', 'Its record and result are dropped from the control plane. This cannot be undone.', 'Delete');
    if (!ok) return;
    try {
      gone = true;
      await del(taskPath(id));
      toast('Task deleted', 'ok');
      navigate('#/tasks');
    } catch (err) {
      gone = false;
      toastError(err, 'Delete failed');
    }
  }

  async function copyCli() {
    const ok = await copyText(rec.cli);
    toast(ok ? 'CLI command copied' : 'Could not copy: select the command in the CLI box', ok ? 'ok' : 'error', 2500);
  }

  scope.on('task', (d, evId, type) => {
    if (type === 'task.forgotten') {
      if ((d.task_ids || []).includes(id) && !gone) {
        gone = true;
        toast(`This task was dropped (${d.reason || 'forgotten'})`, 'info');
        const s = root.querySelector('[data-testid=task-status]');
        if (s) s.textContent = 'deleted';
        for (const b of root.querySelectorAll('.detail-actions .btn.action')) b.hidden = true;
      }
      return;
    }
    if (d.task_id === id) {
      // Show the new status at once; the refetch brings the rest.
      const s = root.querySelector('[data-testid=task-status]');
      if (s && d.status) { s.textContent = d.status; s.className = `badge st-${d.status}`; }
      refresh();
    } else if (d.retry_of === id) refresh();
  });

  reload();
  return { reload };
}
