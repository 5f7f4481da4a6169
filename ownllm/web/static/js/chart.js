// A small SVG line chart: axes with round ticks, one polyline per series, and a legend.
// No library: the dashboard must work air-gapped with no build step.

import { h } from "./dom.js";

const SVG = "http://www.w3.org/2000/svg";
export const COLORS = ["#1d4ed8", "#c2410c", "#047857", "#7c3aed", "#be123c", "#0e7490"];

function s(tag, attrs = {}, ...children) {
  const el = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, String(v));
  for (const child of children) el.append(child instanceof Node ? child : String(child));
  return el;
}

/** Round tick values covering [lo, hi], about `count` of them (whole numbers if `integer`). */
export function ticks(lo, hi, count = 5, integer = false) {
  if (!(hi > lo)) hi = lo + 1;
  const raw = Math.max((hi - lo) / count, integer ? 1 : 0);
  const magnitude = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 2.5, 5, 10].map((m) => m * magnitude).find((x) => x >= raw);
  const out = [];
  const first = Math.floor(lo / step) * step;
  for (let i = 0; i <= count * 3; i += 1) {
    const v = Number((first + i * step).toPrecision(12));
    out.push(v);
    if (v >= hi) break;
  }
  return out;
}

const TIME_STEPS = [60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200, 86400, 172800, 604800];

/** Tick times (Unix seconds) on round minutes, hours or days within [x0, x1]. */
export function timeTicks(x0, x1, count = 6) {
  const step = TIME_STEPS.find((s) => (x1 - x0) / s <= count) || TIME_STEPS[TIME_STEPS.length - 1];
  const out = [];
  for (let t = Math.ceil(x0 / step) * step; t <= x1; t += step) out.push(t);
  return out;
}

/**
 * lineChart({series: [{name, points: [{x, y}]}], label, xFormat, yFormat, yZero})
 * → a <figure> with the SVG and its legend. `label` describes the chart to screen readers.
 */
export function lineChart({ series, label, xFormat = String, yFormat = String, yZero = true, yInteger = false, xTime = false, width = 720, height = 260 }) {
  const pad = { left: 56, right: 28, top: 12, bottom: 28 };
  const all = series.flatMap((one) => one.points).filter((p) => Number.isFinite(p.y));
  const svg = s("svg", { class: "chart", viewBox: `0 0 ${width} ${height}`, role: "img", "aria-label": label });
  svg.append(s("title", {}, label));
  const figure = h("figure", { class: "chart-figure" });
  if (!all.length) {
    svg.append(s("text", { x: width / 2, y: height / 2, "text-anchor": "middle" }, "No data yet"));
    figure.append(svg);
    return figure;
  }
  const xs = all.map((p) => p.x);
  const ys = all.map((p) => p.y);
  let [x0, x1] = [Math.min(...xs), Math.max(...xs)];
  if (x0 === x1) [x0, x1] = [x0 - 1, x1 + 1];
  const yTicks = ticks(yZero ? Math.min(0, ...ys) : Math.min(...ys), Math.max(...ys), 5, yInteger);
  const [y0, y1] = [yTicks[0], yTicks[yTicks.length - 1]];
  const px = (x) => pad.left + ((x - x0) / (x1 - x0)) * (width - pad.left - pad.right);
  const py = (y) => height - pad.bottom - ((y - y0) / (y1 - y0 || 1)) * (height - pad.top - pad.bottom);

  for (const t of yTicks) {
    svg.append(s("line", { class: "gridline", x1: pad.left, x2: width - pad.right, y1: py(t), y2: py(t) }));
    svg.append(s("text", { x: pad.left - 6, y: py(t) + 4, "text-anchor": "end" }, yFormat(t)));
  }
  const xTicks = xTime ? timeTicks(x0, x1) : ticks(x0, x1, 6, true).filter((t) => t >= x0 && t <= x1);
  for (const t of xTicks) {
    svg.append(s("text", { x: px(t), y: height - 8, "text-anchor": "middle" }, xFormat(t)));
  }
  svg.append(s("line", { class: "axis", x1: pad.left, x2: width - pad.right, y1: height - pad.bottom, y2: height - pad.bottom }));
  svg.append(s("line", { class: "axis", x1: pad.left, x2: pad.left, y1: pad.top, y2: height - pad.bottom }));

  series.forEach((one, i) => {
    const color = one.color || COLORS[i % COLORS.length];
    const points = one.points.filter((p) => Number.isFinite(p.y));
    if (!points.length) return;
    const d = points.map((p) => `${px(p.x).toFixed(1)},${py(p.y).toFixed(1)}`).join(" ");
    svg.append(s("polyline", { points: d, fill: "none", stroke: color, "stroke-width": 2, "stroke-linejoin": "round", "data-series": one.name }));
    if (points.length <= 40) {
      for (const p of points) {
        svg.append(s("circle", { cx: px(p.x), cy: py(p.y), r: 2.5, fill: color }));
      }
    }
  });
  const legend = h(
    "ul",
    { class: "legend" },
    series.map((one, i) => {
      if (!one.points.some((p) => Number.isFinite(p.y))) return null;
      const swatch = h("span", { class: "swatch", "aria-hidden": "true" });
      swatch.style.background = one.color || COLORS[i % COLORS.length];
      return h("li", {}, swatch, one.name);
    }),
  );
  figure.append(svg, legend);
  return figure;
}
