// The API client: the signed-in key (sessionStorage only), JSON calls, and SSE chat streams.

const KEY = "ownllm.apiKey";

export function getKey() {
  return sessionStorage.getItem(KEY);
}

export function setKey(key) {
  sessionStorage.setItem(KEY, key);
}

export function clearKey() {
  sessionStorage.removeItem(KEY);
}

export class ApiError extends Error {
  constructor(message, status, param = null, code = null) {
    super(message);
    this.status = status;
    this.param = param;
    this.code = code;
  }
}

function headers(extra = {}) {
  const key = getKey();
  return key ? { Authorization: `Bearer ${key}`, ...extra } : extra;
}

async function errorFrom(response) {
  let body = null;
  try {
    body = await response.json();
  } catch {
    // not JSON: fall through to the status text
  }
  const e = body && body.error;
  if (e) return new ApiError(e.message, response.status, e.param, e.code);
  return new ApiError(`${response.status} ${response.statusText}`, response.status);
}

/** Call the API; JSON in (body) or a FormData (form); JSON out. Throws ApiError. */
export async function api(path, { method = "GET", body, form, signal } = {}) {
  const init = { method, signal, headers: headers() };
  if (form) {
    init.body = form;
  } else if (body !== undefined) {
    init.body = JSON.stringify(body);
    init.headers = headers({ "Content-Type": "application/json" });
  }
  const response = await fetch(path, init);
  if (response.status === 401) window.dispatchEvent(new CustomEvent("ownllm:unauthorized"));
  if (!response.ok) throw await errorFrom(response);
  return response.json();
}

/** Download a response body as a file named by the server's Content-Disposition. */
export async function download(path, body) {
  const response = await fetch(path, {
    method: "POST",
    headers: headers({ "Content-Type": "application/json" }),
    body: JSON.stringify(body),
  });
  if (!response.ok) throw await errorFrom(response);
  const disposition = response.headers.get("Content-Disposition") || "";
  const match = /filename="?([^";]+)"?/.exec(disposition);
  const url = URL.createObjectURL(await response.blob());
  const a = document.createElement("a");
  a.href = url;
  a.download = match ? match[1] : "download";
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10_000);
}

/**
 * Stream a chat completion: calls onDelta(text) per content delta and onToolCall(call) each
 * time a tool call grows (its name first, then its arguments in fragments, as OpenAI
 * streams them: `delta.tool_calls[{index, id, function: {name, arguments}}]`), and resolves
 * with {text, toolCalls, usage, finishReason, ttftMs, totalMs}; each call is
 * {index, id, name, arguments}; `citations` are ownllm's file_search sources (the first
 * delta carries them). Server-sent events exactly as OpenAI sends them.
 */
export async function streamChat(body, onDelta, signal, onToolCall = () => {}) {
  const started = performance.now();
  const response = await fetch("/v1/chat/completions", {
    method: "POST",
    signal,
    headers: headers({ "Content-Type": "application/json", Accept: "text/event-stream" }),
    body: JSON.stringify({ ...body, stream: true, stream_options: { include_usage: true } }),
  });
  if (!response.ok) throw await errorFrom(response);
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  const result = { text: "", toolCalls: [], usage: null, finishReason: null, ttftMs: null, totalMs: null, citations: null };
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += value;
    let cut;
    while ((cut = buffer.search(/\r?\n\r?\n/)) >= 0) {
      const event = buffer.slice(0, cut);
      buffer = buffer.slice(cut).replace(/^\r?\n\r?\n/, "");
      const data = event
        .split(/\r?\n/)
        .filter((line) => line.startsWith("data:"))
        .map((line) => line.slice(5).trimStart())
        .join("\n");
      if (!data || data === "[DONE]") continue;
      const chunk = JSON.parse(data);
      if (chunk.error) throw new ApiError(chunk.error.message, 500, chunk.error.param, chunk.error.code);
      if (chunk.usage) result.usage = chunk.usage;
      for (const choice of chunk.choices || []) {
        if (choice.delta && Array.isArray(choice.delta.citations)) result.citations = choice.delta.citations;
        const text = choice.delta && choice.delta.content;
        if (text) {
          if (result.ttftMs === null) result.ttftMs = performance.now() - started;
          result.text += text;
          onDelta(text);
        }
        for (const part of (choice.delta && choice.delta.tool_calls) || []) {
          if (result.ttftMs === null) result.ttftMs = performance.now() - started;
          const index = part.index ?? result.toolCalls.length;
          const call = (result.toolCalls[index] ||= { index, id: "", name: "", arguments: "" });
          if (part.id) call.id = part.id;
          if (part.function && part.function.name) call.name += part.function.name;
          if (part.function && part.function.arguments) call.arguments += part.function.arguments;
          onToolCall(call);
        }
        if (choice.finish_reason) result.finishReason = choice.finish_reason;
      }
    }
  }
  result.totalMs = performance.now() - started;
  return result;
}
