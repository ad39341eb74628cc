// #/workers — the control plane's own slots and every subworker.
import { h, replace, relTime, fmtNum, throttle } from '../dom.js';
import { get } from '../api.js';
import { hashFor } from '../state.js';
import { viewHead, errorBox, loading, loadBar, empty } from '../widgets.js';

export const title = 'Workers';

export function mount(root, params, scope) {
  const sub = h('span', { class: 'view-sub', 'data-testid': 'workers-summary' });
  const body = h('div', null, loading());
  replace(root, viewHead('Workers', sub), body);

  async function reload() {
    try {
      const res = await get('api/workers');
      if (!scope.alive) return;
      const ws = res.workers || [];
      const load = ws.reduce((a, w) => a + (w.load ?? 0), 0);
      const cap = ws.reduce((a, w) => a + (w.capacity ?? 0), 0);
      sub.textContent = `${ws.length} worker${ws.length === 1 ? '' : 's'} · ${load} running of ${cap} slots`;
      if (!ws.length) { replace(body, empty('No workers.')); return; }
      replace(body, h('div', { class: 'table-wrap' }, h('table', { class: 'grid-table', 'data-testid': 'workers-table' },
        h('thead', null, h('tr', null, ['Worker', 'Status', 'Address', 'Load', 'Done', 'Last seen', 'Registered', 'Tasks'].map((c, i) => h('th', { class: i === 4 ? 'num' : '' }, c)))),
        h('tbody', null, ws.map((w) => h('tr', { 'data-testid': 'worker-row', 'data-worker-id': w.id, 'data-status': w.status },
          h('td', null, h('a', { href: hashFor('/tasks', { worker: w.id }), class: 'strong', title: 'Tasks of this worker' }, w.id),
            w.is_control_plane ? h('span', { class: 'tag small' }, 'this control plane') : null),
          h('td', null, h('span', { class: `badge ws-${w.status}` }, w.status)),
          h('td', { class: 'mono small' }, w.address || '—'),
          h('td', null, loadBar(w.load ?? 0, w.capacity ?? 0, 'worker-load')),
          h('td', { class: 'num' }, fmtNum(w.tasks_done ?? 0)),
          h('td', null, w.last_seen ? relTime(w.last_seen) : h('span', { class: 'muted' }, '—')),
          h('td', null, w.registered_at ? relTime(w.registered_at) : h('span', { class: 'muted' }, '—')),
          h('td', { class: 'tags' }, (w.tasks || []).map((t) => h('a', { class: 'tag', href: hashFor('/tasks', { name: t }) }, t)))))))));
    } catch (err) {
      if (scope.alive) replace(body, errorBox(err, 'Could not load the workers'));
    }
  }

  const refresh = scope.keep(throttle(reload, 1500));
  scope.on('worker', refresh);
  scope.on('task', (d, id, type) => { if (type !== 'task.queued' && type !== 'task.scheduled') refresh(); });
  reload();
  return { reload };
}
