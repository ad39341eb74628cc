#!/usr/bin/env node
// A stand-in for the control plane's GUI server, for working on gui/ without
// the Rust backend: serves gui/ with the real CSP and fakes every endpoint of
// docs/gui.md with a small simulated queue (tasks go queued -> running ->
// success/failure/retrying, scheduled tasks start at their eta, workers come
// and go), an SSE stream with ids that honours Last-Event-ID, and stats every
// second. Plain Node 20, no dependencies.
//
//   node tests/browser/mock-server.mjs [--port 8099] [--host 127.0.0.1]
//        [--prefix /fw/] [--token SECRET] [--read-only] [--traffic 1.2] [--seed-tasks 400]
//        [--data-dir DIR]   (keeps the tasks and the history in DIR/mock-state.json, so a
//                            kill -9 and a restart find them again, as with a journal)
//
// It prints `… GUI on http://HOST:PORT/PREFIX …` on stderr once it listens.
// POST /__mock/restart {"down_ms": 3000} drops every connection, stops
// listening for that long and comes back as a new boot (as a control plane
// killed and restarted on the same data dir would: tasks kept, running ones
// requeued, counters reset, the event stream answers `resync`).

import http from 'node:http';
import fs from 'node:fs';
import path from 'node:path';
import crypto from 'node:crypto';
import { fileURLToPath } from 'node:url';

// ------------------------------------------------------------------ options
const argv = process.argv.slice(2);
const opt = (name, dflt) => {
  const i = argv.indexOf(`--${name}`);
  if (i < 0) return dflt;
  const v = argv[i + 1];
  return v === undefined || v.startsWith('--') ? true : v;
};
const HOST = opt('host', '127.0.0.1');
let PORT = Number(opt('port', 8099));
let PREFIX = String(opt('prefix', '/'));
if (!PREFIX.startsWith('/')) PREFIX = `/${PREFIX}`;
if (!PREFIX.endsWith('/')) PREFIX += '/';
const TOKEN = opt('token', null);
const READ_ONLY = opt('read-only', false) === true;
const TRAFFIC = Number(opt('traffic', 1.2)); // new tasks per second, on average
const SEED = Number(opt('seed-tasks', 400));
const DATA_DIR = opt('data-dir', null);
const STATE_FILE = DATA_DIR ? path.join(String(DATA_DIR), 'mock-state.json') : null;
const GUI_DIR = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../gui');
const CSP = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'";
const PRIORITIES = ['critical', 'high', 'normal', 'low'];
const LIVE = ['queued', 'scheduled', 'running', 'retrying'];
const STATES = [...LIVE, 'success', 'failure', 'cancelled'];
const MAX_KEPT = 3000;

// ------------------------------------------------------------------ helpers
const now = () => Date.now();
const iso = (ms) => (ms === null || ms === undefined ? null : new Date(ms).toISOString());
const rnd = (a, b) => a + Math.random() * (b - a);
const pick = (arr) => arr[Math.floor(Math.random() * arr.length)];
const trunc = (s, n) => (s === null || s === undefined ? null : s.length > n ? `${s.slice(0, n - 1)}…` : s);
const uuid = () => crypto.randomUUID();
const newBoot = () => crypto.randomBytes(3).toString('hex');

function weighted(pairs) {
  const total = pairs.reduce((a, [, w]) => a + w, 0);
  let r = Math.random() * total;
  for (const [v, w] of pairs) { r -= w; if (r <= 0) return v; }
  return pairs[pairs.length - 1][0];
}

const PY_TB = (fn, exc) => `Traceback (most recent call last):\n  File "/srv/app/tasks.py", line 41, in ${fn}\n    return client.call(payload)\n  File "/srv/app/client.py", line 112, in call\n    raise ${exc}\n${exc}`;

// ----------------------------------------------------- the task types
// run(args, kwargs, attempt) -> {dur (s), ok, result | error/exit/task_error/stderr}
const REGISTERED = {
  add: {
    doc: 'Add numbers', runs: 'python3 -c <inline>', mode: 'oneshot', priority: 'normal', timeout: null, retries: 0,
    run(args) {
      if (!args.every((a) => typeof a === 'number')) {
        return { dur: rnd(0.02, 0.06), ok: false, exit: { code: 1 }, task_error: { type: 'TypeError', message: 'unsupported operand type(s) for +', traceback: PY_TB('add', "TypeError: unsupported operand type(s) for +: 'int' and 'str'") }, error: 'failed: TypeError: unsupported operand type(s) for + (exit code 1)', stderr: '' };
      }
      return { dur: rnd(0.03, 0.25), ok: true, result: args.reduce((a, b) => a + b, 0) };
    },
  },
  sleep: {
    doc: 'Sleep for N seconds (default 30)', runs: 'sleep 30', mode: 'oneshot', priority: 'normal', timeout: 60, retries: 0,
    run(args) { return { dur: Number(args[0]) > 0 ? Number(args[0]) : 30, ok: true, result: null }; },
  },
  boom: {
    doc: 'Fails on purpose (exit 3)', runs: 'sh -c "echo oops >&2; exit 3"', mode: 'oneshot', priority: 'normal', timeout: null, retries: 0,
    run() { return { dur: rnd(0.01, 0.04), ok: false, exit: { code: 3 }, error: 'failed (exit code 3)', stderr: 'oops\n' }; },
  },
  'images.resize': {
    doc: 'Resize an image to the sizes of the catalogue', runs: 'python tasks.py:images.resize', mode: 'pool', priority: 'normal', timeout: 300, retries: 2,
    run(args) {
      if (Math.random() < 0.06) {
        return { dur: rnd(0.2, 1), ok: false, exit: { code: 1 }, task_error: { type: 'MemoryError', message: `image ${args[0]} too large to decode`, traceback: PY_TB('resize', 'MemoryError') }, error: `failed: MemoryError: image ${args[0]} too large to decode (exit code 1)`, stderr: `decoding ${args[0]}\nwarning: 48 MiB of pixels\n` };
      }
      return { dur: rnd(0.3, 2.8), ok: true, result: { source: args[0], sizes: [[320, 240], [1024, 768]], bytes: Math.floor(rnd(2e4, 4e5)) } };
    },
  },
  'email.send': {
    doc: 'Send a transactional email', runs: 'python tasks.py:email.send', mode: 'pool', priority: 'high', timeout: 30, retries: 3,
    run(args, kwargs) {
      if (Math.random() < 0.07) {
        return { dur: rnd(0.1, 0.6), ok: false, exit: { code: 1 }, task_error: { type: 'SMTPServerDisconnected', message: 'Connection unexpectedly closed', traceback: PY_TB('send', 'smtplib.SMTPServerDisconnected: Connection unexpectedly closed') }, error: 'failed: SMTPServerDisconnected: Connection unexpectedly closed (exit code 1)', stderr: `connecting to smtp.internal:587\n` };
      }
      return { dur: rnd(0.04, 0.5), ok: true, result: { to: kwargs.to || args[0], message_id: `<${crypto.randomBytes(6).toString('hex')}@mail>` } };
    },
  },
  'reports.daily': {
    doc: 'Build the daily report', runs: 'scripts/report.sh', mode: 'oneshot', priority: 'low', timeout: 600, retries: 0,
    run() { return { dur: rnd(2, 7), ok: true, result: { rows: Math.floor(rnd(1000, 90000)), file: 'reports/daily.csv' } }; },
  },
  flaky: {
    doc: 'Fails until attempt 3, then succeeds', runs: 'python3 examples/flaky.py', mode: 'oneshot', priority: 'normal', timeout: null, retries: 3,
    run(args, kwargs, attempt) {
      if (attempt < 3) return { dur: rnd(0.05, 0.2), ok: false, exit: { code: 1 }, task_error: { type: 'NotYet', message: `attempt ${attempt} < 3`, traceback: '' }, error: `failed: NotYet: attempt ${attempt} < 3 (exit code 1)`, stderr: '' };
      return { dur: rnd(0.05, 0.2), ok: true, result: { succeeded_on_attempt: attempt } };
    },
  },
};

