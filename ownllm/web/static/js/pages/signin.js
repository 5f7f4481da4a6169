// Sign-in: an API key, checked against /v1/dashboard/me, kept in sessionStorage only.

import { clearKey, setKey } from "../api.js";
import { errorBox, field, fill, h } from "../dom.js";

export const TITLE = "Sign in";

async function whoIs(key) {
  const headers = key ? { Authorization: `Bearer ${key}` } : {};
  const response = await fetch("/v1/dashboard/me", { headers });
  const body = await response.json().catch(() => ({}));
  return { ok: response.ok, body };
}

export function mount(main, { onSignedIn }) {
  const input = h("input", { type: "password", name: "api-key", autocomplete: "off", required: true, spellcheck: "false", placeholder: "sk-…" });
  const status = h("div", { "aria-live": "polite" });
  const reason = sessionStorage.getItem("ownllm.signinReason");
  sessionStorage.removeItem("ownllm.signinReason");
  if (reason) fill(status, errorBox(reason));
  const hint = h("p", { class: "muted" }, "The key stays in this browser tab only (session storage) and is sent as a Bearer token.");
  const form = h(
    "form",
    { class: "card signin", "aria-labelledby": "signin-title" },
    h("h1", { id: "signin-title" }, "Sign in to ownllm"),
    hint,
    field("API key", input, "Ask your admin for a key (ownllm keys create), or use the admin key."),
    h("div", { class: "actions" }, h("button", { type: "submit" }, "Sign in")),
    status,
  );
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const key = input.value.trim();
    if (!key) return;
    fill(status, h("p", { class: "muted" }, "Checking the key…"));
    try {
      const { ok, body } = await whoIs(key);
      if (!ok) {
        clearKey();
        fill(status, errorBox((body.error && body.error.message) || "The key was refused."));
        input.focus();
        return;
      }
      setKey(key);
      onSignedIn(body);
    } catch (error) {
      fill(status, errorBox(error));
    }
  });
  fill(main, form);
  whoIs(null)
    .then(({ ok, body }) => {
      if (ok && body.open_mode) {
        hint.after(h("p", { class: "notice" }, "Open development mode (loopback, no keys yet): any key signs you in as the admin."));
      }
    })
    .catch(() => {});
  input.focus();
}
