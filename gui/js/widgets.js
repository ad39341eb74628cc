// Small building blocks shared by the views.
import { h } from './dom.js';
import { taskHref } from './state.js';

/** A titled box. `tools` go on the right of the title. */
export function panel(title, body, { tools, testid, cls } = {}) {
  return h('section', { class: ['panel', cls], 'data-testid': testid },
    h('header', { class: 'panel-head' }, h('h2', null, title), tools ? h('div', { class: 'panel-tools' }, tools) : null),
    h('div', { class: 'panel-body' }, body));
}

/** The view's title line. */
export function viewHead(title, ...rest) {
  return h('div', { class: 'view-head' }, h('h1', null, title), ...rest);
}

export function errorBox(err, what = 'Could not load this') {
  const msg = err && err.message ? err.message : String(err);
  return h('div', { class: 'error-box', role: 'alert', 'data-testid': 'load-error' }, h('strong', null, `${what}: `), msg);
}

export const loading = () => h('div', { class: 'loading', 'aria-busy': 'true' }, 'Loading…');

export const empty = (text) => h('div', { class: 'empty' }, text);

/** A load bar: load / capacity. */
export function loadBar(load, capacity, testid) {
  const fill = h('span', { class: 'bar-fill' });
  const pct = capacity > 0 ? Math.min(100, Math.round((load / capacity) * 100)) : (load > 0 ? 100 : 0);
  fill.style.width = `${pct}%`;
  const cls = pct >= 100 ? 'full' : pct >= 75 ? 'high' : '';
  return h('span', { class: 'loadbar', title: `${load} running of ${capacity} slots`, 'data-testid': testid },
    h('span', { class: ['bar', cls] }, fill), h('span', { class: 'bar-text' }, `${load} / ${capacity}`));
}

/** A definition list from [label, value] pairs (null values skipped). */
export function kv(pairs, cls = 'kv') {
  const dl = h('dl', { class: cls });
  for (const p of pairs) {
    if (!p) continue;
    const [k, v, testid] = p;
    if (v === null || v === undefined || v === false) continue;
    dl.appendChild(h('dt', null, k));
    dl.appendChild(h('dd', { 'data-testid': testid }, v));
  }
  return dl;
}

export function taskLink(id, text, extra = {}) {
  return h('a', { href: taskHref(id), class: 'mono', title: id, ...extra }, text ?? id);
}

export function workerTag(id) {
  return h('span', { class: 'tag' }, id);
}
