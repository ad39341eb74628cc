#!/usr/bin/env node
// Drives the web GUI in headless Chromium against a real control plane that
// it starts itself (or against a running GUI, see FASTWORKER_GUI_URL), and
// fails on any console error, page error, failed request or CSP violation.
//
// Environment:
//   FASTWORKER_BIN          the built `fastworker` binary (starts a control plane)
//   FASTWORKER_TEST_DIR     a scratch dir for the manifest, data dir, ipc sockets
//                           (default: a new temp dir)
//   FASTWORKER_SCREENSHOTS  where screenshots go (default: <test dir>/screenshots)
//   FASTWORKER_GUI_URL      use this running GUI instead of starting a control
//                           plane (the kill/restart step is then skipped, unless
//                           FASTWORKER_GUI_MOCK=1: the mock server's
//                           POST __mock/restart fakes the outage)
//   CHROMIUM                the browser (default /usr/bin/chromium)
//
//   cd tests/browser && npm ci && FASTWORKER_BIN=../../target/debug/fastworker node gui-test.mjs
//
// Exit 0 when every step passed; 1 with what failed (and failure.png) if not.

import { chromium } from 'playwright-core';
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';

const env = process.env;
const GUI_URL = env.FASTWORKER_GUI_URL || null;
const BIN = env.FASTWORKER_BIN || null;
const MOCK_OUTAGE = env.FASTWORKER_GUI_MOCK === '1';
const CHROMIUM = env.CHROMIUM || '/usr/bin/chromium';

if (!GUI_URL && !BIN) {
  process.stderr.write('gui-test: set FASTWORKER_BIN (the fastworker binary) or FASTWORKER_GUI_URL (a running GUI)\n');
  process.exit(2);
}

const TEST_DIR = path.resolve(env.FASTWORKER_TEST_DIR || fs.mkdtempSync(path.join(os.tmpdir(), 'fw-gui-test-')));
fs.mkdirSync(TEST_DIR, { recursive: true });
const SHOTS = env.FASTWORKER_SCREENSHOTS || path.join(TEST_DIR, 'screenshots');
fs.mkdirSync(SHOTS, { recursive: true });

// ---------------------------------------------------------------- helpers

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** Polls `probe` (async, returns a value) until `ok(value)`, or throws after `ms`. */
async function waitUntil(what, probe, ok = Boolean, ms = 15000, every = 100) {
  const deadline = Date.now() + ms;
  let last;
  for (;;) {
    try { last = await probe(); } catch (err) { last = `(${err.message.split('\n')[0]})`; }
    if (ok(last)) return last;
    if (Date.now() > deadline) throw new Error(`timed out after ${ms} ms waiting for ${what}; last seen: ${JSON.stringify(last)}`);
    await sleep(every);
  }
}

const isEventStream = (url) => /\/api\/events(\?|$)/.test(url || '');

// ------------------------------------------------------ the control plane

const MANIFEST = `# Written by tests/browser/gui-test.mjs
[tasks.add]
description = "Add the numbers of args"
command = ["python3", "-c", "import json,sys; r=json.load(sys.stdin); print(json.dumps(sum(r['args'])))"]

[tasks.sleep]
description = "Sleep 30 s (to be cancelled)"
command = ["sleep", "30"]
grace_period = "2s"

[tasks.boom]
description = "Fail with exit code 3 and a line on stderr"
command = ["sh", "-c", "cat >/dev/null; echo oops >&2; exit 3"]
`;

class ControlPlane {
  constructor(dir) {
    this.dir = dir;
    this.manifest = path.join(dir, 'tasks.toml');
    fs.writeFileSync(this.manifest, MANIFEST);
    // ipc paths must fit a Unix socket's 108 bytes.
    let ipc = path.join(dir, 'ipc');
    if (ipc.length > 80) ipc = fs.mkdtempSync(path.join(os.tmpdir(), 'fwipc-'));
    fs.mkdirSync(ipc, { recursive: true });
    this.ipc = ipc;
    this.base = `ipc://${ipc}/fw`;
    this.log = [];
    this.proc = null;
    this.url = null;
    this.port = 0;
  }

