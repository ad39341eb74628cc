#!/usr/bin/env node
// Takes the screenshots of docs/ (docs/gui-dashboard.png, docs/gui-tasks.png):
// a control plane on the example manifest, a minute of mixed work, then
// the dashboard and the task list in headless Chromium.
//
//   cargo build --release
//   cd tests/browser && npm ci && FASTWORKER_BIN=../../target/release/fastworker node tour.mjs
//
// Environment: FASTWORKER_BIN (the binary), TOUR_SECONDS (default 60),
// TOUR_OUT (default ../../docs), CHROMIUM (default /usr/bin/chromium).

import { chromium } from 'playwright-core';
import { spawn, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const here = path.dirname(fileURLToPath(import.meta.url));
const repo = path.resolve(here, '../..');
const BIN = path.resolve(process.env.FASTWORKER_BIN || path.join(repo, 'target/release/fastworker'));
const SECONDS = Number(process.env.TOUR_SECONDS || 60);
const OUT = path.resolve(process.env.TOUR_OUT || path.join(repo, 'docs'));
const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'fw-tour-'));
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const base = `ipc://${dir}/fw`;

const cp = spawn(BIN, ['control-plane', '--manifest', path.join(repo, 'tasks.toml.example'),
  '--base-address', base, '--discovery-address', `ipc://${dir}/disc`, '--data-dir', path.join(dir, 'data'),
  '--gui-port', '0', '--concurrency', '4'], { cwd: repo, stdio: ['ignore', 'ignore', 'pipe'] });
let url = null;
cp.stderr.on('data', (b) => {
  const m = /GUI on (http:\/\/\S+)/.exec(b.toString());
  if (m) url = m[1];
});
let browser;
try {
  for (let i = 0; !url; i++) {
    if (i > 600) throw new Error('no ready line');
    await sleep(100);
  }
  // A minute of work: adds (high), one-shot adds, shouts, failures (low),
  // flaky tasks that succeed on their third attempt, a few sleeps.
  const kinds = [['add', '[1, 2]'], ['add', '[3, 4]'], ['add_oneshot', '[5, 6]'], ['shout', '["hi"]'],
    ['fail', '[]'], ['flaky', '[]'], ['sleep', '[2]'], ['echo', '["x"]']];
  const until = Date.now() + SECONDS * 1000;
  let n = 0;
  while (Date.now() < until) {
    const lines = [];
    const burst = 20 + Math.round(15 * Math.sin(n / 7));
    for (let i = 0; i < burst; i++) {
      const [name, args] = kinds[(n * 7 + i) % kinds.length];
      if (name === 'sleep' && i % 5) continue;
      lines.push(`{"task_name": "${name}", "args": ${args}}`);
    }
    const file = path.join(dir, 'batch.jsonl');
    fs.writeFileSync(file, `${lines.join('\n')}\n`);
    spawnSync(BIN, ['submit', '--batch', file, '--base-address', base], { stdio: 'ignore' });
    n++;
    await sleep(1000);
  }
  browser = await chromium.launch({ executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-dev-shm-usage'] });
  const page = await browser.newPage({ viewport: { width: 1360, height: 900 }, colorScheme: 'light' });
  await page.goto(url);
  await sleep(6000); // a few stats events on the live charts
  await page.screenshot({ path: path.join(OUT, 'gui-dashboard.png') });
  await page.goto(`${url}#/tasks`);
  await sleep(1500);
  await page.screenshot({ path: path.join(OUT, 'gui-tasks.png') });
  console.log(`tour: ${n} batches in ${SECONDS} s; screenshots in ${OUT}`);
} finally {
  if (browser) await browser.close();
  cp.kill('SIGTERM');
  await sleep(500);
  if (cp.exitCode === null) cp.kill('SIGKILL');
  fs.rmSync(dir, { recursive: true, force: true });
}
