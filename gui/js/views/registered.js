// #/registered — the task types of the manifest, who can run each, and their
// run-time figures.
import { h, replace, fmtDur, fmtNum, throttle } from '../dom.js';
import { get } from '../api.js';
import { hashFor } from '../state.js';
import { viewHead, errorBox, loading, empty } from '../widgets.js';

export const title = 'Registered tasks';

function pct(s) {
  if (!s || !s.count) return h('span', { class: 'muted' }, '—');
  return h('span', { title: `mean ${fmtDur(s.mean)} over ${s.count}` }, fmtDur(s.p50), h('span', { class: 'muted' }, ' / '), fmtDur(s.p95));
}

export function mount(root, params, scope) {
  const sub = h('span', { class: 'view-sub' });
  const body = h('div', null, loading());
  replace(root, viewHead('Registered tasks', sub), body);

  async function reload() {
    try {
      const res = await get('api/registered-tasks');
      if (!scope.alive) return;
      const ts = res.tasks || [];
      sub.textContent = `${ts.length} task type${ts.length === 1 ? '' : 's'}`;
      if (!ts.length) { replace(body, empty('The manifest has no tasks.')); return; }
      const cols = ['Task', 'Runs', 'Priority', 'Timeout · retries', 'Workers', 'Running', 'Succeeded', 'Failed', 'Cancelled', 'Retried', 'Run p50 / p95', 'Wait p50 / p95', ''];
      replace(body, h('div', { class: 'table-wrap' }, h('table', { class: 'grid-table reg-table', 'data-testid': 'registered-table' },
        h('thead', null, h('tr', null, cols.map((c, i) => h('th', { class: i >= 5 && i <= 9 ? 'num' : '' }, c)))),
        h('tbody', null, ts.map((t) => {
          const st = t.stats || {};
          return h('tr', { 'data-testid': 'registered-row', 'data-name': t.name },
            h('td', null, h('a', { class: 'strong', href: hashFor('/tasks', { name: t.name }) }, t.name), t.doc ? h('div', { class: 'muted small doc' }, t.doc) : null),
            h('td', { class: 'runs' }, h('div', { class: 'mono small ellipsis', title: t.runs || t.module || '' }, t.runs || t.module || '—'), t.mode ? h('div', { class: 'muted small' }, t.mode) : null),
            h('td', null, t.priority ? h('span', { class: `prio prio-${t.priority}` }, t.priority) : '—'),
            h('td', null, t.timeout_seconds ? fmtDur(t.timeout_seconds) : h('span', { class: 'muted' }, 'no timeout'), h('span', { class: 'muted' }, ' · '), `${t.retries ?? 0}`),
            h('td', { class: 'tags' }, (t.workers || []).map((w) => h('span', { class: 'tag' }, w))),
            h('td', { class: 'num' }, fmtNum(st.running ?? 0)),
            h('td', { class: 'num' }, h('a', { href: hashFor('/tasks', { name: t.name, status: 'success' }) }, fmtNum(st.success ?? 0))),
            h('td', { class: ['num', st.failure ? 'bad' : ''] }, h('a', { href: hashFor('/tasks', { name: t.name, status: 'failure' }) }, fmtNum(st.failure ?? 0))),
            h('td', { class: 'num' }, fmtNum(st.cancelled ?? 0)),
            h('td', { class: 'num' }, fmtNum(st.retries ?? 0)),
            h('td', null, pct(st.run_seconds)),
            h('td', null, pct(st.wait_seconds)),
            h('td', null, h('a', { class: 'btn small action', href: hashFor('/submit', { name: t.name }), 'data-testid': 'registered-submit' }, 'Submit')));
        })))));
    } catch (err) {
      if (scope.alive) replace(body, errorBox(err, 'Could not load the registered tasks'));
    }
  }

  const refresh = scope.keep(throttle(reload, 5000));
  scope.on('task', (d, id, type) => { if (type === 'task.success' || type === 'task.failure' || type === 'task.cancelled' || type === 'task.started') refresh(); });
  scope.on('worker', refresh);
  reload();
  return { reload };
}
