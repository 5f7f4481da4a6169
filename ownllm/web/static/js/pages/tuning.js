// Fine-tuning: upload a chat JSONL file (problems shown by line), start a job with the
// common settings, and watch it live — status, progress, ETA, train/validation loss curve,
// events — then cancel it or open the result in the playground.

import { api } from "../api.js";
import { lineChart } from "../chart.js";
import { announce, errorBox, field, fill, fmtDuration, fmtInt, fmtTime, h } from "../dom.js";

export const TITLE = "Fine-tuning";
const ACTIVE = ["validating_files", "queued", "running"];
const POLL_MS = 1500;

function option(value, label, selected) {
  return h("option", { value, selected: selected || null }, label);
}

/** Events arrive newest first in pages; keep every one seen, keyed by id. Returns all
 * events seen (for the loss curve) and the newest page as the server ordered it. */
async function loadEvents(jobId, seen) {
  let after = null;
  let newest = null;
  for (let page = 0; page < 20; page += 1) {
    const query = new URLSearchParams({ limit: "200" });
    if (after) query.set("after", after);
    const list = await api(`/v1/fine_tuning/jobs/${jobId}/events?${query}`);
    newest = newest || list.data;
    let fresh = 0;
    for (const event of list.data) {
      if (!seen.has(event.id)) {
        seen.set(event.id, event);
        fresh += 1;
      }
    }
    if (!list.has_more || fresh < list.data.length || !list.data.length) break;
    after = list.data[list.data.length - 1].id;
  }
  return { all: [...seen.values()], newest: newest || [] };
}

function metricPoints(events) {
  const byStep = new Map();
  for (const event of events) {
    const d = event.data || {};
    if (typeof d.step === "number" && typeof d.train_loss === "number") byStep.set(d.step, d);
  }
  return [...byStep.values()].sort((a, b) => a.step - b.step);
}

