// The operator's actions on a workflow's page: cancel, terminate, resume a paused one,
// fork from a step, send a signal. Offered only as the API's `actions` lists them (an
// operator token configured, the action applying to the state). The page is rebuilt
// every refresh, so what the fields hold lives in `form`, not in the inputs.
// Uses el, api, flash and refresh from console.js.
"use strict";

const ARM_MS = 5000;  // cancel and terminate ask for a second click within this
const form = { id: null };
const LABELS = { cancel: "Cancel", terminate: "Terminate", "resume-workflow": "Resume", fork: "Fork", signal: "Signal" };

function formFor(d) {
  if (form.id !== d.id) {
    Object.assign(form, { id: d.id, reason: "", step: d.fork_max_step, stepEdited: false, newId: "",
      newIdEdited: false, signalName: "", payload: "", armed: null, armedAt: 0 });
  }
  if (!form.stepEdited) form.step = d.fork_max_step;
  if (!form.signalName && d.signal_name) form.signalName = d.signal_name;
  return form;
}

const forkId = () => (form.newIdEdited ? form.newId : `${form.id}-fork-${form.step}`);

// An input (or a textarea) whose text is form[key].
function field(tag, id, key, placeholder, attrs) {
  return el(tag, Object.assign({ id, class: "field", placeholder, "aria-label": placeholder,
    value: tag === "input" ? form[key] : null, oninput: (ev) => { form[key] = ev.target.value; } }, attrs),
  tag === "textarea" ? form[key] : null);
}

function setStep(step) {
  form.step = step;
  form.stepEdited = true;
  const box = document.getElementById("fork-step");
  if (box) box.value = String(step);
  const id = document.getElementById("fork-id");
  if (id && !form.newIdEdited) id.value = forkId();
}

async function operate(op, body, said) {
  const token = document.getElementById("token").value;
  sessionStorage.setItem("console-token", token);
  try {
    const res = await api("/api/" + op, {
      method: "POST", body: JSON.stringify(body),
      headers: { "X-Console-Token": token, "Content-Type": "application/json", Accept: "application/json" },
    });
    flash("ok", said(res));
    return res;
  } catch (err) {
    flash("error", `${LABELS[op]} refused: ${err.message}`);
    return null;
  } finally {
    form.armed = null;
    refresh();
  }
}

function stopButton(d, op, what) {
  const armed = form.armed === op && Date.now() - form.armedAt < ARM_MS;
  return el("button", {
    class: "btn danger" + (armed ? " armed" : ""), id: op, type: "button",
    text: armed ? `Confirm ${op}` : LABELS[op],
    title: `${what}; asks for a second click`,
    onclick: (ev) => {
      if (!(form.armed === op && Date.now() - form.armedAt < ARM_MS)) {
        Object.assign(form, { armed: op, armedAt: Date.now() });
        ev.target.textContent = `Confirm ${op}`;
        ev.target.classList.add("armed");
        return;
      }
      const id = d.id;
      operate(op, { id, reason: form.reason }, (r) => (r[op === "cancel" ? "cancelled" : "terminated"]
        ? `Workflow ${id} is ${op === "cancel" ? "cancelled: its steps are compensated" : "terminated, without compensation"}.`
        : `Workflow ${id} had finished or was being stopped already: nothing to ${op}.`));
    },
  });
}

function stopSection(d) {
  return el("div", { class: "op", id: "op-stop" },
    el("div", { class: "op-title", text: "Stop" }),
    field("input", "reason", "reason", "reason (journaled with the request)", { maxlength: 1000 }),
    stopButton(d, "cancel", "stops it and compensates the steps it did"),
    stopButton(d, "terminate", "stops it without compensating"),
    el("span", { class: "note", text: "cancel compensates the steps it did; terminate leaves them" }));
}

function resumeSection(d) {
  return el("div", { class: "op", id: "op-resume" },
    el("div", { class: "op-title", text: "Paused" }),
    el("button", { class: "btn", id: "resume-workflow", type: "button", text: "Resume",
      onclick: () => operate("resume-workflow", { id: d.id }, (r) => (r.resumed
        ? `Workflow ${d.id} runs again from its last outcome.` : `Workflow ${d.id} was not paused: nothing to resume.`)) }),
    el("span", { class: "note", text: "runs it again from its last outcome" }));
}

function forkSection(d) {
  return el("div", { class: "op", id: "op-fork" },
    el("div", { class: "op-title", text: "Fork" }),
    el("label", { for: "fork-step", text: "from step" }),
    el("input", { id: "fork-step", class: "field num", type: "number", min: 0, max: d.fork_max_step, step: 1,
      value: form.step, oninput: (ev) => setStep(ev.target.value) }),
    el("label", { for: "fork-id", text: "as" }),
    el("input", { id: "fork-id", class: "field", value: forkId(), "aria-label": "new workflow id",
      oninput: (ev) => { form.newId = ev.target.value; form.newIdEdited = ev.target.value !== ""; } }),
    el("button", { class: "btn", id: "fork", type: "button", text: "Fork",
      onclick: async () => {
        const from = d.id, step = form.step;
        const r = await operate("fork", { id: from, from_step: String(step), new_id: forkId() },
          (res) => `Forked ${from} from step ${res.from_step} as ${res.new_id}: steps before ${res.from_step} copied.`);
        if (r) location.hash = "#/workflow?id=" + encodeURIComponent(r.new_id);
      } }),
    el("span", { class: "note", text: d.timeline.some((t) => t.kind === "compensation")
      ? "it compensated: a fork starts from step 0"
      : `copies the outcomes before the step (0–${d.fork_max_step}), or pick one on the timeline` }));
}

function signalSection(d) {
  return el("div", { class: "op", id: "op-signal" },
    el("div", { class: "op-title", text: "Signal" }),
    field("input", "signal-name", "signalName", "signal name"),
    field("textarea", "signal-payload", "payload", "payload as JSON (empty: null)", { rows: 2 }),
    el("button", { class: "btn", id: "signal-send", type: "button", text: "Send signal",
      onclick: () => {
        const id = d.id, name = form.signalName;
        operate("signal", { id, name, payload_json: form.payload }, (r) => (r.delivered
          ? `Signal ${name} sent to ${id}.` : `Signal ${name} not delivered: ${id} had it already, or finished.`));
      } }),
    el("span", { class: "note", text: d.signal_name ? `it waits for “${d.signal_name}”` : "" }));
}

// The operator's panel on a workflow's page, or null when nothing is offered.
function renderActions(d) {
  const has = (a) => (d.actions || []).includes(a);
  if (!["cancel", "resume-workflow", "fork", "signal"].some(has)) return null;
  formFor(d);
  return [el("h2", { text: "Operate" }), el("div", { class: "ops", id: "ops" },
    has("signal") ? signalSection(d) : null,
    has("resume-workflow") ? resumeSection(d) : null,
    has("fork") ? forkSection(d) : null,
    has("cancel") ? stopSection(d) : null)];
}

// A timeline step's "fork from here", when a fork from it is offered.
function forkHere(d, t) {
  if (!(d.actions || []).includes("fork") || t.kind !== "outcome" || t.step > d.fork_max_step) return null;
  return el("button", { class: "tl-fork", type: "button", "data-step": t.step, text: "fork from here",
    title: `fill in a fork that copies steps 0–${t.step - 1} and runs step ${t.step} again`,
    onclick: () => { setStep(t.step); document.getElementById("fork-id")?.focus(); } });
}
