// The page's one EventSource on `api/events`, and a small hub views subscribe
// to. EventSource reconnects by itself after a network error and sends
// Last-Event-ID; if the server answered something that is not an event
// stream (a proxy's 502, a 401), the browser gives up, so we open a new one.
//
// Hub topics: every SSE event name (`task.success`, `stats`, …), `task` (every
// task.* event, with its type), `worker` (every worker.* event), and the
// page's own `conn` (state changes), `reload` (what is on screen must be read
// again: reconnected, new boot, or resync).

const TASK_EVENTS = ['task.queued', 'task.scheduled', 'task.started', 'task.retrying', 'task.requeued',
  'task.success', 'task.failure', 'task.cancelled', 'task.refused', 'task.forgotten',
  'task.restored']; // task.restored: not in docs/gui.md, sent by the backend (journal replay)
const WORKER_EVENTS = ['worker.joined', 'worker.draining', 'worker.inactive', 'worker.left', 'worker.forgotten'];

const topics = new Map();
let es = null;
let reopenTimer = null;
let reopenDelay = 2000;
let everDown = false;

export const conn = {
  state: 'connecting', // connecting | live | down
  boot: null,
  lastEventId: null,
  helloSeen: false,
};

export function on(topic, fn) {
  if (!topics.has(topic)) topics.set(topic, new Set());
  topics.get(topic).add(fn);
  return () => topics.get(topic)?.delete(fn);
}

function emit(topic, ...args) {
  const set = topics.get(topic);
  if (!set) return;
  for (const fn of [...set]) {
    try {
      fn(...args);
    } catch (err) {
      // One listener's bug must not starve the others; still report it.
      queueMicrotask(() => { throw err; });
    }
  }
}

function setState(state) {
  if (conn.state === state) return;
  conn.state = state;
  emit('conn', state);
}

function parse(e) {
  try { return JSON.parse(e.data); } catch { return null; }
}

// The last task events, so that a view whose fetch raced with them can apply
// the ones its answer did not include yet (see eventAfter in dom.js).
const RECENT = 2000;
const recent = [];
function remember(d, id, type) {
  recent.push({ d, id, type });
  if (recent.length > RECENT) recent.splice(0, recent.length - RECENT);
}

/** Task events received, oldest first: [{d, id, type}]. */
export function recentTaskEvents() {
  return recent;
}

/** The newest status an event gave for task `id`, or null. */
export function latestStatus(id) {
  for (let i = recent.length - 1; i >= 0; i--) {
    const r = recent[i];
    if (r.d.task_id === id && r.d.status) return r.d.status;
  }
  return null;
}

export function start() {
  if (es) return;
  open();
}

function open() {
  reopenTimer = null;
  es = new EventSource('api/events');
  es.addEventListener('open', () => {
    reopenDelay = 2000;
    const wasDown = conn.state === 'down';
    setState('live');
    if (wasDown) emit('reload', 'reconnected');
  });
  es.addEventListener('error', () => {
    // Also fires when a proxy cuts the stream: only a closed or reconnecting
    // source means "down".
    if (es.readyState === EventSource.OPEN) return;
    everDown = true;
    setState('down');
    if (es.readyState === EventSource.CLOSED && !reopenTimer) {
      es.close();
      reopenTimer = setTimeout(open, reopenDelay);
      reopenDelay = Math.min(reopenDelay * 2, 30000);
    }
  });
  es.addEventListener('hello', (e) => {
    const d = parse(e) || {};
    const newBoot = conn.boot !== null && d.boot !== conn.boot;
    const first = !conn.helloSeen;
    conn.helloSeen = true;
    conn.boot = d.boot ?? conn.boot;
    conn.lastEventId = d.last_event_id ?? conn.lastEventId;
    setState('live');
    emit('hello', d, first);
    if (!first && (newBoot || everDown)) emit('reload', newBoot ? 'restarted' : 'reconnected');
  });
  es.addEventListener('resync', (e) => {
    const d = parse(e) || {};
    if (d.last_event_id) conn.lastEventId = d.last_event_id;
    emit('resync', d);
    emit('reload', 'resync');
  });
  es.addEventListener('manifest.reloaded', (e) => {
    const d = parse(e);
    if (e.lastEventId) conn.lastEventId = e.lastEventId;
    if (d) emit('manifest', d);
  });
  es.addEventListener('stats', (e) => {
    const d = parse(e);
    if (d) emit('stats', d);
  });
  for (const type of TASK_EVENTS) {
    es.addEventListener(type, (e) => {
      const d = parse(e);
      if (!d) return;
      if (e.lastEventId) conn.lastEventId = e.lastEventId;
      remember(d, e.lastEventId, type);
      emit(type, d, e.lastEventId, type);
      emit('task', d, e.lastEventId, type);
    });
  }
  for (const type of WORKER_EVENTS) {
    es.addEventListener(type, (e) => {
      const d = parse(e);
      if (!d) return;
      if (e.lastEventId) conn.lastEventId = e.lastEventId;
      emit(type, d, e.lastEventId, type);
      emit('worker', d, e.lastEventId, type);
    });
  }
}

/** Resolves on the first `hello`, or after `ms` (the page then starts without it). */
export function firstHello(ms) {
  if (conn.helloSeen) return Promise.resolve(true);
  return new Promise((resolve) => {
    const off = on('hello', () => { off(); clearTimeout(t); resolve(true); });
    const t = setTimeout(() => { off(); resolve(false); }, ms);
  });
}

/** Page-local topics (`theme`) go through the same hub. */
export function emitLocal(topic, ...args) {
  emit(topic, ...args);
}
