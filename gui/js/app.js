// fastworker web GUI: the entry module. Plain ES modules, no build step, no
// framework; the control plane embeds these files and serves them under a
// strict CSP (no inline script or style: elements are built with
// createElement/textContent, never from HTML strings).
//
// Layout
//   app.js         router (hash URLs), header, theme, keyboard, live status
//   live.js        the one EventSource (api/events) and a hub views subscribe to
//   api.js         fetch wrappers: relative URLs, JSON bodies, ApiError
//   state.js       shared status, navigate(), Scope (a view's subscriptions)
//   dom.js         h() element builder, formatting, JSON viewer, throttling
//   ui.js          toasts, confirm dialog, clipboard
//   widgets.js     panels, load bars, key/value lists
//   charts.js      uPlot wrapper (vendor/uPlot.iife.min.js) and time series
//   views/*.js     one module per view: mount(root, params, scope) -> {reload, update?}
//
// Stable hooks for tests (data-testid). Keep them when changing the page.
//   nav-dashboard nav-tasks nav-workers nav-queues nav-registered nav-submit   header links
//   conn-status (data-state = connecting|live|down), disconnected (also id="disconnected"),
//   theme-toggle, help-button, help-dialog, confirm-dialog, confirm-yes, confirm-no,
//   read-only-badge, logout-form logout-button (shown when gui.auth), toasts,
//   toast-info|toast-ok|toast-error, load-error
// Dashboard (#/)
//   card-workers card-queued card-running card-succeeded card-failed card-cache
//   (each with card-<name>-value), card-queued-<priority>, dash-uptime,
//   chart-throughput chart-queues chart-history, latest-failures, failure-item,
//   dash-workers, dash-worker (data-worker-id)
// Tasks (#/tasks?…)
//   chip-all chip-<state> (data-count, aria-pressed; text holds the count in .count),
//   tasks-search filter-name filter-priority filter-worker filter-since filter-until
//   filter-sort filter-limit filter-reset, export-csv export-ndjson, tasks-total,
//   new-tasks-banner, bulk-bar bulk-count bulk-select-all bulk-cancel bulk-retry
//   bulk-delete bulk-clear, select-page, tasks-table,
//   task-row (data-task-id, data-status kept up to date from events), row-check,
//   row-status, row-link, page-info page-first page-prev page-next
// Task detail (#/tasks/<id>)
//   task-status (text = the status), task-name, task-id, task-elapsed, task-result,
//   task-error, task-args, task-kwargs, task-attempts, attempt-<n> (attempt-status,
//   attempt-error, attempt-traceback, attempt-stderr, attempt-exit, attempt-pid,
//   attempt-worker, attempt-took), task-timeline, task-cli, retry-of, retried-by,
//   btn-cancel btn-retry btn-delete btn-copy-cli
// Workers / Queues / Registered
//   workers-table worker-row (data-worker-id, data-status) worker-load workers-summary,
//   queue-<priority> queue-<priority>-count queue-scheduled queue-retrying queue-task
//   queues-total, registered-table registered-row (data-name) registered-submit
// Submit (#/submit?name=…)
//   submit-form submit-name submit-name-hint submit-args submit-args-error
//   submit-kwargs submit-kwargs-error submit-priority submit-countdown
//   submit-button submit-error submit-result (holds submit-result-item with
//   submit-result-link to the new task and submit-result-status, live),
//   read-only-notice
// Login page (login.html): login-form login-token login-error login-submit

import { h, replace, tick, fmtDur, debounce } from './dom.js';
import { get } from './api.js';
import * as live from './live.js';
import { state, navigate, Scope } from './state.js';
import { errorBox } from './widgets.js';
import { toast } from './ui.js';
import * as dashboard from './views/dashboard.js';
import * as tasks from './views/tasks.js';
import * as task from './views/task.js';
import * as workers from './views/workers.js';
import * as queues from './views/queues.js';
import * as registered from './views/registered.js';
import * as submit from './views/submit.js';

const THEME_KEY = 'fastworker.theme';
const main = document.getElementById('main');

// ---------------------------------------------------------------- router