// ------------------------------------------------------------------ state
let boot = newBoot();
let eventN = 0;
let ring = []; // [{id, n, type, data}]
const RING = 10000;
const sseClients = new Set();
const tasks = new Map(); // id -> task, in submission order
const startedAt = now();
let bootAt = now();
let totals = { accepted: 0, started: 0, retries: 0, success: 0, failure: 0, cancelled: 0 };
let rateLog = []; // [{t, kind}]
let evictions = 0;
const secondHist = []; // 600 entries
const minuteHist = new Map(); // minute start ms -> counts
let curSecond = { accepted: 0, success: 0, failure: 0, cancelled: 0 };

const workers = [
  { id: 'control-plane', address: 'tcp://127.0.0.1:5555', status: 'local', capacity: 2, tasks_done: 0, last_seen: null, registered_at: null, is_control_plane: true, tasks: Object.keys(REGISTERED) },
  { id: 'w1', address: 'tcp://10.0.0.11:41822', status: 'active', capacity: 3, tasks_done: 0, last_seen: now(), registered_at: now() - 3600e3, is_control_plane: false, tasks: ['images.resize', 'reports.daily', 'email.send', 'add'] },
  { id: 'w2', address: 'tcp://10.0.0.12:39210', status: 'active', capacity: 2, tasks_done: 0, last_seen: now(), registered_at: now() - 1800e3, is_control_plane: false, tasks: ['email.send', 'flaky', 'images.resize'] },
  { id: 'gpu-1', address: 'tcp://10.0.0.20:40001', status: 'active', capacity: 1, tasks_done: 0, last_seen: now(), registered_at: now() - 600e3, is_control_plane: false, tasks: ['images.resize'] },
];

const workerLoad = (w) => [...tasks.values()].filter((t) => t.status === 'running' && t.worker === w.id).length;

// ------------------------------------------------------------------ events
function emit(type, data, { withId = true } = {}) {
  let id = null;
  if (withId) {
    eventN += 1;
    id = `${boot}-${eventN}`;
    ring.push({ id, n: eventN, type, data });
    if (ring.length > RING) ring.splice(0, ring.length - RING);
  }
  const frame = `${id ? `id: ${id}\n` : ''}event: ${type}\ndata: ${JSON.stringify(data)}\n\n`;
  for (const c of sseClients) c.write(frame);
}

const lastEventId = () => `${boot}-${eventN}`;

function inputText(t) {
  const parts = (t.args || []).map((a) => JSON.stringify(a));
  for (const [k, v] of Object.entries(t.kwargs || {})) parts.push(`${k}=${JSON.stringify(v)}`);
  return trunc(parts.join(', '), 200);
}

function taskEvent(type, t, from, extra = {}) {
  emit(type, { task_id: t.task_id, name: t.name, priority: t.priority, status: t.status, from, at: iso(now()), ...extra });
}

function tl(t, what, detail, at = now()) {
  t.timeline.push({ at: iso(at), what, detail: detail ?? null });
}

function countRate(kind) {
  rateLog.push({ t: now(), kind });
  if (kind in curSecond) curSecond[kind] += 1;
  const m = Math.floor(now() / 60000) * 60000;
  const row = minuteHist.get(m) || { accepted: 0, success: 0, failure: 0, cancelled: 0, retried: 0 };
  row[kind] = (row[kind] || 0) + 1;
  minuteHist.set(m, row);
}

// ------------------------------------------------------------- lifecycle
function submit({ name, args = [], kwargs = {}, priority, countdown, eta, retry_of = null, at = now(), quiet = false }) {
  const reg = REGISTERED[name];
  const t = {
    task_id: uuid(), name, status: 'queued', priority: priority || reg.priority, args, kwargs,
    submitted_at: at, eta: null, started_at: null, finished_at: null, result: null, error: null,
    attempts: [], callback: null, retry_of, retried_by: null, worker: null, timeline: [],
    queued_at: at, runEnd: null, plan: null, nextAt: null, stopping: false,
  };
  let runAt = null;
  if (countdown !== undefined && countdown !== null) runAt = at + Number(countdown) * 1000;
  else if (eta) runAt = Date.parse(eta);
  tl(t, 'submitted', `priority ${t.priority}${retry_of ? `, retry of ${retry_of}` : ''}`, at);
  if (runAt && runAt > at) {
    t.status = 'scheduled';
    t.eta = runAt;
    tl(t, 'scheduled', `for ${iso(runAt)}`, at);
  }
  tasks.set(t.task_id, t);
  if (!quiet) {
    totals.accepted += 1;
    countRate('accepted');
    if (t.status === 'scheduled') taskEvent('task.scheduled', t, null, { input: inputText(t), eta: iso(t.eta) });
    else taskEvent('task.queued', t, null, { input: inputText(t), retry_of });
  }
  return t;
}

function start(t, w) {
  const from = t.status;
  const attempt = t.attempts.length + 1;
  t.status = 'running';
  t.worker = w.id;
  if (!t.started_at) t.started_at = now();
  t.attemptStart = now();
  t.pid = 1000 + Math.floor(Math.random() * 60000);
  t.plan = REGISTERED[t.name].run(t.args, t.kwargs, attempt);
  t.runEnd = now() + t.plan.dur * 1000;
  totals.started += 1;
  tl(t, `attempt ${attempt} started`, `on ${w.id}, pid ${t.pid}`);
  taskEvent('task.started', t, from, { attempt, worker: w.id });
}

function endAttempt(t, status, extra) {
  const a = {
    attempt: t.attempts.length + 1, status, started_at: iso(t.attemptStart), finished_at: iso(now()),
    duration_ms: Math.round((now() - t.attemptStart) * 1000) / 1000, pid: t.pid, worker: t.worker, ...extra,
  };
  t.attempts.push(a);
  const w = workers.find((x) => x.id === t.worker);
  if (w) w.tasks_done += 1;
  return a;
}

