// Usage & cost: requests and tokens over time by model or key, latency percentiles, and the
// self-hosted cost against each API in the price table, with the savings to date.

import { api } from "../api.js";
import { lineChart } from "../chart.js";
import { errorBox, field, fill, fmtInt, fmtMoney, h } from "../dom.js";

export const TITLE = "Usage & cost";
const REFRESH_MS = 15000;
const RANGES = [
  ["15m", "Last 15 minutes"],
  ["1h", "Last hour"],
  ["24h", "Last 24 hours"],
  ["7d", "Last 7 days"],
  ["30d", "Last 30 days"],
];

/** Money with enough digits to show small amounts ($0.000412, not $0.00). */
function money(n) {
  if (n === null || n === undefined) return "–";
  const abs = Math.abs(n);
  if (abs > 0 && abs < 0.01) return `${n < 0 ? "−" : ""}$${abs.toPrecision(2)}`;
  return fmtMoney(n);
}

function timeLabel(seconds, bucket) {
  const d = new Date(seconds * 1000);
  if (bucket >= 86400) return d.toLocaleDateString(undefined, { month: "short", day: "numeric" });
  return d.toLocaleTimeString(undefined, { hour: "2-digit", minute: "2-digit" });
}

/** "120 · 480 ms": several durations sharing one unit. */
function msList(...values) {
  if (values.every((v) => v === null || v === undefined)) return "–";
  return `${values.map((v) => fmtInt(v)).join(" · ")} ms`;
}

function stat(label, value, id) {
  return h("p", { class: `stat card ${id}` }, label, h("strong", { id }, value));
}

