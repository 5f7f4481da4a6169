// Models & adapters: the base model and every adapter this key can see, with lineage
// (parents, datasets, metrics); compose several into a new one, export, delete.

import { api, download } from "../api.js";
import { announce, errorBox, field, fill, fmtBytes, fmtTime, h } from "../dom.js";

export const TITLE = "Models & adapters";

const METHODS = [
  ["cat", "cat — exact stacking (ranks add up)"],
  ["linear", "linear — weighted average (equal ranks)"],
  ["ties", "ties — trim, elect sign, merge"],
  ["dare_linear", "dare_linear — random drop, rescale"],
  ["dare_ties", "dare_ties — random drop, ties merge"],
];
const EXPORTS = [
  ["hf", "Merged model, HF (.tar.gz)"],
  ["gguf", "Merged model, GGUF f16"],
  ["gguf-lora", "Adapter only, GGUF LoRA"],
];

function metricText(metrics) {
  const parts = [];
  if (metrics.train_loss !== undefined) parts.push(`train loss ${metrics.train_loss.toFixed(3)}`);
  if (metrics.valid_loss !== undefined) parts.push(`valid loss ${metrics.valid_loss.toFixed(3)}`);
  if (metrics.step !== undefined) parts.push(`step ${metrics.step}`);
  return parts.join(" · ") || "–";
}

function lineage(adapter, names) {
  const parents = adapter.parents.map((id) => names.get(id) || id);
  const datasets = adapter.datasets.map((d) => d.file_id || d.id || d.filename || JSON.stringify(d));
  const hp = Object.entries(adapter.hyperparameters || {})
    .filter(([, v]) => typeof v !== "object")
    .map(([k, v]) => `${k}=${v}`);
  return h(
    "details",
    {},
    h("summary", {}, "Details"),
    h(
      "dl",
      { class: "lineage" },
      h("dt", {}, "Id"), h("dd", { class: "mono" }, adapter.id),
      h("dt", {}, "Base"), h("dd", {}, adapter.base_model),
      h("dt", {}, "Parents"), h("dd", {}, parents.join(", ") || "none"),
      h("dt", {}, "Datasets"), h("dd", { class: "mono" }, datasets.join(", ") || "none"),
      h("dt", {}, "Settings"), h("dd", {}, hp.join(", ") || "–"),
      h("dt", {}, "Size"), h("dd", {}, fmtBytes(adapter.size_bytes)),
      h("dt", {}, "Created"), h("dd", {}, fmtTime(adapter.created_at)),
      h("dt", {}, "sha256"), h("dd", { class: "mono" }, adapter.sha256.slice(0, 16)),
    ),
  );
}

function lineageSummary(adapter, names) {
  const parts = [];
  if (adapter.parents.length) parts.push(`from ${adapter.parents.map((id) => names.get(id) || id).join(" + ")}`);
  const files = adapter.datasets.map((d) => d.file_id).filter(Boolean);
  if (files.length) parts.push(`trained on ${files.join(", ")}`);
  if (adapter.source === "composed" && adapter.hyperparameters && adapter.hyperparameters.method) {
    parts.push(`method ${adapter.hyperparameters.method}`);
  }
  return parts.join("; ") || `${adapter.source}, no parents`;
}