function finish(t) {
  const p = t.plan;
  const reg = REGISTERED[t.name];
  const attempt = t.attempts.length + 1;
  if (t.stopping) {
    endAttempt(t, 'cancelled', { exit: { signal: 15 }, error: 'cancelled', stderr: p.stderr || '' });
    final(t, 'cancelled', { error: 'cancelled' });
    return;
  }
  if (p.ok) {
    endAttempt(t, 'succeeded', { exit: { code: 0 }, stderr: p.stderr || '' });
    t.result = p.result;
    tl(t, `attempt ${attempt} succeeded`, `after ${fmtMs(p.dur * 1000)}`);
    final(t, 'success', { result: trunc(JSON.stringify(p.result), 100) });
    return;
  }
  endAttempt(t, 'failed', { exit: p.exit, task_error: p.task_error, error: p.error, stderr: p.stderr || '' });
  tl(t, `attempt ${attempt} failed`, `${p.error}, after ${fmtMs(p.dur * 1000)}`);
  if (attempt <= reg.retries) {
    const delay = 1 * 2 ** (attempt - 1) + rnd(0, 0.5);
    t.status = 'retrying';
    t.nextAt = now() + delay * 1000;
    t.error = p.error;
    totals.retries += 1;
    countRate('retried');
    tl(t, 'retrying', `attempt ${attempt + 1} in ${delay.toFixed(1)} s`);
    taskEvent('task.retrying', t, 'running', { attempt, error: p.error, delay_seconds: delay });
    return;
  }
  final(t, 'failure', { error: p.error });
}

function final(t, status, extra) {
  const from = t.status;
  t.status = status;
  t.finished_at = now();
  t.runEnd = null;
  if (extra.error !== undefined) t.error = status === 'success' ? null : extra.error;
  if (status === 'success') t.error = null;
  totals[status] += 1;
  countRate(status);
  tl(t, status, status === 'success' ? `result ${trunc(JSON.stringify(t.result), 80)}` : t.error);
  const dur = t.started_at ? (t.finished_at - t.started_at) / 1000 : null;
  taskEvent(`task.${status}`, t, from, { error: status === 'success' ? null : t.error, result: status === 'success' ? trunc(JSON.stringify(t.result), 100) : null, attempts: t.attempts.length, duration_seconds: dur });
}

function cancel(t) {
  if (!LIVE.includes(t.status)) return { code: 409, body: { error: `task ${t.task_id} has already finished (${t.status}): there is nothing to cancel` } };
  if (t.status === 'running') {
    if (!t.stopping) {
      t.stopping = true;
      t.runEnd = Math.min(t.runEnd, now() + 400); // SIGTERM, the process exits
      tl(t, 'cancel requested', 'SIGTERM sent to the process group');
    }
    return { code: 200, body: { task_id: t.task_id, cancelled: true, status: 'running' } };
  }
  if (t.status === 'retrying') {
    t.attemptStart = t.finished_at || now();
    endAttempt(t, 'cancelled', { error: 'cancelled', pid: undefined });
  }
  final(t, 'cancelled', { error: 'cancelled' });
  return { code: 200, body: { task_id: t.task_id, cancelled: true, status: 'cancelled' } };
}

function retry(t) {
  if (LIVE.includes(t.status)) return { code: 409, body: { error: `task ${t.task_id} is ${t.status}: only a finished task can be retried` } };
  const n = submit({ name: t.name, args: t.args, kwargs: t.kwargs, priority: t.priority, retry_of: t.task_id });
  t.retried_by = n.task_id;
  return { code: 201, body: { task_id: n.task_id, retry_of: t.task_id, status: n.status } };
}

function remove(t) {
  if (LIVE.includes(t.status)) return { code: 409, body: { error: `task ${t.task_id} is ${t.status}: cancel it first` } };
  tasks.delete(t.task_id);
  emit('task.forgotten', { task_ids: [t.task_id], reason: 'deleted', at: iso(now()) });
  return { code: 200, body: { task_id: t.task_id, deleted: true } };
}

const fmtMs = (ms) => (ms < 1000 ? `${ms.toFixed(1)} ms` : `${(ms / 1000).toFixed(2)} s`);

// --------------------------------------------------------------- the loop
function tickEngine() {
  const t0 = now();
  for (const t of tasks.values()) {
    if (t.status === 'scheduled' && t.eta <= t0) {
      t.status = 'queued';
      t.queued_at = t0;
      tl(t, 'due', 'queued');
      taskEvent('task.queued', t, 'scheduled');
    } else if (t.status === 'retrying' && t.nextAt <= t0) {
      t.status = 'queued';
      t.queued_at = t0;
      taskEvent('task.queued', t, 'retrying');
    } else if (t.status === 'running' && t.runEnd <= t0) {
      finish(t);
    }
  }
  // Dispatch: priority first, then first in first out.
  const queued = [...tasks.values()].filter((t) => t.status === 'queued')
    .sort((a, b) => PRIORITIES.indexOf(a.priority) - PRIORITIES.indexOf(b.priority) || a.queued_at - b.queued_at);
  const loads = new Map(workers.map((w) => [w.id, workerLoad(w)]));
  for (const t of queued) {
    // Subworkers first: the control plane hands tasks out before it runs any itself.
    const w = [...workers.filter((x) => !x.is_control_plane), ...workers.filter((x) => x.is_control_plane)]
      .find((x) => (x.status === 'active' || x.status === 'local') && x.tasks.includes(t.name) && loads.get(x.id) < x.capacity);
    if (!w) continue;
    loads.set(w.id, loads.get(w.id) + 1);
    start(t, w);
  }
  for (const w of workers) if (w.status === 'active') w.last_seen = t0;
  evict();
}

function evict() {
  const finished = [...tasks.values()].filter((t) => !LIVE.includes(t.status));
  const over = finished.length - MAX_KEPT;
  if (over <= 0) return;
  finished.sort((a, b) => a.finished_at - b.finished_at);
  const gone = finished.slice(0, over).map((t) => t.task_id);
  for (const id of gone) tasks.delete(id);
  evictions += gone.length;
  emit('task.forgotten', { task_ids: gone, reason: 'evicted', at: iso(now()) });
}

// Background traffic: a rate that swings over a few minutes, bursts now and then.
let trafficPhase = 0;
function traffic() {
  if (TRAFFIC <= 0) return;
  trafficPhase += 0.25;
  const rate = TRAFFIC * (1 + 0.7 * Math.sin(trafficPhase / 45));
  let n = 0;
  const lambda = rate * 0.25;
  // Poisson by inversion, small lambda
  let p = Math.exp(-lambda);
  let s = p;
  const u = Math.random();
  while (u > s && n < 20) { n += 1; p *= lambda / n; s += p; }
  if (Math.random() < 0.004) n += Math.floor(rnd(15, 40)); // a burst
  for (let i = 0; i < n; i++) submit(randomTask());
}

