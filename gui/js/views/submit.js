// #/submit?name=… — submits a task. The JSON of args and kwargs is checked
// as it is typed; Submit stays disabled while anything is invalid. Each task
// submitted from here is listed with its status, kept live from events.
import { h, replace, statusBadge, shortId, PRIORITIES, fmtDur } from '../dom.js';
import { get, post } from '../api.js';
import * as live from '../live.js';
import { state, taskHref } from '../state.js';
import { toastError } from '../ui.js';
import { viewHead, panel } from '../widgets.js';

export const title = 'Submit';

// Kept across visits of the view (not across reloads of the page).
const recent = []; // [{task_id, name, at}]
const draft = { name: '', args: '[]', kwargs: '{}', priority: '', countdown: '' };

export function mount(root, params, scope) {
  if (state.readOnly) {
    replace(root, viewHead('Submit'), h('div', { class: 'notice', 'data-testid': 'read-only-notice' }, 'This GUI is read-only (--gui-read-only): tasks cannot be submitted from it.'));
    return { reload() {} };
  }
  if (params.name) draft.name = params.name;

  let registered = [];
  const nameIn = h('input', { type: 'text', id: 's-name', list: 's-names', required: true, autocomplete: 'off', spellcheck: 'false', 'data-testid': 'submit-name', placeholder: 'a task of the manifest', value: draft.name });
  const names = h('datalist', { id: 's-names' });
  const nameHint = h('div', { class: 'hint', id: 's-name-hint', 'data-testid': 'submit-name-hint' });
  const argsIn = h('textarea', { id: 's-args', rows: '4', spellcheck: 'false', class: 'mono', 'data-testid': 'submit-args', 'aria-describedby': 's-args-err', value: draft.args });
  const argsErr = h('div', { class: 'field-error', id: 's-args-err', 'data-testid': 'submit-args-error', 'aria-live': 'polite' });
  const kwargsIn = h('textarea', { id: 's-kwargs', rows: '4', spellcheck: 'false', class: 'mono', 'data-testid': 'submit-kwargs', 'aria-describedby': 's-kwargs-err', value: draft.kwargs });
  const kwargsErr = h('div', { class: 'field-error', id: 's-kwargs-err', 'data-testid': 'submit-kwargs-error', 'aria-live': 'polite' });
  const prioIn = h('select', { id: 's-priority', 'data-testid': 'submit-priority' },
    h('option', { value: '' }, "the task's default"), PRIORITIES.map((p) => h('option', { value: p }, p)));
  prioIn.value = draft.priority;
  const countdownIn = h('input', { type: 'number', id: 's-countdown', min: '0', step: 'any', placeholder: 'now', 'data-testid': 'submit-countdown', value: draft.countdown, 'aria-describedby': 's-countdown-err' });
  const countdownErr = h('div', { class: 'field-error', id: 's-countdown-err', 'aria-live': 'polite' });
  const submitBtn = h('button', { type: 'submit', class: 'btn primary', 'data-testid': 'submit-button' }, 'Submit');
  const formErr = h('div', { class: 'field-error', 'data-testid': 'submit-error', role: 'alert' });
  const result = h('div', { class: 'submit-result', 'data-testid': 'submit-result', 'aria-live': 'polite' });

  const form = h('form', { class: 'submit-form', novalidate: true, 'data-testid': 'submit-form' },
    h('div', { class: 'field' }, h('label', { for: 's-name' }, 'Task'), nameIn, names, nameHint),
    h('div', { class: 'field' }, h('label', { for: 's-args' }, 'Arguments ', h('span', { class: 'muted' }, '(a JSON array)')), argsIn, argsErr),
    h('div', { class: 'field' }, h('label', { for: 's-kwargs' }, 'Keyword arguments ', h('span', { class: 'muted' }, '(a JSON object)')), kwargsIn, kwargsErr),
    h('div', { class: 'row2' },
      h('div', { class: 'field' }, h('label', { for: 's-priority' }, 'Priority'), prioIn),
      h('div', { class: 'field' }, h('label', { for: 's-countdown' }, 'Start in ', h('span', { class: 'muted' }, '(seconds, optional)')), countdownIn, countdownErr)),
    h('div', { class: 'form-actions' }, submitBtn, h('span', { class: 'muted small' }, 'Ctrl+Enter submits')),
    formErr);

  replace(root, viewHead('Submit a task'),
    h('div', { class: 'submit-grid' },
      panel('New task', form),
      panel('Submitted from this page', result, { testid: 'submit-results-panel' })));

  // ------------------------------------------------------------ checking
  function parse(el, errEl, kind) {
    const txt = el.value.trim();
    if (!txt) { errEl.textContent = ''; el.removeAttribute('aria-invalid'); return kind === 'array' ? [] : {}; }
    let v;
    try {
      v = JSON.parse(txt);
    } catch (e) {
      errEl.textContent = `Not JSON: ${e.message}`;
      el.setAttribute('aria-invalid', 'true');
      return undefined;
    }
    const ok = kind === 'array' ? Array.isArray(v) : v !== null && typeof v === 'object' && !Array.isArray(v);
    if (!ok) {
      errEl.textContent = kind === 'array' ? 'Must be a JSON array, such as [5, 3]' : 'Must be a JSON object, such as {"user": "ann"}';
      el.setAttribute('aria-invalid', 'true');
      return undefined;
    }
    errEl.textContent = '';
    el.removeAttribute('aria-invalid');
    return v;
  }

  function check() {
    draft.name = nameIn.value; draft.args = argsIn.value; draft.kwargs = kwargsIn.value;
    draft.priority = prioIn.value; draft.countdown = countdownIn.value;
    const args = parse(argsIn, argsErr, 'array');
    const kwargs = parse(kwargsIn, kwargsErr, 'object');
    let countdown;
    const cd = countdownIn.value.trim();
    if (cd !== '') {
      const n = Number(cd);
      if (!Number.isFinite(n) || n < 0) { countdownErr.textContent = 'A number of seconds, 0 or more'; countdown = undefined; } else { countdownErr.textContent = ''; countdown = n; }
    } else countdownErr.textContent = '';
    const name = nameIn.value.trim();
    const reg = registered.find((t) => t.name === name);
    if (reg) {
      nameHint.textContent = [reg.doc, `default priority ${reg.priority || 'normal'}`, reg.timeout_seconds ? `timeout ${fmtDur(reg.timeout_seconds)}` : null, reg.retries ? `${reg.retries} retries` : null].filter(Boolean).join(' · ');
    } else if (name && registered.length) {
      nameHint.textContent = 'Not a registered task: the control plane will refuse it.';
    } else nameHint.textContent = '';
    const valid = name !== '' && args !== undefined && kwargs !== undefined && !countdownErr.textContent;
    submitBtn.disabled = !valid;
    return valid ? { name, args, kwargs, countdown } : null;
  }

  for (const el of [nameIn, argsIn, kwargsIn, countdownIn]) el.addEventListener('input', check);
  prioIn.addEventListener('change', check);
  form.addEventListener('keydown', (e) => { if (e.key === 'Enter' && (e.ctrlKey || e.metaKey)) { e.preventDefault(); form.requestSubmit(); } });

  form.addEventListener('submit', async (e) => {
    e.preventDefault();
    const v = check();
    if (!v) return;
    const body = { name: v.name, args: v.args, kwargs: v.kwargs };
    if (prioIn.value) body.priority = prioIn.value;
    if (v.countdown !== undefined) body.countdown = v.countdown;
    submitBtn.disabled = true;
    formErr.textContent = '';
    try {
      const r = await post('api/tasks', body);
      recent.unshift({ task_id: r.task_id, name: v.name, status: r.status || 'queued', input: JSON.stringify(v.args) });
      if (recent.length > 20) recent.length = 20;
      renderRecent();
    } catch (err) {
      formErr.textContent = err.message;
      toastError(err, 'Submit refused');
    } finally {
      check();
    }
  });

  // ------------------------------------------------------ recent results
  function renderRecent() {
    if (!recent.length) { replace(result, h('div', { class: 'empty' }, 'Nothing yet.')); return; }
    replace(result, h('ul', { class: 'recent-list' }, recent.map((r) => {
      // The task may have moved on before its id was known here.
      const st = live.latestStatus(r.task_id) || r.status;
      r.status = st;
      return h('li', { 'data-testid': 'submit-result-item', 'data-task-id': r.task_id },
        statusBadge(st, { 'data-testid': 'submit-result-status' }),
        h('span', { class: 'strong' }, r.name),
        h('a', { href: taskHref(r.task_id), class: 'mono', 'data-testid': 'submit-result-link', title: r.task_id }, shortId(r.task_id)),
        h('span', { class: 'muted mono small ellipsis' }, r.input));
    })));
  }

  scope.on('task', (d) => {
    const r = recent.find((x) => x.task_id === d.task_id);
    if (!r || !d.status) return;
    r.status = d.status;
    const li = result.querySelector(`li[data-task-id="${CSS.escape(d.task_id)}"]`);
    if (li) li.firstElementChild.replaceWith(statusBadge(d.status, { 'data-testid': 'submit-result-status' }));
  });

  async function loadRegistered() {
    try {
      const res = await get('api/registered-tasks');
      if (!scope.alive) return;
      registered = res.tasks || [];
      replace(names, registered.map((t) => h('option', { value: t.name }, t.doc || '')));
      check();
    } catch { /* names are suggestions only */ }
  }

  renderRecent();
  check();
  loadRegistered();
  nameIn.focus();
  return { reload: loadRegistered };
}