  async start(port = 0, ms = 60000) {
    const args = ['control-plane', '--manifest', this.manifest, '--base-address', this.base,
      '--discovery-address', `ipc://${this.ipc}/disc`, '--data-dir', path.join(this.dir, 'data'), '--gui-port', String(port)];
    const proc = spawn(BIN, args, { stdio: ['ignore', 'pipe', 'pipe'], cwd: this.dir });
    this.proc = proc;
    let exited = null;
    proc.on('exit', (code, sig) => { exited = { code, sig }; });
    let buf = '';
    let url = null;
    const onData = (chunk) => {
      buf += chunk.toString();
      let i;
      while ((i = buf.indexOf('\n')) >= 0) {
        const line = buf.slice(0, i);
        buf = buf.slice(i + 1);
        this.log.push(line);
        if (this.log.length > 400) this.log.shift();
        const m = /GUI\b.*?(http:\/\/[^\s,;)]+)/.exec(line);
        if (m && !url) url = m[1].replace(/[.…]+$/, '');
      }
    };
    proc.stderr.on('data', onData);
    proc.stdout.on('data', onData);
    await waitUntil('the control plane\'s ready line with the GUI\'s URL', () => {
      if (exited) throw new Error(`the control plane exited (${exited.code ?? exited.sig}) before it was ready:\n${this.tail()}`);
      return url;
    }, Boolean, ms);
    this.url = url.endsWith('/') ? url : `${url}/`;
    this.port = Number(new URL(this.url).port);
    return this.url;
  }

  tail(n = 40) {
    return this.log.slice(-n).map((l) => `  | ${l}`).join('\n');
  }

  kill9() {
    if (this.proc && this.proc.exitCode === null && this.proc.signalCode === null) this.proc.kill('SIGKILL');
  }

  async waitExit(ms) {
    const p = this.proc;
    if (!p || p.exitCode !== null || p.signalCode !== null) return true;
    return Promise.race([new Promise((r) => p.once('exit', () => r(true))), sleep(ms).then(() => false)]);
  }

  /** SIGTERM, then SIGKILL if it has not stopped within `ms`. */
  async stop(ms = 10000) {
    const p = this.proc;
    if (!p || p.exitCode !== null || p.signalCode !== null) return;
    p.kill('SIGTERM');
    if (!(await this.waitExit(ms))) {
      p.kill('SIGKILL');
      await this.waitExit(5000);
    }
  }
}

// ------------------------------------------------------------------- run

const problems = []; // console errors, page errors, failed requests, CSP violations
const outage = { active: false };
const reloading = { active: false }; // a deliberate page.reload(): its in-flight fetches are aborted
let cp = null;
let browser = null;
let page = null;
let stepName = '';
const results = [];

// Requests under way (the event stream aside): the outage starts only once the
// page is quiet, so that no request of a step before it is cut by the kill.
const inflight = new Set();

async function quiesce(quietMs = 300, ms = 10000) {
  let quietSince = null;
  await waitUntil('the page\'s requests to finish', () => {
    if (inflight.size > 0) { quietSince = null; return false; }
    quietSince = quietSince ?? Date.now();
    return Date.now() - quietSince >= quietMs;
  }, Boolean, ms, 50);
}

function watch(p) {
  p.on('request', (r) => { if (!isEventStream(r.url())) inflight.add(r); });
  p.on('requestfinished', (r) => inflight.delete(r));
  p.on('requestfailed', (r) => inflight.delete(r));
  p.on('console', (m) => {
    const text = m.text();
    const url = m.location()?.url || '';
    if (/Content.Security.Policy/i.test(text)) { problems.push(`CSP (console): ${text}`); return; }
    if (m.type() !== 'error') return;
    if (outage.active && (isEventStream(url) || isEventStream(text) || /ERR_CONNECTION_REFUSED|ERR_EMPTY_RESPONSE|ERR_CONNECTION_RESET|ERR_INCOMPLETE_CHUNKED_ENCODING/.test(text))) return;
    problems.push(`console error during "${stepName}": ${text}${url ? ` (${url})` : ''}`);
  });
  p.on('pageerror', (err) => problems.push(`page error during "${stepName}": ${err.message}`));
  p.on('requestfailed', (r) => {
    const why = r.failure()?.errorText || '?';
    // The event stream is cut on purpose: by the outage, or when the page goes away.
    if (isEventStream(r.url()) && (outage.active || /ERR_ABORTED/.test(why))) return;
    if (reloading.active && /ERR_ABORTED/.test(why)) return;
    problems.push(`request failed during "${stepName}": ${r.method()} ${r.url()}: ${why}`);
  });
  p.on('response', (r) => {
    if (r.status() >= 400) problems.push(`HTTP ${r.status()} during "${stepName}": ${r.request().method()} ${r.url()}`);
  });
}