function randomTask() {
  const name = weighted([['email.send', 34], ['images.resize', 30], ['add', 14], ['reports.daily', 6], ['flaky', 6], ['boom', 2]]);
  const prio = Math.random() < 0.08 ? pick(PRIORITIES) : undefined;
  switch (name) {
    case 'email.send': return { name, args: [`${pick(['ann', 'bob', 'chen', 'dara', 'eve', 'femi'])}@example.com`], kwargs: { template: pick(['welcome', 'receipt', 'reset-password']), password: 'hunter2' }, priority: prio };
    case 'images.resize': return { name, args: [`s3://media/uploads/${crypto.randomBytes(4).toString('hex')}.jpg`], kwargs: { quality: 82 }, priority: prio };
    case 'add': return { name, args: [Math.floor(rnd(0, 100)), Math.floor(rnd(0, 100))], priority: prio };
    case 'reports.daily': return Math.random() < 0.5 ? { name, args: [], kwargs: { day: new Date().toISOString().slice(0, 10) }, countdown: Math.floor(rnd(20, 180)) } : { name, args: [], kwargs: { day: new Date().toISOString().slice(0, 10) } };
    default: return { name, args: [], kwargs: {}, priority: prio };
  }
}

function seedHistory() {
  // 24 h of minutes (some empty, absent), 10 min of seconds.
  const m0 = Math.floor(now() / 60000) * 60000;
  for (let i = 24 * 60; i >= 1; i--) {
    if (Math.random() < 0.04) continue;
    const wave = 40 + 30 * Math.sin(i / 180) + 10 * Math.sin(i / 17);
    const accepted = Math.max(0, Math.round(wave + rnd(-6, 6)));
    const failure = Math.round(accepted * rnd(0.01, 0.08));
    minuteHist.set(m0 - i * 60000, { accepted, success: Math.max(0, accepted - failure - Math.round(rnd(0, 2))), failure, cancelled: Math.random() < 0.05 ? 1 : 0, retried: Math.round(failure / 2) });
  }
  const s0 = Math.floor(now() / 1000) * 1000;
  let queued = 2;
  let running = 3;
  for (let i = 600; i >= 1; i--) {
    const a = Math.max(0, Math.round(TRAFFIC * (1 + 0.6 * Math.sin(i / 70)) + rnd(-1, 1.2)));
    queued = Math.max(0, Math.min(30, queued + Math.round(rnd(-1.3, 1.2)) + (i % 173 === 0 ? 20 : 0)));
    running = Math.max(0, Math.min(6, running + Math.round(rnd(-1, 1))));
    secondHist.push({ t: iso(s0 - i * 1000), accepted: a, success: Math.max(0, a - (Math.random() < 0.06 ? 1 : 0)), failure: Math.random() < 0.06 ? 1 : 0, cancelled: 0, queued, running });
  }
}

function seedTasks() {
  // Finished tasks of the last two hours, as a journal replay would bring back.
  const t0 = now() - 2 * 3600e3;
  for (let i = 0; i < SEED; i++) {
    const at = t0 + (i / SEED) * (2 * 3600e3 - 30e3);
    const spec = randomTask();
    delete spec.countdown;
    const t = submit({ ...spec, at, quiet: true });
    const w = pick(workers.filter((x) => x.tasks.includes(t.name)));
    let attempt = 0;
    let clock = at + rnd(5, 400);
    t.started_at = clock;
    for (;;) {
      attempt += 1;
      const p = REGISTERED[t.name].run(t.args, t.kwargs, attempt);
      const a = { attempt, status: p.ok ? 'succeeded' : 'failed', started_at: iso(clock), finished_at: iso(clock + p.dur * 1000), duration_ms: Math.round(p.dur * 1e6) / 1000, pid: 1000 + Math.floor(Math.random() * 60000), worker: w.id, exit: p.ok ? { code: 0 } : p.exit, stderr: p.stderr || '' };
      if (!p.ok) { a.error = p.error; if (p.task_error) a.task_error = p.task_error; }
      t.attempts.push(a);
      tl(t, `attempt ${attempt} started`, `on ${w.id}, pid ${a.pid}`, clock);
      clock += p.dur * 1000;
      w.tasks_done += 1;
      if (p.ok) { t.status = 'success'; t.result = p.result; break; }
      tl(t, `attempt ${attempt} failed`, p.error, clock);
      if (attempt > REGISTERED[t.name].retries) { t.status = 'failure'; t.error = p.error; break; }
      clock += 1000 * attempt;
    }
    t.worker = w.id;
    t.finished_at = clock;
    if (t.status === 'failure' && Math.random() < 0.1) { t.status = 'cancelled'; t.error = 'cancelled'; }
    totals[t.status] += 1;
    totals.accepted += 1;
    tl(t, t.status, t.status === 'success' ? `result ${trunc(JSON.stringify(t.result), 80)}` : t.error, clock);
  }
}

function secondTick() {
  const counts = statusCounts();
  secondHist.push({ t: iso(Math.floor(now() / 1000) * 1000 - 1000), ...curSecond, queued: counts.queued, running: counts.running });
  if (secondHist.length > 600) secondHist.splice(0, secondHist.length - 600);
  curSecond = { accepted: 0, success: 0, failure: 0, cancelled: 0 };
  const cutoff = now() - 24 * 3600e3;
  for (const k of minuteHist.keys()) if (k < cutoff) minuteHist.delete(k);
  rateLog = rateLog.filter((r) => r.t > now() - 60e3);
  emit('stats', status(), { withId: false });
  save();
}

// ------------------------------------------------------------------ views
function statusCounts() {
  const c = Object.fromEntries(STATES.map((s) => [s, 0]));
  for (const t of tasks.values()) c[t.status] += 1;
  return c;
}

function status() {
  const by = statusCounts();
  const qbp = Object.fromEntries(PRIORITIES.map((p) => [p, 0]));
  for (const t of tasks.values()) if (t.status === 'queued') qbp[t.priority] += 1;
  const sub = workers.filter((w) => !w.is_control_plane);
  const rate = (k) => rateLog.filter((r) => r.kind === k).length;
  const finished = by.success + by.failure + by.cancelled;
  return {
    worker_id: 'control-plane', running: true, version: '0.1.0-mock',
    base_address: 'tcp://127.0.0.1:5555', discovery_address: 'tcp://127.0.0.1:5550',
    started_at: iso(bootAt), uptime_seconds: (now() - bootAt) / 1000,
    subworkers: { total: sub.length, active: sub.filter((w) => w.status === 'active').length, draining: sub.filter((w) => w.status === 'draining').length, inactive: sub.filter((w) => w.status === 'inactive').length },
    tasks: {
      queued: by.queued, active: by.queued + by.scheduled + by.running + by.retrying, cached_results: finished,
      by_state: by, queued_by_priority: qbp, totals: { ...totals },
    },
    rates: { window_seconds: 60, accepted: rate('accepted'), success: rate('success'), failure: rate('failure'), cancelled: rate('cancelled') },
    cache: cacheInfo(),
    journal: { enabled: true, commits: eventN + 1000, bytes: 90112 + eventN * 310 },
    gui: { read_only: READ_ONLY, auth: !!TOKEN, redacted_keys: ['password'], sse_clients: sseClients.size },
    timestamp: iso(now()),
  };
}

