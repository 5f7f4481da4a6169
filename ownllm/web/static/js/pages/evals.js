// Evals: two completed runs of an eval side by side, the base against a candidate (an
// adapter, an alias's version): per criterion the pass rates, the delta and its 95%
// interval, then the items whose verdict changed. The view is /v1/dashboard/evals/{id}/compare.

import { api } from "../api.js";
import { errorBox, field, fill, h } from "../dom.js";

export const TITLE = "Evals";

const pct = (x) => (x === null || x === undefined ? "–" : `${(x * 100).toFixed(1)}%`);
const signed = (x) => (x === null || x === undefined ? "–" : `${x >= 0 ? "+" : "−"}${Math.abs(x * 100).toFixed(1)} pts`);

function side(s) {
  if (s.pass_rate === null) return "–";
  const [lo, hi] = s.interval;
  return `${pct(s.pass_rate)} (${s.passed}/${s.total}; ${pct(lo)}–${pct(hi)})`;
}

function runLabel(run) {
  return `${run.name} · ${run.model}${run.adapter_id ? "" : " (base)"} · ${run.id}`;
}

function comparisonTable(result) {
  const { comparison } = result;
  const rows = comparison.criteria.map((row) => {
    const [lo, hi] = row.delta_interval;
    const cls = row.delta > 0 ? "delta-up" : row.delta < 0 ? "delta-down" : null;
    return h(
      "tr",
      {},
      h("th", { scope: "row" }, row.criterion),
      h("td", {}, side(row.a)),
      h("td", {}, side(row.b)),
      h("td", { class: cls }, signed(row.delta)),
      h("td", {}, `${signed(lo)} to ${signed(hi)}`),
    );
  });
  return h(
    "table",
    { id: "eval-comparison" },
    h("caption", {}, `Base ${result.base_run.model} against candidate ${result.candidate_run.model}. ${comparison.interval}.`),
    h(
      "thead",
      {},
      h("tr", {}, ["Criterion", "Base pass rate (95% CI)", "Candidate pass rate (95% CI)", "Delta", "95% CI of the delta"].map((t) => h("th", { scope: "col" }, t))),
    ),
    h("tbody", {}, rows),
  );
}

function changedItems(result) {
  const changed = result.comparison.changed_items;
  if (!changed.length) return h("p", { id: "changed-items", class: "muted" }, "No item changed its verdict.");
  return h(
    "table",
    { id: "changed-items" },
    h("caption", {}, `${changed.length} item(s) changed verdict`),
    h("thead", {}, h("tr", {}, ["#", "Item", "Base", "Candidate"].map((t) => h("th", { scope: "col" }, t)))),
    h(
      "tbody",
      {},
      changed.map((c) =>
        h(
          "tr",
          {},
          h("td", {}, String(c.datasource_item_id)),
          h("td", {}, JSON.stringify(c.item)),
          h("td", {}, h("strong", {}, c.a.status), " ", c.a.output),
          h("td", {}, h("strong", {}, c.b.status), " ", c.b.output),
        ),
      ),
    ),
  );
}

export function mount(main, { params }) {
  const evalSelect = h("select", { name: "eval" });
  const baseSelect = h("select", { name: "base" });
  const candidateSelect = h("select", { name: "candidate" });
  const out = h("div", { "aria-live": "polite", id: "eval-compare" });
  let stopped = false;

  async function show() {
    const id = evalSelect.value;
    if (!id) return;
    const query = new URLSearchParams();
    if (baseSelect.value) query.set("base", baseSelect.value);
    if (candidateSelect.value) query.set("candidate", candidateSelect.value);
    try {
      const result = await api(`/v1/dashboard/evals/${encodeURIComponent(id)}/compare?${query}`);
      if (stopped) return;
      if (!result.comparison) {
        fill(out, h("p", { class: "muted" }, "This eval needs two completed runs to compare."));
        return;
      }
      baseSelect.value = result.base_run.id;
      candidateSelect.value = result.candidate_run.id;
      fill(out, comparisonTable(result), h("h2", {}, "Items that changed"), changedItems(result));
    } catch (error) {
      if (!stopped) fill(out, errorBox(error));
    }
  }

  async function loadRuns() {
    const id = evalSelect.value;
    fill(baseSelect);
    fill(candidateSelect);
    if (!id) return;
    const runs = await api(`/v1/evals/${encodeURIComponent(id)}/runs?limit=100&order=desc&status=completed`);
    for (const select of [baseSelect, candidateSelect]) {
      fill(select, h("option", { value: "" }, "(chosen for you)"), runs.data.map((r) => h("option", { value: r.id }, runLabel(r))));
    }
    await show();
  }

  async function load() {
    try {
      const evals = await api("/v1/evals?limit=100&order=desc");
      if (stopped) return;
      if (!evals.data.length) {
        fill(out, h("p", { class: "muted" }, "No evals yet: create one with POST /v1/evals or `ownllm eval create`."));
        return;
      }
      fill(evalSelect, evals.data.map((e) => h("option", { value: e.id }, `${e.name} (${e.id})`)));
      const wanted = params.get("eval");
      if (wanted && evals.data.some((e) => e.id === wanted)) evalSelect.value = wanted;
      await loadRuns();
    } catch (error) {
      if (!stopped) fill(out, errorBox(error));
    }
  }

  evalSelect.addEventListener("change", () => loadRuns().catch((e) => fill(out, errorBox(e))));
  baseSelect.addEventListener("change", show);
  candidateSelect.addEventListener("change", show);
  fill(
    main,
    h("h1", {}, TITLE),
    h("p", { class: "muted" }, "A base run against a candidate run of one eval: pass rates per criterion, the delta with its confidence interval, and each item whose verdict changed."),
    h("section", { class: "card grid three" }, field("Eval", evalSelect), field("Base run", baseSelect), field("Candidate run", candidateSelect)),
    out,
  );
  load();
  return () => {
    stopped = true;
  };
}