function checkProblems() {
  if (problems.length) throw new Error(`the page reported problems:\n  - ${problems.join('\n  - ')}`);
}

async function step(name, fn) {
  stepName = name;
  const t0 = Date.now();
  try {
    await fn();
    checkProblems();
  } catch (err) {
    const s = ((Date.now() - t0) / 1000).toFixed(2);
    results.push(`FAIL ${name} (${s} s)`);
    process.stdout.write(`FAIL ${name} (${s} s)\n`);
    throw err;
  }
  const s = ((Date.now() - t0) / 1000).toFixed(2);
  results.push(`ok   ${name} (${s} s)`);
  process.stdout.write(`ok   ${name} (${s} s)\n`);
}

const tid = (id) => `[data-testid="${id}"]`;
const text = async (sel) => ((await page.locator(sel).first().textContent({ timeout: 1000 })) || '').trim();
const go = (hash) => page.evaluate((h) => { location.hash = h; }, hash);

async function submitFromForm(name, args, kwargs = '{}') {
  await page.click(tid('nav-submit'));
  await page.waitForSelector(tid('submit-name'));
  const before = await page.locator(tid('submit-result-item')).count();
  await page.fill(tid('submit-name'), name);
  await page.fill(tid('submit-args'), args);
  await page.fill(tid('submit-kwargs'), kwargs);
  await waitUntil('Submit to be enabled', () => page.isEnabled(tid('submit-button')), Boolean, 5000);
  await page.click(tid('submit-button'));
  await waitUntil('the new task in submit-result', () => page.locator(tid('submit-result-item')).count(), (n) => n > before, 10000);
  const item = page.locator(tid('submit-result-item')).first();
  const id = await item.getAttribute('data-task-id');
  if (!id) throw new Error('submit-result has no task id');
  const href = await item.locator(tid('submit-result-link')).getAttribute('href');
  if (!href || !href.includes(encodeURIComponent(id))) throw new Error(`the result's link ${href} does not lead to ${id}`);
  return id;
}

async function openTask(id) {
  await go(`#/tasks/${encodeURIComponent(id)}`);
  await waitUntil(`the detail page of ${id}`, () => text(tid('task-id')), (t) => t === id, 10000);
}

async function waitStatus(status, ms = 30000) {
  return waitUntil(`task-status to read "${status}"`, () => text(tid('task-status')), (t) => t === status, ms);
}

