// Thin wrapper over the vendored uPlot (window.uPlot, loaded by index.html
// before the modules run). A chart keeps its own data, follows its
// container's width, and rebuilds itself when the theme changes (its colours
// come from the page's CSS variables).
import { h } from './dom.js';

const css = (name) => getComputedStyle(document.documentElement).getPropertyValue(name).trim() || '#888';

function fmtTick(v) {
  if (v === null || v === undefined) return '';
  if (Math.abs(v) >= 1000) return `${(v / 1000).toFixed(v >= 10000 ? 0 : 1)}k`;
  return Number.isInteger(v) ? String(v) : v.toFixed(1);
}

/**
 * new Chart(container, {
 *   height: 180,
 *   series: [{label: 'succeeded', color: '--c-success', fill: true, width: 1.5}, …],
 *   bars: false,
 * })
 * chart.setData([[x…], [y1…], …], [from, to])  // x in unix seconds; the window is optional
 */
export class Chart {
  constructor(container, opts) {
    this.container = container;
    this.opts = opts;
    this.data = [[], ...opts.series.map(() => [])];
    this.plot = null;
    this.host = h('div', { class: 'chart-host' });
    container.appendChild(this.host);
    this.ro = new ResizeObserver(() => this.resize());
    this.ro.observe(container);
    this.build();
  }

  size() {
    const w = Math.max(200, Math.floor(this.container.clientWidth || 600));
    return { width: w, height: this.opts.height || 180 };
  }

  build() {
    if (this.plot) { this.plot.destroy(); this.plot = null; }
    if (typeof window.uPlot !== 'function') return;
    const axis = css('--muted');
    const grid = css('--grid');
    const clock = window.uPlot.fmtDate('{HH}:{mm}:{ss}');
    const series = [{ label: 'time', value: (u, v, si, idx) => (idx === null || idx === undefined ? 'latest' : clock(new Date(v * 1000))) }];
    for (const s of this.opts.series) {
      const color = css(s.color);
      const o = {
        label: s.label,
        stroke: color,
        width: s.width ?? 1.5,
        spanGaps: false,
        // A lone point (the first minute of history) has no line to draw.
        points: { show: (u, si, i0, i1) => i1 - i0 < 2, size: 5 },
        // Off the chart, the legend shows the latest values, not dashes.
        value: (u, v, si, idx) => fmtTick(idx === null || idx === undefined ? latest(u.data[si]) : v) || '—',
      };
      if (s.fill) o.fill = withAlpha(color, s.fillAlpha ?? 0.16);
      if (s.dash) o.dash = s.dash;
      if (this.opts.bars && window.uPlot.paths && window.uPlot.paths.bars) {
        o.paths = window.uPlot.paths.bars({ size: [0.8, 12] });
        o.fill = withAlpha(color, 0.7);
      }
      series.push(o);
    }
    const axisOpts = { stroke: axis, grid: { stroke: grid, width: 1 }, ticks: { stroke: grid, width: 1 }, font: '11px system-ui, sans-serif' };
    const { width, height } = this.size();
    this.plot = new window.uPlot({
      width,
      height,
      series,
      cursor: { drag: { x: false, y: false }, points: { size: 6 } },
      legend: { live: true },
      scales: { x: { time: true, range: (u, min, max) => this.xRange || [min, max] }, y: { range: (u, min, max) => [0, Math.max(this.opts.minMax ?? 1, max * 1.1)] } },
      axes: [
        { ...axisOpts },
        { ...axisOpts, size: 40, values: (u, vals) => vals.map(fmtTick) },
      ],
    }, this.data, this.host);
  }

  resize() {
    if (!this.plot) return;
    const s = this.size();
    if (s.width !== this.plot.width) this.plot.setSize(s);
  }

  /** `xRange`: [from, to] in unix seconds, to show a fixed window (else the data's). */
  setData(data, xRange) {
    this.data = data;
    this.xRange = xRange || null;
    if (this.plot) this.plot.setData(data);
  }

  destroy() {
    this.ro.disconnect();
    if (this.plot) this.plot.destroy();
    this.plot = null;
  }
}

/** The last value of a column that is not a gap. */
function latest(col) {
  for (let i = (col ? col.length : 0) - 1; i >= 0; i--) {
    if (col[i] !== null && col[i] !== undefined) return col[i];
  }
  return null;
}

function withAlpha(color, a) {
  const c = color.trim();
  if (/^#[0-9a-f]{6}$/i.test(c)) {
    const n = parseInt(c.slice(1), 16);
    return `rgba(${(n >> 16) & 255}, ${(n >> 8) & 255}, ${n & 255}, ${a})`;
  }
  if (/^#[0-9a-f]{3}$/i.test(c)) {
    const [r, g, b] = c.slice(1).split('').map((x) => parseInt(x + x, 16));
    return `rgba(${r}, ${g}, ${b}, ${a})`;
  }
  return c;
}

/**
 * A time series of fixed step (1 s or 60 s), kept to `keep` points. Values
 * for one slot add up; slots never seen are zeros (counts) or gaps (gauges).
 */
export class Series {
  constructor(names, step, keep) {
    this.names = names;
    this.step = step;
    this.keep = keep;
    this.x = [];
    this.cols = names.map(() => []);
  }

  /** Adds `values` (by name) at time t (unix seconds); mode 'add' sums, 'set' replaces. */
  put(t, values, mode = 'add', fillGapsWith = 0) {
    const slot = Math.floor(t / this.step) * this.step;
    const last = this.x.length ? this.x[this.x.length - 1] : null;
    if (last !== null && slot < last) {
      const i = this.x.lastIndexOf(slot);
      if (i < 0) return; // older than what we keep
      this.names.forEach((n, k) => { if (n in values) this.cols[k][i] = merge(this.cols[k][i], values[n], mode); });
      return;
    }
    if (last !== null && slot === last) {
      const i = this.x.length - 1;
      this.names.forEach((n, k) => { if (n in values) this.cols[k][i] = merge(this.cols[k][i], values[n], mode); });
      return;
    }
    if (last !== null) {
      const gap = (slot - last) / this.step;
      if (gap > this.keep) { this.x = []; this.cols = this.names.map(() => []); } else {
        for (let s = last + this.step; s < slot; s += this.step) {
          this.x.push(s);
          this.cols.forEach((c) => c.push(fillGapsWith));
        }
      }
    }
    this.x.push(slot);
    this.names.forEach((n, k) => this.cols[k].push(n in values ? values[n] : (mode === 'add' ? 0 : null)));
    this.trim();
  }

  trim() {
    const over = this.x.length - this.keep;
    if (over > 0) {
      this.x.splice(0, over);
      this.cols.forEach((c) => c.splice(0, over));
    }
  }

  /** Extends the series with empty slots up to `t` (so the x axis runs to now). */
  extendTo(t, fillWith = 0) {
    if (!this.x.length) return;
    const slot = Math.floor(t / this.step) * this.step;
    let last = this.x[this.x.length - 1];
    if (slot - last > this.keep * this.step) return;
    while (last < slot) {
      last += this.step;
      this.x.push(last);
      this.cols.forEach((c) => c.push(fillWith));
    }
    this.trim();
  }

  data(fromT) {
    if (fromT === undefined) return [this.x, ...this.cols];
    let i = 0;
    while (i < this.x.length && this.x[i] < fromT) i++;
    return [this.x.slice(i), ...this.cols.map((c) => c.slice(i))];
  }
}

function merge(old, v, mode) {
  if (mode === 'set') return v;
  if (v === null || v === undefined) return old;
  return (old ?? 0) + v;
}