function cacheInfo() {
  const fin = [...tasks.values()].filter((t) => !LIVE.includes(t.status));
  const bytes = fin.length * 410;
  return {
    max_size: 10000, current_size: fin.length, utilization_percent: Math.round((fin.length / 10000) * 1000) / 10, ttl_seconds: 3600,
    by_status: { success: fin.filter((t) => t.status === 'success').length, failure: fin.filter((t) => t.status === 'failure').length, cancelled: fin.filter((t) => t.status === 'cancelled').length },
    bytes, max_bytes: 268435456, evictions,
  };
}

const redact = (kw) => Object.fromEntries(Object.entries(kw || {}).map(([k, v]) => [k, k === 'password' ? '***' : v]));

function listItem(t) {
  const r = { ...t, kwargs: redact(t.kwargs) };
  return {
    task_id: t.task_id, name: t.name, status: t.status, priority: t.priority, input: inputText(r),
    result: t.status === 'success' ? trunc(JSON.stringify(t.result), 100) : null,
    error: trunc(t.error, 300),
    submitted_at: iso(t.submitted_at), eta: iso(t.eta), started_at: iso(t.started_at), completed_at: iso(t.finished_at),
    duration_seconds: t.started_at && t.finished_at ? (t.finished_at - t.started_at) / 1000 : null,
    attempts: t.attempts.length, worker: t.worker, retry_of: t.retry_of, retried_by: t.retried_by,
    cached_at: iso(t.finished_at), last_accessed: null,
  };
}

const shq = (s) => (/^[A-Za-z0-9_./:@=-]+$/.test(s) ? s : `'${s.replace(/'/g, "'\\''")}'`);

function detail(t) {
  const cli = ['fastworker', 'submit', t.name, ...t.args.map((a) => shq(typeof a === 'string' ? a : JSON.stringify(a))),
    ...Object.entries(redact(t.kwargs)).map(([k, v]) => `--kwarg ${shq(`${k}=${JSON.stringify(v)}`)}`), '--priority', t.priority].join(' ');
  return {
    task: {
      task_id: t.task_id, name: t.name, status: t.status, priority: t.priority, args: t.args, kwargs: redact(t.kwargs),
      submitted_at: iso(t.submitted_at), eta: iso(t.eta), started_at: iso(t.started_at), finished_at: iso(t.finished_at),
      result: t.result, error: t.error, attempts: t.attempts, callback: t.callback,
    },
    retry_of: t.retry_of, retried_by: t.retried_by, timeline: t.timeline, cli,
  };
}

class BadRequest extends Error {}

function parseWhen(v, what) {
  const m = /^(\d+)(s|m|h|d)$/.exec(v);
  if (m) return now() - Number(m[1]) * { s: 1e3, m: 60e3, h: 3600e3, d: 86400e3 }[m[2]];
  const t = Date.parse(v);
  if (Number.isNaN(t)) throw new BadRequest(`${what}: "${v}" is neither an RFC 3339 time nor an age like 15m, 2h, 1d`);
  return t;
}

function filterTasks(q, { ignoreStatus = false } = {}) {
  const list = (k) => (q.get(k) ? q.get(k).split(',').map((s) => s.trim()).filter(Boolean) : null);
  const st = ignoreStatus ? null : list('status');
  if (st) for (const s of st) if (!STATES.includes(s)) throw new BadRequest(`status: unknown state "${s}"; states are ${STATES.join(', ')}`);
  const names = list('name');
  const prios = list('priority');
  if (prios) for (const p of prios) if (!PRIORITIES.includes(p)) throw new BadRequest(`priority: unknown priority "${p}"; priorities are ${PRIORITIES.join(', ')}`);
  const worker = q.get('worker');
  const text = (q.get('q') || '').toLowerCase();
  const since = q.get('since') ? parseWhen(q.get('since'), 'since') : null;
  const until = q.get('until') ? parseWhen(q.get('until'), 'until') : null;
  return [...tasks.values()].filter((t) => (!st || st.includes(t.status)) && (!names || names.includes(t.name))
    && (!prios || prios.includes(t.priority)) && (!worker || t.worker === worker)
    && (since === null || t.submitted_at >= since) && (until === null || t.submitted_at < until)
    && (!text || `${t.task_id} ${t.name} ${inputText(t)} ${t.error || ''} ${JSON.stringify(t.result)}`.toLowerCase().includes(text)));
}

function sortTasks(arr, sort) {
  const nullsLast = (a, b, f) => (f(a) === null) - (f(b) === null) || (f(b) ?? 0) - (f(a) ?? 0);
  switch (sort || 'newest') {
    case 'newest': return arr.sort((a, b) => b.submitted_at - a.submitted_at);
    case 'oldest': return arr.sort((a, b) => a.submitted_at - b.submitted_at);
    case 'finished': return arr.sort((a, b) => nullsLast(a, b, (t) => t.finished_at));
    case 'duration': return arr.sort((a, b) => nullsLast(a, b, (t) => (t.started_at && t.finished_at ? t.finished_at - t.started_at : null)));
    default: throw new BadRequest(`sort: "${sort}" is not one of newest, oldest, finished, duration`);
  }
}

function listTasks(q) {
  const limit = q.get('limit') ? Number(q.get('limit')) : 50;
  if (!Number.isInteger(limit) || limit < 1 || limit > 1000) throw new BadRequest('limit: a number from 1 to 1000');
  let offset = 0;
  if (q.get('cursor')) {
    offset = Number(Buffer.from(q.get('cursor'), 'base64url').toString());
    if (!Number.isInteger(offset) || offset < 0) throw new BadRequest('cursor: not a cursor this list gave; start from the first page');
  }
  const rows = sortTasks(filterTasks(q), q.get('sort'));
  const counts = Object.fromEntries(STATES.map((s) => [s, 0]));
  for (const t of filterTasks(q, { ignoreStatus: true })) counts[t.status] += 1;
  const page = rows.slice(offset, offset + limit);
  return {
    tasks: page.map(listItem), total: rows.length, counts, limit, offset,
    next_cursor: offset + limit < rows.length ? Buffer.from(String(offset + limit)).toString('base64url') : null,
    last_event_id: lastEventId(),
  };
}