async function main() {
  let base = GUI_URL;
  if (!base) {
    cp = new ControlPlane(TEST_DIR);
    await step('start the control plane', async () => { base = await cp.start(0); });
    process.stdout.write(`     GUI at ${base} (data in ${TEST_DIR})\n`);
  } else if (!base.endsWith('/')) base += '/';

  browser = await chromium.launch({
    executablePath: CHROMIUM,
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-dev-shm-usage'],
  });
  const context = await browser.newContext({ viewport: { width: 1360, height: 900 }, colorScheme: 'light' });
  await context.exposeBinding('__fwCspViolation', (_src, v) => problems.push(`CSP violation during "${stepName}": ${v}`));
  await context.addInitScript(() => {
    document.addEventListener('securitypolicyviolation', (e) => {
      window.__fwCspViolation(`${e.violatedDirective} blocked ${e.blockedURI || 'inline'} at ${e.sourceFile || '?'}:${e.lineNumber || '?'}`);
    });
  });
  page = await context.newPage();
  page.setDefaultTimeout(10000);
  watch(page);

  await step('open the dashboard', async () => {
    await page.goto(base);
    await waitUntil('the event stream to be live', () => page.getAttribute(tid('conn-status'), 'data-state'), (s) => s === 'live', 15000);
    await waitUntil('the cards to fill from stats', () => text(tid('card-workers-value')), (t) => /\d/.test(t), 10000);
    for (const c of ['card-queued', 'card-running', 'card-succeeded', 'card-failed', 'card-cache']) await page.waitForSelector(tid(c), { timeout: 5000 });
    await page.waitForSelector(`${tid('chart-throughput')} canvas`, { timeout: 5000 });
    await page.waitForSelector(`${tid('chart-queues')} canvas`, { timeout: 5000 });
    if (!(await page.isHidden('#disconnected'))) throw new Error('the disconnected banner shows while connected');
  });

  let addId;
  await step('submit add [5, 3] from the form; it turns success with 8 without a reload', async () => {
    await page.click(tid('nav-submit'));
    await page.waitForSelector(tid('submit-name'));
    // The JSON is checked as it is typed.
    await page.fill(tid('submit-name'), 'add');
    await page.fill(tid('submit-args'), '[5,');
    await waitUntil('Submit to be disabled on bad JSON', () => page.isDisabled(tid('submit-button')), Boolean, 3000);
    await waitUntil('the JSON error next to args', () => text(tid('submit-args-error')), (t) => t.length > 0, 3000);
    await page.fill(tid('submit-args'), '{"a": 1}');
    await waitUntil('an object refused as args', () => page.isDisabled(tid('submit-button')), Boolean, 3000);
    addId = await submitFromForm('add', '[5, 3]');
    await page.click(`${tid('submit-result-item')}[data-task-id="${addId}"] ${tid('submit-result-link')}`);
    await waitUntil('the detail page', () => text(tid('task-id')), (t) => t === addId, 10000);
    const navs = await page.evaluate(() => performance.getEntriesByType('navigation').length);
    await waitStatus('success', 30000);
    await waitUntil('the result 8', () => text(tid('task-result')), (t) => t === '8', 5000);
    const navsAfter = await page.evaluate(() => performance.getEntriesByType('navigation').length);
    if (navsAfter !== navs) throw new Error('the page reloaded');
  });

  await step('sleep: running, Cancel, cancelled', async () => {
    const id = await submitFromForm('sleep', '[]');
    await openTask(id);
    await waitStatus('running', 30000);
    await waitUntil('elapsed time to tick', () => text(tid('task-elapsed')), (t) => t.length > 0 && t !== '—', 5000);
    await page.click(tid('btn-cancel'));
    await waitStatus('cancelled', 30000);
    await waitUntil('Retry and Delete to show, Cancel to go', async () => (await page.isVisible(tid('btn-retry'))) && (await page.isVisible(tid('btn-delete'))) && !(await page.isVisible(tid('btn-cancel'))), Boolean, 5000);
  });

  let boomId;
  let retryId;
  await step('boom: failure with its stderr; Retry gives a linked task that fails too', async () => {
    boomId = await submitFromForm('boom', '[]');
    await openTask(boomId);
    await waitStatus('failure', 30000);
    await waitUntil('stderr "oops"', () => text(tid('attempt-stderr')), (t) => t.includes('oops'), 5000);
    await waitUntil('exit code 3', () => text(tid('attempt-exit')), (t) => t.includes('3'), 5000);
    await page.click(tid('btn-retry'));
    retryId = await waitUntil('the new task\'s page', async () => {
      const h = await page.evaluate(() => location.hash);
      const id = decodeURIComponent(h.replace(/^#\/tasks\//, ''));
      return h.startsWith('#/tasks/') && id !== boomId ? id : null;
    }, Boolean, 10000);
    await waitUntil('the new task\'s detail', () => text(tid('task-id')), (t) => t === retryId, 10000);
    await waitUntil('the retry-of link to the old task', () => text(tid('retry-of')), (t) => t === boomId, 10000);
    await waitStatus('failure', 30000);
    await waitUntil('the retry\'s stderr', () => text(tid('attempt-stderr')), (t) => t.includes('oops'), 5000);
    await page.screenshot({ path: path.join(SHOTS, 'task-failure-light.png'), fullPage: true });
    await page.click(tid('retry-of'));
    await waitUntil('the old task\'s detail', () => text(tid('task-id')), (t) => t === boomId, 10000);
    await waitUntil('the retried-by link to the new task', () => text(tid('retried-by')), (t) => t === retryId, 10000);
  });

  await step('tasks list: chips with counts, status filter, search', async () => {
    await page.click(tid('nav-tasks'));
    await page.waitForSelector(tid('task-row'), { timeout: 10000 });
    const count = async (s) => Number(await page.getAttribute(tid(`chip-${s}`), 'data-count'));
    await waitUntil('chip counts (success ≥ 1, failure ≥ 2, cancelled ≥ 1)', async () => [await count('success'), await count('failure'), await count('cancelled')],
      ([s, f, c]) => s >= 1 && f >= 2 && c >= 1, 10000);
    await page.click(tid('chip-failure'));
    await waitUntil('status=failure in the URL', () => page.evaluate(() => location.hash), (h) => /[?&]status=failure(&|$)/.test(h), 5000);
    await waitUntil('only failure rows', () => page.$$eval('[data-testid="task-row"]', (rs) => rs.map((r) => r.dataset.status)),
      (ss) => ss.length >= 2 && ss.every((s) => s === 'failure'), 10000);
    await page.click(tid('chip-all'));
    await page.fill(tid('tasks-search'), addId);
    await waitUntil('q=<id> in the URL', () => page.evaluate(() => location.hash), (h) => h.includes(`q=${encodeURIComponent(addId)}`), 5000);
    await waitUntil('the add task\'s row, success', () => page.getAttribute(`${tid('task-row')}[data-task-id="${addId}"]`, 'data-status', { timeout: 1000 }), (s) => s === 'success', 10000);
    const csv = await page.getAttribute(tid('export-csv'), 'href');
    if (!csv || !csv.startsWith('api/tasks/export?format=csv') || !csv.includes('q=')) throw new Error(`the CSV export link does not carry the filters: ${csv}`);
  });

  await step('keyboard: g t, ?, Esc, /', async () => {
    await page.evaluate(() => document.activeElement && document.activeElement.blur());
    await page.keyboard.press('g');
    await page.keyboard.press('d');
    await waitUntil('#/ after g d', () => page.evaluate(() => location.hash), (h) => h === '#/' || h === '', 5000);
    await page.keyboard.press('?');
    await waitUntil('the help dialog', () => page.isVisible(tid('help-dialog')), Boolean, 3000);
    await page.keyboard.press('Escape');
    await waitUntil('the help dialog to close', () => page.isHidden(tid('help-dialog')), Boolean, 3000);
    await page.keyboard.press('/');
    await waitUntil('the search box focused on the tasks view', () => page.evaluate(() => document.activeElement?.dataset?.testid), (t) => t === 'tasks-search', 5000);
  });

  await step('themes: light and dark screenshots of the dashboard and a task', async () => {
    const theme = () => page.evaluate(() => document.documentElement.dataset.theme);
    // Toasts of earlier steps would cover the page: close them first.
    const shoot = async (name) => {
      await page.$$eval('.toast-close', (bs) => bs.forEach((b) => b.click()));
      await page.screenshot({ path: path.join(SHOTS, name), fullPage: true });
    };
    await go('#/');
    await page.waitForSelector(`${tid('chart-throughput')} canvas`);
    if ((await theme()) !== 'light') await page.click(tid('theme-toggle'));
    await waitUntil('the light theme', theme, (t) => t === 'light', 3000);
    await waitUntil('the failures list', () => page.locator(`${tid('latest-failures')} li, ${tid('latest-failures')} .empty`).count(), (n) => n > 0, 10000);
    await shoot('dashboard-light.png');
    await openTask(addId);
    await waitStatus('success', 5000);
    await shoot('task-light.png');
    await page.click(tid('theme-toggle'));
    await waitUntil('the dark theme', theme, (t) => t === 'dark', 3000);
    const stored = await page.evaluate(() => localStorage.getItem('fastworker.theme'));
    if (stored !== 'dark') throw new Error(`the theme was not remembered (localStorage: ${stored})`);
    await shoot('task-dark.png');
    await go('#/');
    await page.waitForSelector(`${tid('chart-throughput')} canvas`);
    await waitUntil('the failures list', () => page.locator(`${tid('latest-failures')} li, ${tid('latest-failures')} .empty`).count(), (n) => n > 0, 10000);
    await shoot('dashboard-dark.png');
    await go('#/tasks');
    await page.waitForSelector(tid('task-row'));
    await shoot('tasks-dark.png');
    // Remembered across a reload.
    reloading.active = true;
    await page.reload();
    reloading.active = false;
    await waitUntil('dark after a reload', theme, (t) => t === 'dark', 5000);
    await waitUntil('the event stream to be live again', () => page.getAttribute(tid('conn-status'), 'data-state'), (s) => s === 'live', 15000);
    await page.click(tid('theme-toggle'));
    await waitUntil('back to light', theme, (t) => t === 'light', 3000);
  });

  if (cp) {
    await step('manifest reload: SIGHUP after an edit, a toast says what changed, the registered tasks follow', async () => {
      await go('#/registered');
      await page.waitForSelector(tid('registered-row'));
      fs.appendFileSync(cp.manifest, '\n[tasks.added_live]\ncommand = ["cat"]\n');
      cp.proc.kill('SIGHUP');
      await waitUntil('the reload toast', () => page.$$eval('[data-testid="toast-info"]', (ts) => ts.map((t) => t.textContent)),
        (ts) => ts.some((t) => t.includes('Manifest reloaded: 1 added (added_live), 0 removed, 0 changed')), 15000);
      await page.waitForSelector(`${tid('registered-row')}[data-name="added_live"]`, { timeout: 10000 });
    });
  }

  if (cp || MOCK_OUTAGE) {
    await step('outage: kill -9, red banner, restart on the same port, banner gone, tasks kept', async () => {
      await go(`#/tasks?q=${encodeURIComponent(addId)}`);
      await waitUntil('the list filtered to the add task, success', () => page.$$eval('[data-testid="task-row"]', (rs) => rs.map((r) => `${r.dataset.taskId} ${r.dataset.status}`)),
        (rows) => rows.length === 1 && rows[0] === `${addId} success`, 10000);
      await quiesce();
      outage.active = true;
      if (cp) {
        cp.kill9();
        await cp.waitExit(10000);
      } else {
        const r = await fetch(new URL('__mock/restart', base), { method: 'POST', headers: { 'Content-Type': 'application/json' }, body: '{"down_ms": 4000}' });
        if (!r.ok) throw new Error(`the mock did not take __mock/restart: ${r.status}`);
      }
      await waitUntil('the #disconnected banner', () => page.isVisible('#disconnected'), Boolean, 15000);
      const bannerText = await text('#disconnected');
      if (!/Disconnected from the control plane/.test(bannerText)) throw new Error(`banner text: ${bannerText}`);
      const stale = await page.evaluate(() => document.body.classList.contains('stale'));
      if (!stale) throw new Error('the data is not dimmed while disconnected');
      await page.screenshot({ path: path.join(SHOTS, 'disconnected.png') });
      if (cp) {
        const port = cp.port;
        await cp.start(port);
        if (cp.port !== port) throw new Error(`the control plane came back on port ${cp.port}, not ${port}`);
      }
      await waitUntil('the banner to go by itself', () => page.isHidden('#disconnected'), Boolean, 30000);
      await waitUntil('the add task\'s row, still success', () => page.getAttribute(`${tid('task-row')}[data-task-id="${addId}"]`, 'data-status', { timeout: 1000 }), (s) => s === 'success', 15000);
      await quiesce();
      await waitUntil('the data un-dimmed', () => page.evaluate(() => !document.body.classList.contains('stale')), Boolean, 5000);
      outage.active = false;
      await go('#/');
      await waitUntil('the cards after the restart', () => text(tid('card-workers-value')), (t) => /\d/.test(t), 10000);
    });
  } else {
    process.stdout.write('skip outage: kill -9 and restart need a control plane this script starts (FASTWORKER_GUI_URL is set; FASTWORKER_GUI_MOCK=1 fakes it with the mock server)\n');
  }

  checkProblems();
}

// Ctrl-C or a CI timeout: still stop what was started.
for (const sig of ['SIGINT', 'SIGTERM']) {
  process.once(sig, async () => {
    process.stdout.write(`gui-test: ${sig}, stopping\n`);
    if (browser) await Promise.race([browser.close().catch(() => {}), sleep(5000)]);
    if (cp) await cp.stop(5000);
    process.exit(130);
  });
}

let code = 0;
const t0 = Date.now();
try {
  await main();
  process.stdout.write(`gui-test: ${results.length} passed, 0 failed in ${((Date.now() - t0) / 1000).toFixed(1)} s; screenshots in ${SHOTS}\n`);
} catch (err) {
  code = 1;
  process.stdout.write(`\ngui-test FAILED in step "${stepName}":\n${err.message}\n`);
  if (problems.length) process.stdout.write(`page problems:\n  - ${problems.join('\n  - ')}\n`);
  if (page) {
    try {
      await page.screenshot({ path: path.join(SHOTS, 'failure.png'), fullPage: true, timeout: 5000 });
      process.stdout.write(`screenshot: ${path.join(SHOTS, 'failure.png')}\n`);
    } catch { /* the page is gone */ }
  }
  if (cp && cp.log.length) process.stdout.write(`control plane log (last lines):\n${cp.tail()}\n`);
  process.stdout.write(`${results.filter((r) => r.startsWith('ok')).length} passed, 1 failed\n`);
} finally {
  if (browser) await Promise.race([browser.close().catch(() => {}), sleep(10000)]);
  if (cp) await cp.stop(10000);
}
process.exit(code);
