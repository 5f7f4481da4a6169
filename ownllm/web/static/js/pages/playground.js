// Playground: chat with the base model, an adapter, or two stacked adapters, streamed;
// optionally side by side with the base model on the same prompt.

import { api, streamChat } from "../api.js";
import { announce, errorBox, field, fill, fmtInt, fmtMs, h } from "../dom.js";

export const TITLE = "Playground";

function option(value, label, selected) {
  return h("option", { value, selected: selected || null }, label);
}

/** One chat column: its own message history and transcript element. */
class Pane {
  constructor(title) {
    this.title = title;
    this.messages = [];
    this.heading = h("h2", {}, title);
    this.transcript = h("div", { class: "transcript", role: "log", "aria-label": `${title} conversation`, tabindex: "0" });
    this.el = h("section", { class: "card pane" }, this.heading, this.transcript);
  }

  setTitle(title) {
    this.title = title;
    this.heading.textContent = title;
    this.transcript.setAttribute("aria-label", `${title} conversation`);
  }

  add(role, text) {
    const body = h("span", { class: "text" }, text);
    const msg = h("div", { class: `msg ${role}` }, h("span", { class: "who-said" }, role === "user" ? "You" : this.title), body);
    this.transcript.append(msg);
    this.transcript.scrollTop = this.transcript.scrollHeight;
    return { msg, body };
  }

  clear() {
    this.messages = [];
    fill(this.transcript);
  }

  async send(request, signal) {
    const { msg, body } = this.add("assistant", "");
    msg.setAttribute("aria-busy", "true");
    try {
      const result = await streamChat({ ...request, messages: [...request.messages, ...this.messages] }, (delta) => {
        body.textContent += delta;
        this.transcript.scrollTop = this.transcript.scrollHeight;
      }, signal);
      this.messages.push({ role: "assistant", content: result.text });
      const tokens = result.usage ? result.usage.completion_tokens : null;
      const seconds = result.totalMs / 1000;
      const rate = tokens && seconds > 0 ? ` · ${(tokens / seconds).toFixed(1)} tok/s` : "";
      msg.append(h("span", { class: "stats" }, `${fmtInt(tokens)} tokens · first token ${fmtMs(result.ttftMs)}${rate} · ${result.finishReason || "stopped"}`));
    } catch (error) {
      if (error.name === "AbortError") {
        msg.append(h("span", { class: "stats" }, "stopped"));
        this.messages.push({ role: "assistant", content: body.textContent });
      } else {
        msg.replaceWith(errorBox(error));
      }
    } finally {
      msg.removeAttribute("aria-busy");
    }
  }
}

