// The sources of an answer grounded in vector stores (chat's ownllm `file_search`): the
// `citations` of the first stream delta, listed under the answer by the number the answer
// cites them with ([1], [2], ...), each with its file, score and the retrieved text.

import { h } from "./dom.js";

const EXCERPT = 280;

function excerpt(text) {
  const flat = (text || "").replace(/\s+/g, " ").trim();
  return flat.length > EXCERPT ? `${flat.slice(0, EXCERPT)}…` : flat;
}

/** A "Sources" list for `citations` (OpenAI-style file_citation objects), or null. */
export function sourcesList(citations) {
  if (!citations || !citations.length) return null;
  const items = citations.map((c) =>
    h(
      "li",
      { class: "source", value: String(c.index) },
      h("span", { class: "source-file" }, `[${c.index}] ${c.filename || c.file_id}`),
      typeof c.score === "number" ? h("span", { class: "source-score" }, ` · score ${c.score.toFixed(2)}`) : null,
      h("span", { class: "source-text" }, excerpt(c.text)),
    ),
  );
  return h("section", { class: "sources", "aria-label": "Sources" }, h("span", { class: "who-said" }, "Sources"), h("ol", {}, ...items));
}

/** A select of the key's vector stores; its value is "" (none) or a store id. */
export function storeSelect(api) {
  const select = h("select", { name: "vector-store" }, h("option", { value: "" }, "None"));
  api("/v1/vector_stores?limit=100")
    .then((page) => {
      for (const store of page.data) {
        const label = `${store.name || store.id} (${store.file_counts.completed} files)`;
        select.append(h("option", { value: store.id }, label));
      }
    })
    .catch(() => {}); // a key without stores, or without the scope: only "None"
  return select;
}

/** The ownllm `file_search` extension of a chat body for the selected store. */
export function withFileSearch(body, storeId) {
  return storeId ? { ...body, file_search: { vector_store_ids: [storeId] } } : body;
}
