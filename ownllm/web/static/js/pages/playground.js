// Playground: chat with the base model, an adapter, or two stacked adapters, streamed;
// optionally side by side with the base model on the same prompt. With function tools
// (a JSON array, as the API takes them) each tool call is drawn as it streams: its name,
// then its arguments growing, then the finish reason.

import { api, streamChat } from "../api.js";
import { announce, errorBox, field, fill, fmtInt, fmtMs, h } from "../dom.js";
import { sourcesList, storeSelect, withFileSearch } from "../sources.js";

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

  /** The element of one streamed tool call: its name, then its arguments as they grow. */
  toolCall(msg, shown, call) {
    let el = shown.get(call.index);
    if (!el) {
      const name = h("code", { class: "tool-name" });
      const args = h("pre", { class: "tool-arguments" });
      el = { name, args, box: h("div", { class: "tool-call", role: "group", "aria-label": "Tool call" }, h("span", { class: "tool-label" }, "Tool call "), name, args) };
      shown.set(call.index, el);
      msg.querySelector(".tool-calls").append(el.box);
    }
    el.name.textContent = call.name;
    el.args.textContent = call.arguments;
    el.box.setAttribute("aria-label", `Tool call ${call.name}`);
  }

  async send(request, signal) {
    const { msg, body } = this.add("assistant", "");
    msg.append(h("div", { class: "tool-calls" }));
    msg.setAttribute("aria-busy", "true");
    const shown = new Map();
    try {
      const onDelta = (delta) => {
        body.textContent += delta;
        this.transcript.scrollTop = this.transcript.scrollHeight;
      };
      const onToolCall = (call) => {
        this.toolCall(msg, shown, call);
        this.transcript.scrollTop = this.transcript.scrollHeight;
      };
      const result = await streamChat({ ...request, messages: [...request.messages, ...this.messages] }, onDelta, signal, onToolCall);
      const said = { role: "assistant", content: result.text || null };
      if (result.toolCalls.length) {
        said.tool_calls = result.toolCalls.map((c) => ({ id: c.id, type: "function", function: { name: c.name, arguments: c.arguments } }));
      }
      this.messages.push(said);
      const tokens = result.usage ? result.usage.completion_tokens : null;
      const seconds = result.totalMs / 1000;
      const rate = tokens && seconds > 0 ? ` · ${(tokens / seconds).toFixed(1)} tok/s` : "";
      msg.append(h("span", { class: "stats" }, `${fmtInt(tokens)} tokens · first token ${fmtMs(result.ttftMs)}${rate} · ${result.finishReason || "stopped"}`));
      const sources = sourcesList(result.citations);
      if (sources) msg.append(sources);
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
  const tools = h("textarea", { name: "tools", rows: "4", spellcheck: "false", class: "mono", placeholder: '[{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}]' });
  const toolChoice = h("select", { name: "tool-choice" }, option("auto", "auto", true), option("required", "required"), option("none", "none"));
  const compare = h("input", { type: "checkbox", name: "compare", id: "compare" });
  const store = storeSelect(api);
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
    const toolsText = tools.value.trim();
    if (toolsText) {
      let parsed;
      try {
        parsed = JSON.parse(toolsText);
      } catch (error) {
        throw new Error(`Tools are not valid JSON: ${error.message}`);
      }
      if (!Array.isArray(parsed)) throw new Error("Tools must be a JSON array of function tools.");
      body.tools = parsed;
      body.tool_choice = toolChoice.value;
    }
    return withFileSearch(body, store.value);
  }

  function toolsChanged() {
    toolChoice.disabled = !tools.value.trim();
  }
  tools.addEventListener("input", toolsChanged);
  toolsChanged();

  async function send(event) {
    event.preventDefault();
    const text = prompt.value.trim();
    if (!text || controller) return;
    fill(status);
    let body;
    try {
      body = request();
    } catch (error) {
      fill(status, errorBox(error));
      return;
    }
    prompt.value = "";
    controller = new AbortController();
    sendButton.disabled = true;
    stopButton.disabled = false;
    const active = compare.checked ? [primary, basePane] : [primary];
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
    field("Tools (JSON)", tools, "Function tools as the API takes them; calls appear as they stream."),
    field("Tool choice", toolChoice),
    field("Answer from a vector store", store),
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