export function mount(main, { me }) {
  const range = h("select", { name: "range" }, RANGES.map(([v, l]) => h("option", { value: v, selected: v === "24h" || null }, l)));
  const by = h(
    "select",
    { name: "by" },
    h("option", { value: "model" }, "Model"),
    h("option", { value: "key" }, "API key"),
    me.is_admin ? h("option", { value: "tenant" }, "Tenant") : null,
  );
  const versus = h("select", { name: "versus" });
  const refresh = h("button", { type: "button", class: "secondary" }, "Refresh");
  const status = h("div", { "aria-live": "polite" });
  const savings = h("section", { class: "card", "aria-labelledby": "savings-title" });
  const stats = h("div", { class: "grid six", id: "usage-stats" });
  const charts = h("div", { class: "stack" });
  const costTable = h("section", { class: "card", "aria-labelledby": "cost-title" });
  let timer = null;
  let stopped = false;
  let cost = null;

  function renderSavings() {
    if (!cost) return;
    const chosen = cost.apis.find((a) => a.name === versus.value) || cost.apis[0];
    const saved = chosen.savings;
    fill(
      savings,
      h("h2", { id: "savings-title" }, "Savings to date"),
      h("p", { class: `big-number${saved < 0 ? " savings-negative" : ""}`, id: "savings-number" }, money(saved)),
      saved < 0 ? h("p", { class: "muted" }, "Negative: at this traffic the hardware costs more than the API would. Savings grow with volume.") : null,
      cost.self_hosted_cost === null ? h("p", { class: "muted" }, "No price per token is set for tenants (cost.tenant_price_per_million), so only what your tokens cost on each API is shown.") : null,
      h("p", {}, `vs ${chosen.name} (${chosen.provider}) for the same ${fmtInt(cost.prompt_tokens)} input + ${fmtInt(cost.completion_tokens)} output tokens: ${money(chosen.cost)} there, ${money(cost.self_hosted_cost)} here.`),
      h(
        "p",
        { class: "muted" },
        (cost.scope === "tenant"
          ? `Self-hosted: ${money(cost.cost_per_million)} per 1M tokens, the price your operator charges tenants`
          : `Self-hosted: ${cost.hardware.name} at ${fmtMoney(cost.hardware.price_per_hour)}/h × ${cost.hardware.replicas}`) +
          `. Prices as of ${cost.price_table_as_of}; check the sources before quoting.`,
      ),
      field("Compare with", versus),
    );
  }

  function renderCost() {
    const max = Math.max(cost.self_hosted_cost, ...cost.apis.map((a) => a.cost)) || 1;
    const barCell = (value, cls) => {
      const bar = h("div", { class: `bar ${cls || ""}`, "aria-hidden": "true" });
      bar.style.width = `${Math.max(0.5, (value / max) * 100)}%`;
      return h("td", { class: "bar-cell" }, bar);
    };
    fill(
      costTable,
      h("h2", { id: "cost-title" }, "Cost of this traffic"),
      h(
        "table",
        {},
        h("caption", { class: "visually-hidden" }, "Self-hosted cost and each API's price for the same tokens"),
        h("thead", {}, h("tr", {}, h("th", { scope: "col" }, "Where"), h("th", { scope: "col", class: "num" }, "$ / 1M in · out"), h("th", { scope: "col", class: "num" }, "Cost"), h("th", { scope: "col", class: "num" }, "You save"), h("th", { scope: "col" }, h("span", { class: "visually-hidden" }, "Cost bar")))),
        h(
          "tbody",
          {},
          h("tr", {}, h("th", { scope: "row" }, "ownllm (self-hosted)"), h("td", { class: "num" }, cost.cost_per_million === null ? "–" : `${money(cost.cost_per_million)} blended`), h("td", { class: "num" }, money(cost.self_hosted_cost)), h("td", { class: "num" }, "–"), barCell(cost.self_hosted_cost, "self")),
          cost.apis.map((a) =>
            h("tr", {}, h("th", { scope: "row" }, `${a.name} `, h("span", { class: "muted" }, a.provider)), h("td", { class: "num" }, `${fmtMoney(a.input_per_million)} · ${fmtMoney(a.output_per_million)}`), h("td", { class: "num" }, money(a.cost)), h("td", { class: "num" }, money(a.savings)), barCell(a.cost)),
          ),
        ),
      ),
    );
  }

  function renderUsage(usage) {
    const t = usage.totals;
    fill(
      stats,
      stat("Requests", fmtInt(t.requests), "stat-requests"),
      stat("Tokens (in + out)", fmtInt(t.total_tokens), "stat-tokens"),
      stat("Errors & cancels", fmtInt(t.errors), "stat-errors"),
      stat("Latency p50 · p90 · p99", msList(usage.latency_ms.p50, usage.latency_ms.p90, usage.latency_ms.p99), "stat-latency"),
      stat("First token p50 · p90", msList(usage.ttft_ms.p50, usage.ttft_ms.p90), "stat-ttft"),
    );
    const bucket = usage.bucket_seconds;
    const series = (metric) => usage.series.map((s) => ({ name: s.name, points: s.points.map((p) => ({ x: p.t, y: p[metric] })) }));
    const groupName = { key: "API key", tenant: "tenant" }[usage.by] || "model";
    fill(
      charts,
      h("section", { class: "card", "aria-labelledby": "tokens-title" }, h("h2", { id: "tokens-title" }, `Tokens over time by ${groupName}`),
        lineChart({ label: `Tokens per ${bucket / 60} minutes by ${groupName}: ${fmtInt(t.total_tokens)} in total`, series: series("tokens"), xFormat: (x) => timeLabel(x, bucket), yFormat: fmtInt, yInteger: true, xTime: true })),
      h("section", { class: "card", "aria-labelledby": "requests-title" }, h("h2", { id: "requests-title" }, `Requests over time by ${groupName}`),
        lineChart({ label: `Requests per ${bucket / 60} minutes by ${groupName}: ${fmtInt(t.requests)} in total`, series: series("requests"), xFormat: (x) => timeLabel(x, bucket), yFormat: fmtInt, yInteger: true, xTime: true })),
    );
  }

  async function load() {
    clearTimeout(timer);
    try {
      const query = new URLSearchParams({ since: range.value, by: by.value });
      const [usage, costs] = await Promise.all([
        api(`/v1/dashboard/usage?${query}`),
        api("/v1/dashboard/cost").catch((error) => ({ error })),
      ]);
      if (stopped) return;
      fill(status);
      renderUsage(usage);
      if (costs.error) {
        fill(savings, h("h2", { id: "savings-title" }, "Savings to date"), errorBox(costs.error));
        fill(costTable);
      } else {
        cost = costs;
        const current = versus.value;
        fill(versus, cost.apis.map((a) => h("option", { value: a.name, selected: a.name === current || null }, `${a.name} (${a.provider})`)));
        renderSavings();
        renderCost();
      }
    } catch (error) {
      fill(status, errorBox(error));
    }
    if (!stopped) timer = setTimeout(load, REFRESH_MS);
  }

  range.addEventListener("change", load);
  by.addEventListener("change", load);
  refresh.addEventListener("click", load);
  versus.addEventListener("change", () => {
    renderSavings();
    versus.focus();
  });

  fill(
    main,
    h("div", { class: "page-head" }, h("h1", {}, "Usage & cost"),
      h("div", { class: "row filters", role: "group", "aria-label": "Filters" }, field("Time range", range), field("Group by", by), h("div", { class: "field" }, refresh))),
    h(
      "div",
      { class: "stack" },
      status,
      stats,
      h("div", { class: "grid side" }, savings, charts),
      costTable,
    ),
  );
  load();
  return () => {
    stopped = true;
    clearTimeout(timer);
  };
}
