// #/queues — depth and oldest age per priority, the next tasks of each, the
// scheduled tasks and the ones waiting to retry.
import { h, replace, relTime, fmtNum, elapsed, PRIORITIES, throttle, shortId } from '../dom.js';
import { get } from '../api.js';
import { hashFor } from '../state.js';
import { viewHead, errorBox, loading, panel, empty, taskLink } from '../widgets.js';

export const title = 'Queues';

const ago = (seconds) => new Date(Date.now() - seconds * 1000).toISOString();

export function mount(root, params, scope) {
  const sub = h('span', { class: 'view-sub', 'data-testid': 'queues-total' });
  const body = h('div', null, loading());
  replace(root, viewHead('Queues', sub), body);

  function nextList(items, meta) {
    if (!items || !items.length) return empty('Empty.');
    return h('ol', { class: 'next-list' }, items.map((t) => h('li', { 'data-testid': 'queue-task', 'data-task-id': t.id },
      h('span', { class: 'q-name' }, t.name), taskLink(t.id, shortId(t.id)), h('span', { class: 'q-meta muted' }, meta(t)))));
  }

  async function reload() {
    try {
      const res = await get('api/queues');
      if (!scope.alive) return;
      sub.textContent = `${fmtNum(res.total_queued ?? 0)} queued`;
      const queues = res.queues || {};
      const prios = PRIORITIES.map((p) => {
        const q = queues[p] || { count: 0, oldest_age_seconds: null, tasks: [] };
        return h('section', { class: `panel queue prio-border-${p}`, 'data-testid': `queue-${p}` },
          h('header', { class: 'panel-head' }, h('h2', null, h('span', { class: `prio prio-${p}` }, p)),
            h('a', { class: 'small', href: hashFor('/tasks', { status: 'queued', priority: p }) }, 'list →')),
          h('div', { class: 'panel-body' },
            h('div', { class: 'queue-stats' },
              h('div', null, h('div', { class: 'big', 'data-testid': `queue-${p}-count` }, fmtNum(q.count ?? 0)), h('div', { class: 'muted small' }, 'queued')),
              h('div', null, h('div', { class: 'big' }, q.oldest_age_seconds !== null && q.oldest_age_seconds !== undefined ? elapsed(ago(q.oldest_age_seconds)) : '—'), h('div', { class: 'muted small' }, 'oldest waits'))),
            nextList(q.tasks, (t) => (t.age_seconds !== undefined && t.age_seconds !== null ? h('span', null, 'waits ', elapsed(ago(t.age_seconds))) : ''))));
      });
      const sch = res.scheduled || { count: 0, next: [] };
      const rt = res.retrying || { count: 0, next: [] };
      replace(body,
        h('div', { class: 'grid4' }, prios),
        h('div', { class: 'grid2' },
          panel(`Scheduled (${fmtNum(sch.count ?? 0)})`, nextList(sch.next, (t) => h('span', null, 'runs ', relTime(t.at))), { testid: 'queue-scheduled', tools: h('a', { class: 'small', href: hashFor('/tasks', { status: 'scheduled', sort: 'oldest' }) }, 'list →') }),
          panel(`Retrying (${fmtNum(rt.count ?? 0)})`, nextList(rt.next, (t) => h('span', null, `attempt ${t.attempt ?? '?'} `, relTime(t.at))), { testid: 'queue-retrying', tools: h('a', { class: 'small', href: hashFor('/tasks', { status: 'retrying' }) }, 'list →') })));
    } catch (err) {
      if (scope.alive) replace(body, errorBox(err, 'Could not load the queues'));
    }
  }

  const refresh = scope.keep(throttle(reload, 1000));
  scope.on('task', refresh);
  reload();
  return { reload };
}