function queues() {
  const out = {};
  const t0 = now();
  for (const p of PRIORITIES) {
    const qs = [...tasks.values()].filter((t) => t.status === 'queued' && t.priority === p).sort((a, b) => a.queued_at - b.queued_at);
    out[p] = { count: qs.length, oldest_age_seconds: qs.length ? (t0 - qs[0].queued_at) / 1000 : null, tasks: qs.slice(0, 10).map((t) => ({ id: t.task_id, name: t.name, age_seconds: (t0 - t.queued_at) / 1000 })) };
  }
  const sch = [...tasks.values()].filter((t) => t.status === 'scheduled').sort((a, b) => a.eta - b.eta);
  const rt = [...tasks.values()].filter((t) => t.status === 'retrying').sort((a, b) => a.nextAt - b.nextAt);
  return {
    queues: out, total_queued: PRIORITIES.reduce((a, p) => a + out[p].count, 0),
    scheduled: { count: sch.length, next: sch.slice(0, 10).map((t) => ({ id: t.task_id, name: t.name, at: iso(t.eta) })) },
    retrying: { count: rt.length, next: rt.slice(0, 10).map((t) => ({ id: t.task_id, name: t.name, at: iso(t.nextAt), attempt: t.attempts.length + 1 })) },
  };
}

const BUCKETS = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 600, 1800, 3600];
function figures(values) {
  if (!values.length) return { count: 0, mean: null, p50: null, p95: null };
  const s = [...values].sort((a, b) => a - b);
  const q = (f) => { const v = s[Math.min(s.length - 1, Math.floor(f * s.length))]; return BUCKETS.find((b) => b >= v) ?? v; };
  return { count: s.length, mean: s.reduce((a, b) => a + b, 0) / s.length, p50: q(0.5), p95: q(0.95) };
}

function registered() {
  const out = Object.entries(REGISTERED).map(([name, r]) => {
    const ts = [...tasks.values()].filter((t) => t.name === name);
    const runs = ts.flatMap((t) => t.attempts.map((a) => a.duration_ms / 1000));
    const waits = ts.filter((t) => t.started_at).map((t) => Math.max(0, (t.started_at - t.submitted_at) / 1000));
    return {
      name, module: null, doc: r.doc, runs: r.runs, mode: r.mode, priority: r.priority, timeout_seconds: r.timeout, retries: r.retries,
      workers: workers.filter((w) => w.tasks.includes(name) && w.status !== 'inactive').map((w) => w.id),
      stats: {
        running: ts.filter((t) => t.status === 'running').length, success: ts.filter((t) => t.status === 'success').length,
        failure: ts.filter((t) => t.status === 'failure').length, cancelled: ts.filter((t) => t.status === 'cancelled').length,
        retries: ts.reduce((a, t) => a + Math.max(0, t.attempts.filter((x) => x.status === 'failed').length - (t.status === 'failure' ? 1 : 0)), 0),
        run_seconds: figures(runs), wait_seconds: figures(waits),
      },
    };
  });
  return { tasks: out, count: out.length };
}

function workersView() {
  const ws = workers.map((w) => ({ ...w, load: workerLoad(w), last_seen: iso(w.last_seen), registered_at: iso(w.registered_at) }));
  return { workers: ws, count: ws.length };
}

function history() {
  const minutes = [...minuteHist.entries()].sort((a, b) => a[0] - b[0]).map(([t, c]) => ({ t: iso(t), ...c }));
  return { minutes, seconds: secondHist };
}

