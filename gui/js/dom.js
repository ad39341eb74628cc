// DOM building and formatting helpers. Everything the server sends is user
// data (task names, arguments, errors, stderr): it only ever goes into the
// page as text nodes or attribute values, never as HTML.

/**
 * h('a', {class: 'x', href: '#/', 'data-testid': 't', on: {click: fn}}, 'text', child…)
 * Attribute values are set with setAttribute (never `style`: the CSP forbids
 * style attributes); `value`, `checked`, `disabled`, `hidden`, `selected` and
 * `title` are set as properties; `text` sets textContent.
 */
export function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  if (attrs) {
    for (const [k, v] of Object.entries(attrs)) {
      if (v === undefined || v === null || v === false) continue;
      if (k === 'on') {
        for (const [ev, fn] of Object.entries(v)) el.addEventListener(ev, fn);
      } else if (k === 'text') {
        el.textContent = String(v);
      } else if (k === 'class') {
        el.className = Array.isArray(v) ? v.filter(Boolean).join(' ') : v;
      } else if (k === 'value' || k === 'checked' || k === 'disabled' || k === 'hidden' || k === 'selected' || k === 'title' || k === 'htmlFor') {
        el[k] = v;
      } else if (k === 'style') {
        throw new Error('no style attributes under the CSP: use a class');
      } else {
        el.setAttribute(k, v === true ? '' : String(v));
      }
    }
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const c of children) {
    if (c === null || c === undefined || c === false) continue;
    if (Array.isArray(c)) append(el, c);
    else if (c instanceof Node) el.appendChild(c);
    else el.appendChild(document.createTextNode(String(c)));
  }
}

/** Replaces every child of `el`. */
export function replace(el, ...children) {
  el.replaceChildren();
  append(el, children);
  return el;
}

export function svgIcon(pathD, cls = 'i') {
  const ns = 'http://www.w3.org/2000/svg';
  const svg = document.createElementNS(ns, 'svg');
  svg.setAttribute('viewBox', '0 0 24 24');
  svg.setAttribute('aria-hidden', 'true');
  svg.setAttribute('class', cls);
  const p = document.createElementNS(ns, 'path');
  p.setAttribute('d', pathD);
  svg.appendChild(p);
  return svg;
}

// ---------------------------------------------------------------- formatting

export const LIVE_STATES = ['queued', 'scheduled', 'running', 'retrying'];
export const FINAL_STATES = ['success', 'failure', 'cancelled'];
export const STATES = [...LIVE_STATES, ...FINAL_STATES];
export const PRIORITIES = ['critical', 'high', 'normal', 'low'];

export const isLive = (status) => LIVE_STATES.includes(status);

export function statusBadge(status, extra = {}) {
  return h('span', { class: `badge st-${status || 'unknown'}`, ...extra }, status || '?');
}

export function priorityTag(p) {
  return h('span', { class: `prio prio-${p}` }, p || '');
}

const pad = (n) => String(n).padStart(2, '0');

/** 15:01:02 today, "Nov 29 15:01:02" on another day. */
export function fmtTime(iso) {
  if (!iso) return '—';
  const d = new Date(iso);
  if (Number.isNaN(d.getTime())) return String(iso);
  const now = new Date();
  const hms = `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
  if (d.toDateString() === now.toDateString()) return hms;
  return `${d.toLocaleString('en', { month: 'short' })} ${d.getDate()} ${hms}`;
}

/** Local date and time with milliseconds and the UTC original, for titles. */
export function fmtAbs(iso) {
  if (!iso) return '';
  const d = new Date(iso);
  if (Number.isNaN(d.getTime())) return String(iso);
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}.${String(d.getMilliseconds()).padStart(3, '0')} (${iso})`;
}