/** '#/tasks/abc?x=1' -> {view, nav, params} */
function parseHash(hash) {
  let path = hash.replace(/^#/, '');
  let query = '';
  const qi = path.indexOf('?');
  if (qi >= 0) { query = path.slice(qi + 1); path = path.slice(0, qi); }
  if (!path.startsWith('/')) path = `/${path}`;
  const params = Object.fromEntries(new URLSearchParams(query));
  const parts = path.split('/').filter(Boolean);
  if (parts.length === 0) return { view: dashboard, name: 'dashboard', params };
  if (parts[0] === 'tasks' && parts.length >= 2) {
    let id = path.slice('/tasks/'.length);
    try { id = decodeURIComponent(id); } catch { /* keep it raw */ }
    return { view: task, name: 'task', nav: 'tasks', params: { ...params, id } };
  }
  const views = { tasks, workers, queues, registered, submit };
  if (parts.length === 1 && views[parts[0]]) return { view: views[parts[0]], name: parts[0], params };
  return { view: null, name: 'notfound', params };
}

let current = null; // {name, key, scope, instance}

function route() {
  const r = parseHash(location.hash);
  const key = r.name === 'task' ? `task:${r.params.id}` : r.name;
  if (current && current.key === key && current.instance && current.instance.update) {
    current.instance.update(r.params);
    return;
  }
  if (current) current.scope.dispose();
  const scope = new Scope();
  current = { name: r.name, key, scope, instance: null };
  for (const a of document.querySelectorAll('.nav a')) {
    const on = a.dataset.view === (r.nav || r.name);
    if (on) a.setAttribute('aria-current', 'page'); else a.removeAttribute('aria-current');
  }
  document.body.dataset.view = r.name;
  if (!r.view) {
    document.title = 'Not found · fastworker';
    replace(main, errorBox({ message: `there is no view at ${location.hash}` }, 'Not found'), h('p', null, h('a', { href: '#/' }, 'To the dashboard')));
    current.instance = { reload() {} };
    return;
  }
  document.title = `${r.view.title}${r.name === 'task' ? ` ${r.params.id.slice(0, 8)}` : ''} · fastworker`;
  main.replaceChildren();
  current.instance = r.view.mount(main, r.params, scope);
  window.scrollTo(0, 0);
}

const reloadView = debounce(() => {
  if (current && current.instance && current.instance.reload) current.instance.reload();
}, 150);

// ----------------------------------------------------------------- status

function applyStatus(st) {
  state.status = st;
  const ro = !!(st.gui && st.gui.read_only);
  if (ro !== state.readOnly) {
    state.readOnly = ro;
    document.body.classList.toggle('read-only', ro);
    document.querySelector('[data-testid=read-only-badge]').hidden = !ro;
    if (ro && current && current.name === 'submit') route();
  }
  const auth = !!(st.gui && st.gui.auth);
  const logout = document.querySelector('[data-testid=logout-form]');
  if (logout.hidden === auth) logout.hidden = !auth;
  const ident = document.querySelector('[data-testid=ident]');
  const txt = `${st.worker_id || 'control plane'}${st.version ? ` · v${st.version}` : ''}`;
  if (ident.textContent !== txt) ident.textContent = txt;
  ident.title = `base ${st.base_address || '?'} · discovery ${st.discovery_address || '?'}${st.uptime_seconds !== undefined ? ` · up ${fmtDur(st.uptime_seconds)}` : ''}`;
}

function applyConn(s) {
  const el = document.querySelector('[data-testid=conn-status]');
  el.dataset.state = s;
  el.querySelector('.conn-text').textContent = s === 'live' ? 'live' : s === 'down' ? 'offline' : 'connecting';
  el.title = s === 'live' ? 'Event stream: connected' : s === 'down' ? 'Event stream: disconnected, reconnecting' : 'Event stream: connecting';
  const down = s === 'down';
  document.getElementById('disconnected').hidden = !down;
  document.body.classList.toggle('stale', down);
}

// ------------------------------------------------------------------ theme

function setTheme(theme, remember) {
  document.documentElement.setAttribute('data-theme', theme);
  if (remember) {
    try { localStorage.setItem(THEME_KEY, theme); } catch { /* storage off */ }
  }
  const btn = document.getElementById('theme-toggle');
  btn.setAttribute('aria-label', theme === 'dark' ? 'Switch to light theme' : 'Switch to dark theme');
  btn.title = theme === 'dark' ? 'Light theme' : 'Dark theme';
  live.emitLocal('theme', theme);
}

function initTheme() {
  document.getElementById('theme-toggle').addEventListener('click', () => {
    setTheme(document.documentElement.getAttribute('data-theme') === 'dark' ? 'light' : 'dark', true);
  });
  const mq = window.matchMedia('(prefers-color-scheme: dark)');
  mq.addEventListener('change', () => {
    let stored = null;
    try { stored = localStorage.getItem(THEME_KEY); } catch { /* storage off */ }
    if (!stored) setTheme(mq.matches ? 'dark' : 'light', false);
  });
  setTheme(document.documentElement.getAttribute('data-theme') || 'light', false);
}

// --------------------------------------------------------------- keyboard

let gPending = 0;
const G_KEYS = { d: '#/', t: '#/tasks', w: '#/workers', q: '#/queues', r: '#/registered', s: '#/submit' };

function openDialog() {
  return document.querySelector('dialog[open]');
}

function onKey(e) {
  if (e.key === 'Escape') {
    const d = openDialog();
    if (d) { d.close(); e.preventDefault(); }
    gPending = 0;
    return;
  }
  if (e.ctrlKey || e.metaKey || e.altKey || e.defaultPrevented) return;
  const t = e.target;
  if (t && (t.isContentEditable || /^(INPUT|TEXTAREA|SELECT)$/.test(t.tagName))) return;
  if (openDialog()) return;
  if (gPending && Date.now() - gPending < 1500 && G_KEYS[e.key]) {
    gPending = 0;
    e.preventDefault();
    if (e.key === 's' && state.readOnly) return;
    navigate(G_KEYS[e.key]);
    return;
  }
  gPending = 0;
  if (e.key === 'g') { gPending = Date.now(); return; }
  if (e.key === '/') {
    e.preventDefault();
    if (current && current.instance && current.instance.focusSearch) current.instance.focusSearch();
    else {
      navigate('#/tasks');
      setTimeout(() => current && current.instance && current.instance.focusSearch && current.instance.focusSearch(), 0);
    }
    return;
  }
  if (e.key === '?') {
    e.preventDefault();
    document.getElementById('help').showModal();
  }
}

// ------------------------------------------------------------------- boot

async function boot() {
  initTheme();
  document.getElementById('help-button').addEventListener('click', () => document.getElementById('help').showModal());
  document.addEventListener('keydown', onKey);
  window.addEventListener('hashchange', route);
  window.addEventListener('fw:route', route);
  setInterval(tick, 1000);

  live.on('conn', applyConn);
  live.on('stats', applyStatus);
  live.on('reload', () => {
    get('api/status').then(applyStatus).catch(() => { /* stats will come */ });
    reloadView();
  });
  // A reload of the manifest: say what changed; the views that list task
  // types read them again.
  live.on('manifest', (d) => {
    const part = (n, what) => `${n.length} ${what}${n.length ? ` (${n.join(', ')})` : ''}`;
    const added = d.added || [], removed = d.removed || [], changed = d.changed || [];
    const pools = d.pools_replaced || 0;
    toast(`Manifest reloaded: ${part(added, 'added')}, ${part(removed, 'removed')}, ${part(changed, 'changed')}; ${pools} warm pool${pools === 1 ? '' : 's'} replaced`, 'info', 10000);
    reloadView();
  });
  live.start();

  // The status first (read-only hides actions before they show), then the
  // view once the stream is there, so that no event falls between the two.
  const [st] = await Promise.all([get('api/status').catch(() => null), live.firstHello(1500)]);
  if (st) applyStatus(st);
  route();
  if (!live.conn.helloSeen) {
    const off = live.on('hello', () => { off(); reloadView(); });
  }
}

boot();