function exportTasks(q, res) {
  const fmt = q.get('format') || 'csv';
  if (fmt !== 'csv' && fmt !== 'ndjson') throw new BadRequest('format: csv or ndjson');
  const rows = sortTasks(filterTasks(q), q.get('sort'));
  res.writeHead(200, {
    ...baseHeaders(),
    'Content-Type': fmt === 'csv' ? 'text/csv; charset=utf-8' : 'application/x-ndjson',
    'Content-Disposition': `attachment; filename="fastworker-tasks.${fmt}"`,
  });
  if (fmt === 'ndjson') {
    for (const t of rows) res.write(`${JSON.stringify(detail(t).task)}\n`);
  } else {
    const cols = ['task_id', 'name', 'status', 'priority', 'submitted_at', 'started_at', 'completed_at', 'duration_seconds', 'attempts', 'worker', 'input', 'result', 'error'];
    const cell = (v) => { const s = v === null || v === undefined ? '' : String(v); return /[",\n]/.test(s) ? `"${s.replace(/"/g, '""')}"` : s; };
    res.write(`${cols.join(',')}\n`);
    for (const t of rows) {
      const it = listItem(t);
      it.result = t.status === 'success' ? JSON.stringify(t.result) : '';
      it.error = t.error;
      res.write(`${cols.map((c) => cell(it[c])).join(',')}\n`);
    }
  }
  res.end();
}

function bulk(body) {
  const action = body.action;
  if (!['cancel', 'retry', 'delete'].includes(action)) throw new BadRequest('action: one of cancel, retry, delete');
  let targets;
  if (Array.isArray(body.ids)) targets = body.ids.map((id) => tasks.get(id) || { task_id: id, missing: true });
  else if (body.filter && typeof body.filter === 'object') {
    const q = new URLSearchParams();
    for (const [k, v] of Object.entries(body.filter)) if (v !== null && v !== undefined && v !== '') q.set(k, Array.isArray(v) ? v.join(',') : String(v));
    targets = filterTasks(q);
  } else throw new BadRequest('give "ids" (a list of task ids) or "filter"');
  if (targets.length > 10000) throw new BadRequest(`${targets.length} tasks match; at most 10000 a request`);
  const out = { action, matched: targets.length, done: 0, failed: [], new_task_ids: [] };
  for (const t of targets) {
    if (t.missing) { out.failed.push({ task_id: t.task_id, error: 'unknown task' }); continue; }
    const r = action === 'cancel' ? cancel(t) : action === 'retry' ? retry(t) : remove(t);
    if (r.code < 300) { out.done += 1; if (action === 'retry') out.new_task_ids.push(r.body.task_id); } else out.failed.push({ task_id: t.task_id, error: r.body.error });
  }
  return out;
}

function metrics() {
  const by = statusCounts();
  return [
    '# HELP fastworker_tasks Tasks the control plane knows, by state.',
    '# TYPE fastworker_tasks gauge',
    ...STATES.map((s) => `fastworker_tasks{state="${s}"} ${by[s]}`),
    '# HELP fastworker_tasks_total Tasks that ended, by outcome.',
    '# TYPE fastworker_tasks_total counter',
    ...['success', 'failure', 'cancelled'].map((s) => `fastworker_tasks_total{outcome="${s}"} ${totals[s]}`),
    '',
  ].join('\n');
}

// ------------------------------------------------------------------- HTTP
function baseHeaders() {
  return { 'Content-Security-Policy': CSP, 'X-Content-Type-Options': 'nosniff', 'Referrer-Policy': 'no-referrer', 'Cache-Control': 'no-store' };
}

function sendJson(res, code, body) {
  const s = JSON.stringify(body);
  res.writeHead(code, { ...baseHeaders(), 'Content-Type': 'application/json' });
  res.end(s);
}

const TYPES = { '.html': 'text/html; charset=utf-8', '.css': 'text/css; charset=utf-8', '.js': 'text/javascript; charset=utf-8', '.svg': 'image/svg+xml', '.png': 'image/png', '.json': 'application/json', '.txt': 'text/plain; charset=utf-8' };

function serveStatic(res, rel) {
  if (rel === '' || rel === 'index.html') rel = 'index.html';
  if (rel === 'login') rel = 'login.html';
  const file = path.resolve(GUI_DIR, rel);
  if (!file.startsWith(GUI_DIR + path.sep) || !fs.existsSync(file) || !fs.statSync(file).isFile() || rel.endsWith('.md')) {
    sendJson(res, 404, { error: `no such page: ${rel}` });
    return;
  }
  res.writeHead(200, { ...baseHeaders(), 'Content-Type': TYPES[path.extname(file)] || 'application/octet-stream', 'Cache-Control': 'no-cache' });
  fs.createReadStream(file).pipe(res);
}

function readBody(req) {
  return new Promise((resolve, reject) => {
    const chunks = [];
    let size = 0;
    req.on('data', (c) => { size += c.length; if (size > 1 << 20) { reject(new BadRequest('the body is over 1 MiB')); req.destroy(); } else chunks.push(c); });
    req.on('end', () => resolve(Buffer.concat(chunks).toString('utf8')));
    req.on('error', reject);
  });
}

function authed(req) {
  if (!TOKEN) return true;
  if (req.headers.authorization === `Bearer ${TOKEN}`) return true;
  const cookies = Object.fromEntries((req.headers.cookie || '').split(';').map((c) => c.trim().split('=')).filter((p) => p.length === 2));
  return cookies.fw_session === crypto.createHash('sha256').update(TOKEN).digest('hex');
}

function openEvents(req, res) {
  res.writeHead(200, { ...baseHeaders(), 'Content-Type': 'text/event-stream', Connection: 'keep-alive', 'X-Accel-Buffering': 'no' });
  res.write('retry: 2000\n\n');
  res.write(`event: hello\ndata: ${JSON.stringify({ boot, last_event_id: lastEventId() })}\n\n`);
  const last = req.headers['last-event-id'];
  if (last) {
    const i = last.lastIndexOf('-');
    const b = last.slice(0, i);
    const n = Number(last.slice(i + 1));
    if (b !== boot) {
      res.write(`event: resync\ndata: ${JSON.stringify({ reason: 'restarted', last_event_id: lastEventId() })}\n\n`);
    } else if (ring.length && n < ring[0].n - 1) {
      res.write(`event: resync\ndata: ${JSON.stringify({ reason: 'gap', last_event_id: lastEventId() })}\n\n`);
    } else {
      for (const e of ring) if (e.n > n) res.write(`id: ${e.id}\nevent: ${e.type}\ndata: ${JSON.stringify(e.data)}\n\n`);
    }
  }
  sseClients.add(res);
  const ka = setInterval(() => res.write(': keep-alive\n\n'), 15000);
  req.on('close', () => { clearInterval(ka); sseClients.delete(res); });
}

async function handle(req, res) {
  const url = new URL(req.url, `http://${req.headers.host || 'localhost'}`);
  if (PREFIX !== '/' && url.pathname === PREFIX.slice(0, -1)) {
    res.writeHead(308, { Location: PREFIX });
    res.end();
    return;
  }
  if (!url.pathname.startsWith(PREFIX)) { sendJson(res, 404, { error: 'not under this GUI\'s prefix' }); return; }
  const rel = url.pathname.slice(PREFIX.length);
  const seg = rel.split('/').map((s) => { try { return decodeURIComponent(s); } catch { return s; } });
  const method = req.method;
  const q = url.searchParams;

  if (rel === '__mock/restart' && method === 'POST') {
    const body = JSON.parse((await readBody(req)) || '{}');
    sendJson(res, 200, { restarting: true });
    setTimeout(() => restart(Number(body.down_ms) || 3000), 50);
    return;
  }
  if (rel === 'healthz') { res.writeHead(200, { 'Content-Type': 'text/plain' }); res.end('ok'); return; }
  if (rel === 'readyz') { res.writeHead(200, { 'Content-Type': 'text/plain' }); res.end('ready'); return; }
  if (rel === 'login' && method === 'POST') {
    const form = new URLSearchParams(await readBody(req));
    if (TOKEN && form.get('token') === TOKEN) {
      res.writeHead(303, { Location: './', 'Set-Cookie': `fw_session=${crypto.createHash('sha256').update(TOKEN).digest('hex')}; HttpOnly; SameSite=Strict; Path=${PREFIX}` });
    } else res.writeHead(303, { Location: 'login?failed=1' });
    res.end();
    return;
  }
  if (rel === 'logout' && method === 'POST') {
    res.writeHead(303, { Location: 'login', 'Set-Cookie': `fw_session=; HttpOnly; SameSite=Strict; Path=${PREFIX}; Max-Age=0` });
    res.end();
    return;
  }
  const isApi = seg[0] === 'api' || rel === 'metrics';
  // As the control plane: only the login page and what it loads are open.
  const needsAuth = !['login', 'logout', 'style.css', 'favicon.svg', 'login.js'].includes(rel);
  if (needsAuth && !authed(req)) {
    if (rel === '' || rel === 'index.html') { res.writeHead(303, { Location: 'login' }); res.end(); } else sendJson(res, 401, { error: 'a token is needed: send `Authorization: Bearer <token>`, or log in on the GUI\'s login page' });
    return;
  }
  if (!isApi) {
    if (method !== 'GET' && method !== 'HEAD') { sendJson(res, 405, { error: 'method not allowed' }); return; }
    serveStatic(res, rel);
    return;
  }
  if (rel === 'metrics') { res.writeHead(200, { 'Content-Type': 'text/plain; version=0.0.4' }); res.end(metrics()); return; }

  try {
    if (method === 'POST' || method === 'DELETE') {
      if (READ_ONLY) { sendJson(res, 403, { error: 'this GUI is read-only (--gui-read-only)' }); return; }
      if (!(req.headers['content-type'] || '').startsWith('application/json')) { sendJson(res, 415, { error: 'send the body as JSON (Content-Type: application/json)' }); return; }
      const origin = req.headers.origin;
      if (origin && origin !== `http://${req.headers.host}`) { sendJson(res, 403, { error: 'cross-origin request refused' }); return; }
    }
    let body = null;
    if (method === 'POST' || method === 'DELETE') {
      const txt = await readBody(req);
      try { body = txt ? JSON.parse(txt) : null; } catch { throw new BadRequest('the body is not JSON'); }
      if (body === null || typeof body !== 'object' || Array.isArray(body)) throw new BadRequest('the body must be a JSON object ({} when there is nothing to say)');
    }
    const r = route(method, seg.slice(1), q, body, res);
    if (r === undefined) return; // streamed
    if (r === null) { sendJson(res, 404, { error: `no such endpoint: ${method} /${rel}` }); return; }
    sendJson(res, r.code, r.body);
  } catch (err) {
    if (err instanceof BadRequest) sendJson(res, 400, { error: err.message });
    else { sendJson(res, 500, { error: 'internal error' }); process.stderr.write(`mock: ${err.stack}\n`); }
  }
}

function route(method, seg, q, body, res) {
  const [a, b, c] = seg;
  const ok = (x) => ({ code: 200, body: x });
  if (method === 'GET') {
    if (a === 'status' && !b) return ok(status());
    if (a === 'events' && !b) { openEvents(res.req, res); return undefined; }
    if (a === 'tasks' && !b) return ok(listTasks(q));
    if (a === 'tasks' && b === 'export' && !c) { exportTasks(q, res); return undefined; }
    if (a === 'tasks' && b && !c) {
      const t = tasks.get(b);
      return t ? ok(detail(t)) : { code: 404, body: { error: `unknown task ${b} (or its result expired)` } };
    }
    if (a === 'queues') return ok(queues());
    if (a === 'workers') return ok(workersView());
    if (a === 'registered-tasks') return ok(registered());
    if (a === 'cache') return ok(cacheInfo());
    if (a === 'history') return ok(history());
    return null;
  }
  if (method === 'POST') {
    if (a === 'tasks' && b === 'bulk' && !c) return ok(bulk(body));
    if (a === 'tasks' && !b) {
      if (typeof body.name !== 'string' || !REGISTERED[body.name]) throw new BadRequest(`unknown task '${body.name}'; known: ${Object.keys(REGISTERED).join(', ')}`);
      if (body.args !== undefined && !Array.isArray(body.args)) throw new BadRequest('args: a JSON array');
      if (body.kwargs !== undefined && (typeof body.kwargs !== 'object' || body.kwargs === null || Array.isArray(body.kwargs))) throw new BadRequest('kwargs: a JSON object');
      if (body.priority !== undefined && !PRIORITIES.includes(body.priority)) throw new BadRequest(`priority: one of ${PRIORITIES.join(', ')}`);
      if (body.countdown !== undefined && body.eta !== undefined) throw new BadRequest('give countdown or eta, not both');
      if (body.countdown !== undefined && (typeof body.countdown !== 'number' || body.countdown < 0)) throw new BadRequest('countdown: a number of seconds, 0 or more');
      const t = submit({ name: body.name, args: body.args || [], kwargs: body.kwargs || {}, priority: body.priority, countdown: body.countdown, eta: body.eta });
      return { code: 201, body: { task_id: t.task_id, status: t.status } };
    }
    if (a === 'tasks' && b && (c === 'cancel' || c === 'retry') && seg.length === 3) {
      const t = tasks.get(b);
      if (!t) return { code: 404, body: { error: `unknown task ${b}` } };
      return c === 'cancel' ? cancel(t) : retry(t);
    }
    return null;
  }
  if (method === 'DELETE' && a === 'tasks' && b && !c) {
    const t = tasks.get(b);
    if (!t) return { code: 404, body: { error: `unknown task ${b}` } };
    return remove(t);
  }
  return null;
}

// ---------------------------------------------------------------- server
const sockets = new Set();
let server = null;

function listen(port) {
  return new Promise((resolve, reject) => {
    server = http.createServer((req, res) => { handle(req, res).catch((err) => { try { sendJson(res, 500, { error: 'internal error' }); } catch { /* gone */ } process.stderr.write(`mock: ${err.stack}\n`); }); });
    server.on('connection', (s) => { sockets.add(s); s.on('close', () => sockets.delete(s)); });
    server.once('error', reject);
    server.listen(port, HOST, () => resolve(server.address().port));
  });
}

function restart(downMs) {
  process.stderr.write(`mock: simulated crash; back in ${downMs} ms\n`);
  for (const c of sseClients) c.destroy();
  sseClients.clear();
  server.close();
  for (const s of sockets) s.destroy();
  // What a kill -9 and a restart on the same data dir do: running tasks go
  // back to the queue, counters start again, the event stream is a new boot.
  for (const t of tasks.values()) {
    if (t.status === 'running') {
      endAttempt(t, 'lost', { error: 'the control plane stopped while it ran' });
      t.status = 'queued';
      t.queued_at = now();
      t.runEnd = null;
      t.stopping = false;
    }
  }
  boot = newBoot();
  eventN = 0;
  ring = [];
  bootAt = now() + downMs;
  totals = { accepted: 0, started: 0, retries: 0, success: 0, failure: 0, cancelled: 0 };
  rateLog = [];
  paused = true;
  setTimeout(async () => {
    await listen(PORT);
    paused = false;
    process.stderr.write(`mock: back, boot ${boot}\n`);
  }, downMs);
}

function save() {
  if (!STATE_FILE) return;
  const data = { tasks: [...tasks.values()], minutes: [...minuteHist.entries()], seconds: secondHist, done: workers.map((w) => [w.id, w.tasks_done]) };
  fs.writeFileSync(`${STATE_FILE}.tmp`, JSON.stringify(data));
  fs.renameSync(`${STATE_FILE}.tmp`, STATE_FILE);
}

function load() {
  if (!STATE_FILE || !fs.existsSync(STATE_FILE)) return false;
  const data = JSON.parse(fs.readFileSync(STATE_FILE, 'utf8'));
  for (const t of data.tasks) {
    if (t.status === 'running') {
      t.attempts.push({ attempt: t.attempts.length + 1, status: 'lost', started_at: iso(t.attemptStart), finished_at: iso(now()), worker: t.worker, pid: t.pid, error: 'the control plane stopped while it ran' });
      t.status = 'queued';
      t.queued_at = now();
      t.runEnd = null;
      t.stopping = false;
    }
    tasks.set(t.task_id, t);
  }
  for (const [k, v] of data.minutes) minuteHist.set(k, v);
  secondHist.push(...data.seconds);
  for (const [id, n] of data.done) { const w = workers.find((x) => x.id === id); if (w) w.tasks_done = n; }
  return true;
}

let paused = false;
if (DATA_DIR) fs.mkdirSync(String(DATA_DIR), { recursive: true });
if (!load()) {
  seedHistory();
  seedTasks();
}
PORT = await listen(PORT);
setInterval(() => { if (!paused) tickEngine(); }, 100);
setInterval(() => { if (!paused) traffic(); }, 250);
setInterval(() => { if (!paused) secondTick(); }, 1000);
setInterval(() => {
  // A subworker leaves and comes back now and then (worker.* events).
  if (paused) return;
  const w = workers.find((x) => x.id === 'gpu-1');
  const from = w.status;
  w.status = from === 'active' ? 'inactive' : 'active';
  emit(w.status === 'active' ? 'worker.joined' : 'worker.inactive', { worker_id: w.id, status: w.status, from, capacity: w.capacity, tasks: w.tasks, at: iso(now()) });
}, 45000);
process.stderr.write(`fastworker mock control plane ready: GUI on http://${HOST}:${PORT}${PREFIX} (boot ${boot}${READ_ONLY ? ', read-only' : ''}${TOKEN ? ', token required' : ''})\n`);
for (const sig of ['SIGINT', 'SIGTERM']) process.on(sig, () => process.exit(0));