/** "4s ago", "3m ago", "in 2m". */
export function fmtRel(iso, now = Date.now()) {
  if (!iso) return '—';
  const t = new Date(iso).getTime();
  if (Number.isNaN(t)) return String(iso);
  const s = (now - t) / 1000;
  const a = Math.abs(s);
  let txt;
  if (a < 1.5) return 'now';
  if (a < 60) txt = `${Math.round(a)}s`;
  else if (a < 3600) txt = `${Math.floor(a / 60)}m`;
  else if (a < 86400) txt = `${Math.floor(a / 3600)}h ${Math.floor((a % 3600) / 60)}m`;
  else txt = `${Math.floor(a / 86400)}d ${Math.floor((a % 86400) / 3600)}h`;
  return s >= 0 ? `${txt} ago` : `in ${txt}`;
}

/** A duration in seconds: "0.4 ms", "12 ms", "1.25 s", "2m 03s", "1h 02m". */
export function fmtDur(sec) {
  if (sec === null || sec === undefined || Number.isNaN(sec)) return '—';
  if (sec < 0) sec = 0;
  if (sec < 0.001) return `${(sec * 1000).toFixed(2)} ms`;
  if (sec < 0.01) return `${(sec * 1000).toFixed(1)} ms`;
  if (sec < 1) return `${Math.round(sec * 1000)} ms`;
  if (sec < 10) return `${sec.toFixed(2)} s`;
  if (sec < 60) return `${sec.toFixed(1)} s`;
  if (sec < 3600) return `${Math.floor(sec / 60)}m ${pad(Math.floor(sec % 60))}s`;
  if (sec < 86400) return `${Math.floor(sec / 3600)}h ${pad(Math.floor((sec % 3600) / 60))}m`;
  return `${Math.floor(sec / 86400)}d ${Math.floor((sec % 86400) / 3600)}h`;
}

export function fmtBytes(n) {
  if (n === null || n === undefined) return '—';
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let i = 0;
  let v = n;
  while (v >= 1024 && i < units.length - 1) { v /= 1024; i++; }
  return `${i === 0 ? v : v.toFixed(v < 10 ? 1 : 0)} ${units[i]}`;
}

export function fmtNum(n) {
  if (n === null || n === undefined || Number.isNaN(n)) return '—';
  if (Math.abs(n) >= 1e6) return `${(n / 1e6).toFixed(n >= 1e7 ? 0 : 1)}M`;
  if (Math.abs(n) >= 1e4) return `${(n / 1e3).toFixed(n >= 1e5 ? 0 : 1)}k`;
  return Number.isInteger(n) ? String(n) : n.toFixed(1);
}

export const shortId = (id) => (id && id.length > 12 ? id.slice(0, 8) : id || '');

/** A relative time that the page's ticker keeps up to date. */
export function relTime(iso) {
  return h('time', { datetime: iso || '', 'data-rel': iso || '', title: fmtAbs(iso) }, fmtRel(iso));
}

/** Elapsed time since `iso`, ticking every second (see tick()). */
export function elapsed(iso, extra = {}) {
  const el = h('span', { class: 'elapsed', 'data-elapsed': iso, ...extra });
  el.textContent = fmtDur((Date.now() - new Date(iso).getTime()) / 1000);
  return el;
}

let tickN = 0;
/** Called once a second by app.js: updates ticking elapsed times every second and relative times every 5 s. */
export function tick() {
  const now = Date.now();
  for (const el of document.querySelectorAll('[data-elapsed]')) {
    const t = new Date(el.getAttribute('data-elapsed')).getTime();
    if (!Number.isNaN(t)) el.textContent = fmtDur(Math.max(0, (now - t) / 1000));
  }
  if (tickN++ % 5 === 0) {
    for (const el of document.querySelectorAll('[data-rel]')) {
      el.textContent = fmtRel(el.getAttribute('data-rel'), now);
    }
  }
}

// -------------------------------------------------------------- JSON viewer

/** A pretty-printed, syntax-coloured JSON value, built as text nodes. */
export function jsonView(value, extra = {}) {
  const pre = h('pre', { class: 'json', ...extra });
  renderJson(pre, value, 0);
  return pre;
}