export function mount(main, { me }) {
  const status = h("div", { "aria-live": "polite" });
  const tableBody = h("tbody");
  const composeSlot = h("div");
  let adapters = [];
  const showCheckpoints = h("input", { type: "checkbox", id: "show-checkpoints" });
  const checkpointNote = h("span", { class: "muted" });
  showCheckpoints.addEventListener("change", () => render());

  const table = h(
    "table",
    { class: "adapters" },
    h("caption", {}, "Base model and adapters visible to this key"),
    h(
      "thead",
      {},
      h("tr", {}, ["Name", "Source", "Lineage", "Metrics", "Rank", "Actions"].map((t) =>
        h("th", { scope: "col", class: t === "Rank" ? "num" : null }, t),
      )),
    ),
    tableBody,
  );

  function exportControls(adapter) {
    const select = h("select", { "aria-label": `Export format for ${adapter.name}` }, EXPORTS.map(([v, l]) => h("option", { value: v }, l)));
    const button = h("button", { type: "button", class: "secondary" }, "Export");
    button.addEventListener("click", async () => {
      button.disabled = true;
      fill(status, h("p", { class: "muted" }, `Exporting ${adapter.name}…`));
      try {
        await download(`/v1/adapters/${encodeURIComponent(adapter.id)}/export`, { format: select.value });
        fill(status, h("p", { class: "notice" }, `Exported ${adapter.name}.`));
      } catch (error) {
        fill(status, errorBox(error));
      } finally {
        button.disabled = false;
      }
    });
    return [select, button];
  }

  function deleteButton(adapter) {
    const button = h("button", { type: "button", class: "danger", "aria-label": `Delete ${adapter.name}` }, "Delete");
    button.addEventListener("click", async () => {
      if (!window.confirm(`Delete the adapter ${adapter.name}? This cannot be undone.`)) return;
      try {
        await api(`/v1/adapters/${encodeURIComponent(adapter.id)}`, { method: "DELETE" });
        announce(`Deleted ${adapter.name}`);
        fill(status, h("p", { class: "notice" }, `Deleted ${adapter.name}.`));
        await load();
      } catch (error) {
        fill(status, errorBox(error));
      }
    });
    return button;
  }

  function render() {
    const names = new Map(adapters.map((a) => [a.id, a.name]));
    const base = h(
      "tr",
      {},
      h("th", { scope: "row" }, me.model, " ", h("span", { class: "badge" }, "base")),
      h("td", {}, "served"),
      h("td", {}, "–"),
      h("td", {}, "–"),
      h("td", { class: "num" }, "–"),
      h("td", {}, h("a", { href: `#/playground?model=${encodeURIComponent(me.model)}` }, "Chat")),
    );
    const shown = adapters.filter((a) => showCheckpoints.checked || a.source !== "checkpoint");
    const hidden = adapters.length - shown.length;
    checkpointNote.textContent = hidden ? `${hidden} checkpoint(s) hidden.` : "";
    const rows = shown.map((a) =>
      h(
        "tr",
        {},
        h("th", { scope: "row" }, h("span", { class: "mono" }, a.name), lineage(a, names)),
        h("td", {}, h("span", { class: "badge" }, a.source)),
        h("td", { class: "lineage" }, lineageSummary(a, names)),
        h("td", { class: "metrics" }, metricText(a.metrics || {})),
        h("td", { class: "num" }, a.rank),
        h(
          "td",
          {},
          h("div", { class: "actions compact" },
            h("a", { href: `#/playground?model=${encodeURIComponent(a.name)}` }, "Chat"),
            deleteButton(a)),
          h("div", { class: "actions compact" }, ...exportControls(a)),
        ),
      ),
    );
    fill(tableBody, base, rows);
    fill(composeSlot, composeForm());
  }

  function composeForm() {
    if (adapters.length < 1) {
      return h("p", { class: "muted" }, "Train or import an adapter first; then compose adapters into a new one here.");
    }
    const name = h("input", { type: "text", name: "name", required: true, placeholder: "support-and-legal" });
    const method = h("select", { name: "method" }, METHODS.map(([v, l]) => h("option", { value: v }, l)));
    const density = h("input", { type: "number", name: "density", min: "0.01", max: "1", step: "0.01", value: "0.5" });
    const picks = adapters.filter((a) => a.source !== "checkpoint").map((a) => {
      const check = h("input", { type: "checkbox", value: a.id, id: `pick-${a.id}` });
      const weight = h("input", { type: "number", step: "0.1", value: "1", class: "weight", "aria-label": `Weight for ${a.name}` });
      return { check, weight, row: h("div", { class: "pick" }, h("label", { class: "check", for: check.id }, check, a.name), weight) };
    });
    const result = h("div", { "aria-live": "polite" });
    const form = h(
      "form",
      {},
      h("div", { class: "row" }, field("New adapter name", name), field("Method", method), field("Density (ties/dare)", density)),
      h("fieldset", {}, h("legend", {}, "Adapters and weights"), picks.map((p) => p.row)),
      h("div", { class: "actions" }, h("button", { type: "submit" }, "Compose")),
      result,
    );
    form.addEventListener("submit", async (event) => {
      event.preventDefault();
      const chosen = picks.filter((p) => p.check.checked).map((p) => ({ id: p.check.value, weight: Number(p.weight.value) }));
      if (!chosen.length) return fill(result, errorBox("Pick at least one adapter."));
      const body = { name: name.value.trim(), method: method.value, adapters: chosen };
      if (method.value.includes("ties") || method.value.includes("dare")) body.density = Number(density.value);
      try {
        const made = await api("/v1/adapters/compose", { method: "POST", body });
        announce(`Composed ${made.name}`);
        await load();
        fill(status, h("p", { class: "notice" }, `Composed ${made.name} from ${chosen.length} adapter(s).`));
      } catch (error) {
        fill(result, errorBox(error));
      }
    });
    return form;
  }

  async function load() {
    try {
      adapters = (await api("/v1/adapters")).data;
      render();
    } catch (error) {
      fill(status, errorBox(error));
    }
  }

  fill(
    main,
    h("div", { class: "page-head" }, h("h1", {}, "Models & adapters"), h("p", {}, "Every adapter carries its lineage: the parents it came from, the data it saw, its metrics.")),
    h(
      "div",
      { class: "stack" },
      status,
      h(
        "section",
        { class: "card", "aria-label": "Models and adapters" },
        h("div", { class: "row" }, h("label", { class: "check", for: "show-checkpoints" }, showCheckpoints, "Show training checkpoints"), checkpointNote),
        table,
      ),
      h("section", { class: "card", "aria-labelledby": "compose-title" }, h("h2", { id: "compose-title" }, "Compose adapters"), composeSlot),
    ),
  );
  load();
}