export function mount(main, { me, params }) {
  const baseId = me.model;
  const modelSelect = h("select", { name: "model" }, option(baseId, `${baseId} (base)`, true));
  const stackSelect = h("select", { name: "stack" }, option("", "None"));
  const stackWeight = h("input", { type: "number", name: "stack-weight", min: "0", max: "4", step: "0.1", value: "1" });
  const temperature = h("input", { type: "range", id: "temperature", name: "temperature", min: "0", max: "2", step: "0.05", value: "0.7" });
  const tempOut = h("output", { for: "temperature" }, "0.70");
  const maxTokens = h("input", { type: "number", name: "max-tokens", min: "1", max: "32768", value: "256" });
  const system = h("textarea", { name: "system", rows: "3", placeholder: "You are a helpful assistant." });
  const compare = h("input", { type: "checkbox", name: "compare", id: "compare" });
  const prompt = h("textarea", { id: "prompt", name: "prompt", rows: "2", placeholder: "Ask something… (Enter sends, Shift+Enter adds a line)" });
  const sendButton = h("button", { type: "submit" }, "Send");
  const stopButton = h("button", { type: "button", class: "secondary", disabled: true }, "Stop");
  const clearButton = h("button", { type: "button", class: "secondary" }, "Clear");
  const status = h("div", { "aria-live": "polite" });
  const primary = new Pane(baseId);
  const basePane = new Pane(`${baseId} (base)`);
  const panes = h("div", { class: "chat-panes" }, primary.el);
  let controller = null;

  const updateTemp = () => (tempOut.textContent = Number(temperature.value).toFixed(2));
  temperature.addEventListener("input", updateTemp);

  function usingAdapter() {
    return modelSelect.value !== baseId || stackSelect.value !== "";
  }

  function layout() {
    const label = stackSelect.value ? `${modelSelect.value} + ${stackSelect.value}` : modelSelect.value;
    primary.setTitle(label);
    compare.disabled = !usingAdapter();
    if (!usingAdapter()) compare.checked = false;
    stackWeight.disabled = !stackSelect.value;
    const both = compare.checked;
    if (both && !basePane.el.isConnected) panes.append(basePane.el);
    if (!both && basePane.el.isConnected) basePane.el.remove();
  }
  for (const control of [modelSelect, stackSelect, compare]) control.addEventListener("change", layout);

  function request() {
    const messages = system.value.trim() ? [{ role: "system", content: system.value.trim() }] : [];
    const body = {
      model: modelSelect.value,
      messages,
      temperature: Number(temperature.value),
      max_tokens: Number(maxTokens.value) || 256,
    };
    if (stackSelect.value) body.adapters = [{ id: stackSelect.value, weight: Number(stackWeight.value) || 1 }];
    return body;
  }

  async function send(event) {
    event.preventDefault();
    const text = prompt.value.trim();
    if (!text || controller) return;
    fill(status);
    prompt.value = "";
    controller = new AbortController();
    sendButton.disabled = true;
    stopButton.disabled = false;
    const active = compare.checked ? [primary, basePane] : [primary];
    const body = request();
    const jobs = active.map((pane) => {
      pane.messages.push({ role: "user", content: text });
      pane.add("user", text);
      const own = pane === basePane ? { ...body, model: baseId, adapters: undefined } : body;
      return pane.send(own, controller.signal);
    });
    await Promise.all(jobs);
    controller = null;
    sendButton.disabled = false;
    stopButton.disabled = true;
    announce("Answer complete");
    prompt.focus();
  }

  stopButton.addEventListener("click", () => controller && controller.abort());
  clearButton.addEventListener("click", () => {
    primary.clear();
    basePane.clear();
    prompt.focus();
  });
  prompt.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) send(event);
  });

  const settings = h(
    "section",
    { class: "card", "aria-labelledby": "pg-settings" },
    h("h2", { id: "pg-settings" }, "Settings"),
    field("Model or adapter", modelSelect),
    h("div", { class: "row" }, field("Stack an adapter", stackSelect), field("Weight", stackWeight)),
    field(h("span", { class: "label-row" }, "Temperature", tempOut), temperature),
    field("Max tokens", maxTokens),
    field("System prompt", system),
    h("label", { class: "check", for: "compare" }, compare, "Compare with the base model side by side"),
  );
  const composer = h(
    "form",
    { class: "composer", "aria-label": "Send a message" },
    h("div", { class: "field grow" }, h("label", { for: "prompt" }, "Message"), prompt),
    h("div", { class: "actions" }, sendButton, stopButton, clearButton),
  );
  composer.addEventListener("submit", send);

  fill(
    main,
    h("div", { class: "page-head" }, h("h1", {}, "Playground"), h("p", {}, "Chat with the served model and your adapters; answers stream as they are generated.")),
    h("div", { class: "grid side" }, settings, h("div", {}, panes, composer, status)),
  );

  api("/v1/models")
    .then((list) => {
      const adapters = list.data.filter((m) => m.parent === baseId);
      const wanted = params.get("model");
      for (const m of adapters) {
        modelSelect.append(option(m.id, m.id, m.id === wanted));
        stackSelect.append(option(m.id, m.id));
      }
      if (wanted && modelSelect.value !== wanted) {
        fill(status, errorBox(`The model ${wanted} is not available to this key yet.`));
      }
      layout();
    })
    .catch((error) => fill(status, errorBox(error)));
  layout();
  return () => controller && controller.abort();
}