function tok(cls, text) {
  const s = document.createElement('span');
  s.className = cls;
  s.textContent = text;
  return s;
}

function renderJson(out, v, depth) {
  const ind = '  '.repeat(depth + 1);
  const indEnd = '  '.repeat(depth);
  if (v === null || v === undefined) out.appendChild(tok('j-null', 'null'));
  else if (typeof v === 'string') out.appendChild(tok('j-str', JSON.stringify(v)));
  else if (typeof v === 'number') out.appendChild(tok('j-num', String(v)));
  else if (typeof v === 'boolean') out.appendChild(tok('j-bool', String(v)));
  else if (Array.isArray(v)) {
    if (v.length === 0) { out.appendChild(tok('j-punc', '[]')); return; }
    const inline = v.length <= 8 && v.every((x) => x === null || typeof x !== 'object') && JSON.stringify(v).length <= 72;
    out.appendChild(tok('j-punc', '['));
    v.forEach((x, i) => {
      out.appendChild(document.createTextNode(inline ? (i ? ' ' : '') : `\n${ind}`));
      renderJson(out, x, depth + 1);
      if (i < v.length - 1) out.appendChild(tok('j-punc', ','));
    });
    if (!inline) out.appendChild(document.createTextNode(`\n${indEnd}`));
    out.appendChild(tok('j-punc', ']'));
  } else if (typeof v === 'object') {
    const keys = Object.keys(v);
    if (keys.length === 0) { out.appendChild(tok('j-punc', '{}')); return; }
    out.appendChild(tok('j-punc', '{'));
    keys.forEach((k, i) => {
      out.appendChild(document.createTextNode(`\n${ind}`));
      out.appendChild(tok('j-key', JSON.stringify(k)));
      out.appendChild(tok('j-punc', ': '));
      renderJson(out, v[k], depth + 1);
      if (i < keys.length - 1) out.appendChild(tok('j-punc', ','));
    });
    out.appendChild(document.createTextNode(`\n${indEnd}`));
    out.appendChild(tok('j-punc', '}'));
  } else out.appendChild(document.createTextNode(String(v)));
}

// -------------------------------------------------------------- scheduling

/** Calls fn at most once per `ms`, trailing; a call while fn runs re-runs it once after. */
export function throttle(fn, ms) {
  let timer = null;
  let last = 0;
  let running = false;
  let again = false;
  const run = async () => {
    timer = null;
    if (running) { again = true; return; }
    running = true;
    last = Date.now();
    try { await fn(); } finally {
      running = false;
      if (again) { again = false; schedule(); }
    }
  };
  const schedule = () => {
    if (timer) return;
    const wait = Math.max(0, last + ms - Date.now());
    timer = setTimeout(run, wait);
  };
  schedule.cancel = () => { if (timer) clearTimeout(timer); timer = null; again = false; };
  return schedule;
}

/** Calls fn `ms` after the last call. */
export function debounce(fn, ms) {
  let timer = null;
  const d = (...a) => { if (timer) clearTimeout(timer); timer = setTimeout(() => { timer = null; fn(...a); }, ms); };
  d.cancel = () => { if (timer) clearTimeout(timer); timer = null; };
  return d;
}

/** An event id "<boot>-<n>" as [boot, n]; n is NaN when it has no number. */
export function parseEventId(id) {
  if (!id) return [null, NaN];
  const i = id.lastIndexOf('-');
  if (i < 0) return [id, NaN];
  return [id.slice(0, i), Number(id.slice(i + 1))];
}

/** Whether event id `a` comes after `b` in the same boot's stream (unknown: true). */
export function eventAfter(a, b) {
  const [ba, na] = parseEventId(a);
  const [bb, nb] = parseEventId(b);
  if (!b || ba !== bb || Number.isNaN(na) || Number.isNaN(nb)) return true;
  return na > nb;
}