export function mount(main, { me, params }) {
  const status = h("div", { "aria-live": "polite" });
  const fileInput = h("input", { type: "file", name: "file", accept: ".jsonl,application/jsonl,application/json" });
  const uploadResult = h("div", { "aria-live": "polite" });
  const trainSelect = h("select", { name: "training_file", required: true });
  const validSelect = h("select", { name: "validation_file" });
  const modelSelect = h("select", { name: "model" }, option(me.model, `${me.model} (base)`, true));
  const epochs = h("input", { type: "text", name: "n_epochs", value: "auto", inputmode: "numeric" });
  const batch = h("input", { type: "text", name: "batch_size", value: "auto", inputmode: "numeric" });
  const lrm = h("input", { type: "text", name: "learning_rate_multiplier", value: "auto", inputmode: "decimal" });
  const rank = h("input", { type: "number", name: "lora_r", min: "1", max: "256", value: "8" });
  const suffix = h("input", { type: "text", name: "suffix", maxlength: "64", placeholder: "support-bot" });
  const jobsBody = h("tbody");
  const watch = h("section", { class: "card", "aria-labelledby": "watch-title" });
  let selected = params.get("job");
  let timer = null;
  let stopped = false;
  const seen = new Map();

  async function loadFiles(pick) {
    const list = await api("/v1/files?purpose=fine-tune");
    const files = list.data.sort((a, b) => b.created_at - a.created_at);
    const current = pick || trainSelect.value;
    fill(trainSelect, files.length ? null : option("", "Upload a file first"), files.map((f) => option(f.id, `${f.filename} (${f.id})`, f.id === current)));
    const currentValid = validSelect.value;
    fill(validSelect, option("", "None"), files.map((f) => option(f.id, `${f.filename} (${f.id})`, f.id === currentValid)));
  }

  async function upload(event) {
    event.preventDefault();
    const file = fileInput.files[0];
    if (!file) return fill(uploadResult, errorBox("Choose a .jsonl file first."));
    const form = new FormData();
    form.append("purpose", "fine-tune");
    form.append("file", file, file.name);
    fill(uploadResult, h("p", { class: "muted" }, `Uploading ${file.name}…`));
    try {
      const stored = await api("/v1/files", { method: "POST", form });
      const check = await api(`/v1/dashboard/files/${stored.id}/problems`);
      await loadFiles(check.num_problems ? null : stored.id);
      if (!check.num_problems) {
        fill(uploadResult, h("p", { class: "notice" }, `Uploaded ${stored.filename} as ${stored.id}: ${fmtInt(check.num_examples)} examples, no problems.`));
        announce("Upload complete, no problems found");
        return;
      }
      const shown = check.problems.map((p) => h("li", {}, h("strong", {}, `Line ${p.line}: `), p.reason));
      const more = check.num_problems > check.problems.length ? h("p", {}, `…and ${check.num_problems - check.problems.length} more.`) : null;
      fill(
        uploadResult,
        h(
          "div",
          { class: "error", role: "alert" },
          h("p", {}, `${stored.filename}: ${check.num_problems} invalid line(s), ${check.num_examples} valid example(s). Fix these lines and upload again:`),
          h("ul", { class: "problems", tabindex: "0", "aria-label": "Invalid lines" }, shown),
          more,
        ),
      );
    } catch (error) {
      fill(uploadResult, errorBox(error));
    }
  }

  function hyper(input, name, parse) {
    const text = input.value.trim();
    if (!text || text === "auto") return "auto";
    const value = parse(text);
    if (!Number.isFinite(value)) throw Object.assign(new Error(`${name} must be a number or auto`), { param: `hyperparameters.${name}` });
    return value;
  }

  async function start(event) {
    event.preventDefault();
    try {
      const body = {
        model: modelSelect.value,
        training_file: trainSelect.value,
        hyperparameters: {
          n_epochs: hyper(epochs, "n_epochs", (t) => parseInt(t, 10)),
          batch_size: hyper(batch, "batch_size", (t) => parseInt(t, 10)),
          learning_rate_multiplier: hyper(lrm, "learning_rate_multiplier", Number),
        },
        lora: { r: Number(rank.value) || 8 },
      };
      if (validSelect.value) body.validation_file = validSelect.value;
      if (suffix.value.trim()) body.suffix = suffix.value.trim();
      if (!body.training_file) throw new Error("Upload and pick a training file first.");
      const job = await api("/v1/fine_tuning/jobs", { method: "POST", body });
      announce(`Started job ${job.id}`);
      select(job.id);
      loadJobs();
    } catch (error) {
      fill(status, errorBox(error));
    }
  }

  async function loadJobs() {
    const list = await api("/v1/fine_tuning/jobs?limit=20");
    fill(
      jobsBody,
      list.data.map((job) => {
        const button = h("button", { type: "button", class: "secondary", "aria-label": `Watch ${job.id}` }, "Watch");
        button.addEventListener("click", () => select(job.id));
        return h(
          "tr",
          { class: job.id === selected ? "selected" : null },
          h("td", { class: "mono" }, job.id),
          h("td", {}, h("span", { class: `badge ${job.status}` }, job.status)),
          h("td", { class: "mono" }, job.fine_tuned_model || job.model),
          h("td", {}, fmtTime(job.created_at)),
          h("td", {}, button),
        );
      }),
    );
    if (!list.data.length) fill(jobsBody, h("tr", {}, h("td", { colspan: "5", class: "muted" }, "No jobs yet.")));
    if (!selected && list.data.length) select(list.data[0].id, false);
  }

  function select(jobId, focus = true) {
    selected = jobId;
    seen.clear();
    history.replaceState(null, "", `#/tuning?job=${encodeURIComponent(jobId)}`);
    for (const row of jobsBody.querySelectorAll("tr")) row.classList.toggle("selected", row.firstChild && row.firstChild.textContent === jobId);
    clearTimeout(timer);
    poll(focus);
  }

  async function cancel(jobId) {
    try {
      await api(`/v1/fine_tuning/jobs/${jobId}/cancel`, { method: "POST" });
      announce("Cancel requested");
      poll();
    } catch (error) {
      fill(status, errorBox(error));
    }
  }

  function renderJob(job, events) {
    const points = metricPoints(events.all);
    const last = points[points.length - 1];
    const total = last ? last.total_steps : null;
    const fraction = job.status === "succeeded" ? 1 : last && total ? last.step / total : 0;
    const bar = h("div");
    bar.style.width = `${Math.round(fraction * 100)}%`;
    const eta = ACTIVE.includes(job.status) && job.estimated_finish ? fmtDuration(job.estimated_finish - Date.now() / 1000) : "–";
    const active = ACTIVE.includes(job.status);
    const actions = h("div", { class: "actions job-actions" });
    if (active) {
      const stop = h("button", { type: "button", class: "danger" }, "Cancel job");
      stop.addEventListener("click", () => cancel(job.id));
      actions.append(stop);
    }
    if (job.fine_tuned_model) {
      actions.append(h("a", { href: `#/playground?model=${encodeURIComponent(job.fine_tuned_model)}` }, "Open in playground"));
    }
    // a DPO job's steps also carry its reward margin and accuracy: drawn beside the loss
    const series = (name, key) => ({ name, points: points.filter((p) => typeof p[key] === "number").map((p) => ({ x: p.step, y: p[key] })) });
    const isDpo = job.method?.type === "dpo";
    const dpoLabel = isDpo && last && typeof last.train_reward_margin === "number"
      ? `, reward margin ${last.train_reward_margin.toFixed(3)}, reward accuracy ${last.train_reward_accuracy.toFixed(2)}` : "";
    const chart = lineChart({
      label: `Loss by step for ${job.id}: ${points.length} points${last ? `, latest training loss ${last.train_loss.toFixed(3)}${dpoLabel}` : ""}`,
      series: [
        series("training loss", "train_loss"),
        series("validation loss", "valid_loss"),
        ...(isDpo ? [series("reward margin", "train_reward_margin"), series("reward accuracy", "train_reward_accuracy")] : []),
      ],
      xFormat: (x) => fmtInt(x),
      yFormat: (y) => y.toFixed(2),
      yZero: false,
    });
    chart.dataset.points = String(points.length);
    chart.id = "loss-chart";
    const recent = events.newest.slice(0, 8).map((e) => h("li", { class: e.level === "error" ? "error-text" : null }, h("span", { class: "muted" }, `${fmtTime(e.created_at)} `), e.message));
    fill(
      watch,
      h("h2", { id: "watch-title", tabindex: "-1" }, "Job ", h("span", { class: "mono" }, job.id)),
      h(
        "div",
        { class: "grid three" },
        h("p", { class: "stat" }, "Status", h("strong", {}, h("span", { class: `badge ${job.status}`, id: "job-status" }, job.status))),
        h("p", { class: "stat" }, "Step", h("strong", {}, last ? `${fmtInt(last.step)} / ${fmtInt(total)}` : "–")),
        h("p", { class: "stat" }, "Time left", h("strong", {}, eta)),
      ),
      h("div", { class: "progress", role: "progressbar", "aria-label": "Training progress", "aria-valuemin": "0", "aria-valuemax": "100", "aria-valuenow": String(Math.round(fraction * 100)) }, bar),
      job.error ? errorBox(job.error) : null,
      h("h3", {}, "Loss"),
      chart,
      h("p", { class: "muted" }, `Model ${job.model} · trained tokens ${fmtInt(job.trained_tokens)} · result `, h("span", { class: "mono", id: "job-result" }, job.fine_tuned_model || "–")),
      actions,
      h("h3", {}, "Recent events"),
      h("ul", { class: "events", tabindex: "0", "aria-label": "Recent events" }, recent),
    );
    return active;
  }

  async function poll(focus = false) {
    if (!selected || stopped) return;
    const jobId = selected;
    try {
      // the job before its events: once it reads finished, every step's event is written
      const job = await api(`/v1/fine_tuning/jobs/${jobId}`);
      const events = await loadEvents(jobId, seen);
      if (stopped || jobId !== selected) return;
      const active = renderJob(job, events);
      if (focus) watch.querySelector("h2").focus?.();
      if (active) timer = setTimeout(poll, POLL_MS);
      else loadJobs().catch(() => {});
    } catch (error) {
      fill(watch, errorBox(error));
    }
  }

  const uploadForm = h(
    "form",
    { "aria-labelledby": "upload-title" },
    h("h2", { id: "upload-title" }, "1. Upload training data"),
    h("p", { class: "muted" }, 'One JSON object per line: {"messages": [{"role": "user", …}, {"role": "assistant", …}]}'),
    field("JSONL file", fileInput),
    h("div", { class: "actions" }, h("button", { type: "submit" }, "Upload")),
    uploadResult,
  );
  uploadForm.addEventListener("submit", upload);
  const startForm = h(
    "form",
    { "aria-labelledby": "start-title" },
    h("h2", { id: "start-title" }, "2. Start a job"),
    field("Base model", modelSelect, "The served model, or one of your ft: models to continue training it."),
    field("Training file", trainSelect),
    field("Validation file (optional)", validSelect),
    h("div", { class: "row" }, field("Epochs", epochs), field("Batch size", batch)),
    h("div", { class: "row" }, field("Learning rate ×", lrm), field("LoRA rank", rank)),
    field("Suffix", suffix, "Part of the model name: ft:base:tenant:suffix:job."),
    h("div", { class: "actions" }, h("button", { type: "submit" }, "Start fine-tuning")),
  );
  startForm.addEventListener("submit", start);
  watch.append(h("h2", { id: "watch-title" }, "Job"), h("p", { class: "muted" }, "Start a job or pick one from the list to watch it here."));

  fill(
    main,
    h("div", { class: "page-head" }, h("h1", {}, "Fine-tuning"), h("p", {}, "LoRA fine-tuning on your chat data, live.")),
    h(
      "div",
      { class: "grid side" },
      h("div", { class: "stack" }, h("section", { class: "card" }, uploadForm), h("section", { class: "card" }, startForm)),
      h(
        "div",
        { class: "stack" },
        status,
        watch,
        h(
          "section",
          { class: "card", "aria-labelledby": "jobs-title" },
          h("h2", { id: "jobs-title" }, "Jobs"),
          h("table", {}, h("thead", {}, h("tr", {}, ["Job", "Status", "Model", "Created", "Actions"].map((t) => h("th", { scope: "col" }, t)))), jobsBody),
        ),
      ),
    ),
  );
  loadFiles().catch((error) => fill(status, errorBox(error)));
  api("/v1/models")
    .then((list) => {
      for (const m of list.data.filter((x) => x.parent === me.model && x.id.startsWith("ft:") && !x.id.includes(":ckpt-step-"))) {
        modelSelect.append(option(m.id, m.id));
      }
    })
    .catch(() => {});
  loadJobs().catch((error) => fill(status, errorBox(error)));
  if (selected) poll();
  return () => {
    stopped = true;
    clearTimeout(timer);
  };
}
