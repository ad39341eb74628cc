// What views share: the latest status (from api/status, then every `stats`
// event), navigation, and a Scope that undoes a view's subscriptions and
// timers when it leaves the screen.
import * as live from './live.js';

export const state = {
  status: null,
  readOnly: false,
};

/** Goes to `#/…`. With replace, the current history entry is rewritten (typing in a filter). */
export function navigate(hash, { replace = false } = {}) {
  if (!hash.startsWith('#')) hash = `#${hash}`;
  if (replace) {
    history.replaceState(history.state, '', hash);
    window.dispatchEvent(new Event('fw:route'));
  } else if (location.hash === hash) {
    window.dispatchEvent(new Event('fw:route'));
  } else {
    location.hash = hash;
  }
}

/** `#/tasks/<id>`: ids may hold `/` and `#`, so they are percent-encoded. */
export const taskHref = (id) => `#/tasks/${encodeURIComponent(id)}`;

export function hashFor(path, params) {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(params || {})) {
    if (v === undefined || v === null || v === '') continue;
    q.set(k, String(v));
  }
  const s = q.toString();
  return `#${path}${s ? `?${s}` : ''}`;
}

export class Scope {
  constructor() {
    this.alive = true;
    this.undo = [];
  }

  /** Subscribes to a live.js topic until the view goes. */
  on(topic, fn) {
    const off = live.on(topic, (...a) => { if (this.alive) fn(...a); });
    this.undo.push(off);
  }

  interval(fn, ms) {
    const t = setInterval(() => { if (this.alive) fn(); }, ms);
    this.undo.push(() => clearInterval(t));
  }

  /** A throttled/debounced function whose pending call is dropped when the view goes. */
  keep(fnWithCancel) {
    this.undo.push(() => fnWithCancel.cancel && fnWithCancel.cancel());
    return fnWithCancel;
  }

  add(undoFn) {
    this.undo.push(undoFn);
  }

  dispose() {
    this.alive = false;
    for (const u of this.undo.splice(0)) {
      try { u(); } catch { /* already gone */ }
    }
  }
}
