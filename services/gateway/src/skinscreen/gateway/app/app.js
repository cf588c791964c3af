// skinscreen's clinician app: plain ES module, no build step, no dependency.
// It speaks only the public API (docs/api.md) with the clinic's key, kept in sessionStorage.

const API = "/v1";
const KEY_ITEM = "skinscreen.apiKey";
const PAGE_SIZE = 10;
const WAIT_S = 25;

// The models the app offers, in this order, when the registry has an active version of them.
const MODELS = [
  { name: "skinscreen-fusion", label: "Photo and questions (phone photo)", clinical: true },
  { name: "skinscreen-dermoscopy", label: "Photo only (dermatoscope image)", clinical: false },
];
// The 15 regions of the clinical contract (skinscreen.core.clinical.Region), in plain words.
const REGIONS = [
  ["FACE", "Face"], ["NOSE", "Nose"], ["LIP", "Lip"], ["EAR", "Ear"], ["SCALP", "Scalp"],
  ["NECK", "Neck"], ["CHEST", "Chest"], ["BACK", "Back"], ["ABDOMEN", "Abdomen (belly)"],
  ["ARM", "Upper arm"], ["FOREARM", "Forearm"], ["HAND", "Hand"], ["THIGH", "Thigh"],
  ["FOOT", "Foot"], ["OTHER", "Somewhere else"],
];
const SYMPTOMS = [
  ["itch", "Does it itch?"], ["grew", "Has it grown?"], ["hurt", "Does it hurt?"],
  ["changed", "Has it changed?"], ["bleed", "Has it bled?"],
  ["elevation", "Is it raised above the skin?"],
];
const ANSWERS = [["yes", "Yes", true], ["no", "No", false], ["unknown", "Don't know", null]];
const DIAGNOSES = {
  ACK: "Actinic keratosis", BCC: "Basal cell carcinoma", MEL: "Melanoma",
  NEV: "Nevus (mole)", SCC: "Squamous cell carcinoma", SEK: "Seborrheic keratosis",
  OTHER: "Something else",
};
const REASONS = {
  cancer_probability: "the probability of skin cancer reached the model's threshold",
  melanoma_probability: "the probability of melanoma reached the model's melanoma threshold",
};
const STATUS = {
  queued: "Waiting for the model…",
  running: "The model is looking at the photo…",
  done: "Done.",
  failed: "The screening could not be completed.",
};

const $ = (id) => document.getElementById(id);

class ApiError extends Error {
  constructor(status, detail, retryAfter) {
    super(typeof detail === "string" ? detail : `HTTP ${status}`);
    this.status = status;
    this.detail = detail;
    this.retryAfter = retryAfter;
  }
}

async function api(path, { method = "GET", body, headers = {} } = {}) {
  let response;
  try {
    response = await fetch(API + path, {
      method,
      body,
      headers: { ...headers, Authorization: `Bearer ${sessionStorage.getItem(KEY_ITEM)}` },
    });
  } catch {
    throw new ApiError(0, "The server cannot be reached: check the connection and try again.");
  }
  const text = await response.text();
  let data = null;
  try {
    data = text ? JSON.parse(text) : null;
  } catch {
    data = null;
  }
  if (!response.ok) {
    const detail = data?.detail ?? `${response.status} ${response.statusText}`;
    const error = new ApiError(response.status, detail, response.headers.get("Retry-After"));
    if (response.status === 401 && path !== SIGN_IN_CHECK) signOut(`Signed out: ${error.message}`);
    throw error;
  }
  return data;
}

// --- Errors next to their fields ------------------------------------------------------------

function clearErrors(form) {
  for (const el of form.querySelectorAll(".error")) {
    el.hidden = true;
    el.textContent = "";
  }
  for (const el of form.querySelectorAll("[aria-invalid]")) el.removeAttribute("aria-invalid");
}

function showError(el, message) {
  el.textContent = el.textContent ? `${el.textContent} ${message}` : message;
  el.hidden = false;
}

// The field a FastAPI error names: its last name in `loc` (["body","clinical","age"]: age).
function fieldOf(loc) {
  const names = (loc || []).filter((part) => typeof part === "string" && part !== "body");
  return names.at(-1);
}

// Shows each of the API's messages by the field its loc names (an element `<field>-error`
// inside `form`), the rest in `fallback`; focuses the first field named.
function showApiErrors(form, error, fallback, byStatus = {}) {
  const entries = Array.isArray(error.detail)
    ? error.detail
    : [{ loc: byStatus[error.status] ? ["body", byStatus[error.status]] : [], msg: error.message }];
  let first = null;
  for (const entry of entries) {
    const field = fieldOf(entry.loc);
    const slot = field && form.querySelector(`#${CSS.escape(field)}-error`);
    let message = entry.msg;
    if (error.status === 429 && error.retryAfter) message += ` (try again in ${error.retryAfter} s)`;
    showError(slot || fallback, message);
    const input = field && form.querySelector(`[name="${CSS.escape(field)}"]`);
    if (input) {
      input.setAttribute("aria-invalid", "true");
      first ??= input;
    }
  }
  (first || fallback).focus?.();
}

// --- Views ------------------------------------------------------------------------------------

const VIEWS = ["signin-view", "new-view", "result-view", "history-view"];

function show(view) {
  for (const id of VIEWS) $(id).hidden = id !== view;
  $("nav").hidden = view === "signin-view";
  for (const [button, target] of [["nav-new", "new-view"], ["nav-history", "history-view"]]) {
    if (view === target) $(button).setAttribute("aria-current", "page");
    else $(button).removeAttribute("aria-current");
  }
  const heading = $(view).querySelector("h2");
  heading.tabIndex = -1;
  heading.focus();
}

// --- Sign in ------------------------------------------------------------------------------------

// Any valid key may read the registry: the sign-in check, and which models are served.
const SIGN_IN_CHECK = `/models/${MODELS[0].name}/versions`;

async function signIn(key) {
  sessionStorage.setItem(KEY_ITEM, key);
  try {
    await api(SIGN_IN_CHECK);
  } catch (error) {
    sessionStorage.removeItem(KEY_ITEM);
    throw error;
  }
  await loadModels();
  resetScreening();
  show("new-view");
}

function signOut(message = "") {
  sessionStorage.removeItem(KEY_ITEM);
  watching = null;
  $("signin-form").reset();
  const error = $("api-key-error");
  error.textContent = message;
  error.hidden = !message;
  show("signin-view");
}

async function loadModels() {
  const select = $("model");
  select.replaceChildren();
  for (const model of MODELS) {
    let versions;
    try {
      versions = await api(`/models/${model.name}/versions`);
    } catch (error) {
      if (error.status === 404) continue;
      throw error;
    }
    const active = versions.items.find((v) => v.status === "active");
    if (active) select.append(new Option(`${model.label}`, model.name));
  }
  updateQuestions();
}

function currentModel() {
  return MODELS.find((m) => m.name === $("model").value) || MODELS[0];
}

function updateQuestions() {
  const questions = $("questions");
  questions.hidden = !currentModel().clinical;
  questions.disabled = questions.hidden;
}

// --- The form -----------------------------------------------------------------------------------

let photo = null;
let previewUrl = null;
let idempotencyKey = null;

function buildForm() {
  const region = $("region");
  for (const [value, label] of REGIONS) region.append(new Option(label, value));
  const symptoms = $("symptoms");
  for (const [name, question] of SYMPTOMS) {
    const set = document.createElement("fieldset");
    set.className = "choices";
    set.setAttribute("aria-describedby", `${name}-error`);
    const legend = document.createElement("legend");
    legend.textContent = question;
    set.append(legend);
    const row = document.createElement("div");
    row.className = "row";
    for (const [value, label] of ANSWERS) {
      const option = document.createElement("label");
      const input = document.createElement("input");
      Object.assign(input, { type: "radio", name, value });
      option.append(input, ` ${label}`);
      row.append(option);
    }
    const error = document.createElement("p");
    Object.assign(error, { id: `${name}-error`, className: "error", hidden: true });
    error.setAttribute("role", "alert");
    set.append(row, error);
    symptoms.append(set);
  }
}

function randomKey() {
  // crypto.randomUUID needs a secure context; getRandomValues does not.
  const bytes = crypto.getRandomValues(new Uint8Array(16));
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

function choosePhoto(file) {
  if (!file) return;
  photo = file;
  idempotencyKey = null;
  if (previewUrl) URL.revokeObjectURL(previewUrl);
  previewUrl = URL.createObjectURL(file);
  const img = $("preview-img");
  const caption = $("preview-caption");
  const size = file.size < 1e6 ? `${Math.ceil(file.size / 1e3)} kB` : `${(file.size / 1e6).toFixed(1)} MB`;
  caption.textContent = `${file.name || "Photo"} (${size})`;
  // An <img> follows the photo's EXIF orientation (CSS image-orientation: from-image).
  img.onerror = () => {
    img.hidden = true;
    caption.textContent +=
      ": this browser cannot show this photo (HEIC photos show in Safari only); it is sent as it is.";
  };
  img.onload = () => {
    img.hidden = false;
  };
  img.hidden = false;
  img.src = previewUrl;
  $("preview").hidden = false;
  $("image-error").hidden = true;
}

function clinicalAnswers(form) {
  const age = form.elements.age.value.trim();
  const answers = { age: age === "" ? null : Number(age), region: form.elements.region.value || null };
  for (const [name] of SYMPTOMS) {
    const checked = form.querySelector(`input[name="${name}"]:checked`);
    // Unanswered: left out, so the API names the question that needs an answer.
    if (checked) answers[name] = ANSWERS.find(([value]) => value === checked.value)[2];
  }
  return answers;
}

async function submitScreening(event) {
  event.preventDefault();
  const form = event.currentTarget;
  clearErrors(form);
  const model = currentModel();
  const body = new FormData();
  if (photo) body.append("image", photo, photo.name || "photo.jpg");
  if (model.clinical) body.append("clinical", JSON.stringify(clinicalAnswers(form)));
  body.append("model", model.name);
  idempotencyKey ??= randomKey();
  const send = $("send");
  send.disabled = true;
  send.textContent = "Sending…";
  try {
    const accepted = await api("/screenings", {
      method: "POST",
      body,
      headers: { "Idempotency-Key": idempotencyKey },
    });
    idempotencyKey = null;
    openScreening(accepted.id);
  } catch (error) {
    if (error.status !== 401) {
      // 413 (too large) and 415 (not an image) are about the photo.
      showApiErrors(form, error, $("form-error"), { 413: "image", 415: "image" });
    }
  } finally {
    send.disabled = false;
    send.textContent = "Send for screening";
  }
}

function resetScreening() {
  const form = $("screening-form");
  form.reset();
  clearErrors(form);
  photo = null;
  idempotencyKey = null;
  $("preview").hidden = true;
  updateQuestions();
}

// --- Status and result --------------------------------------------------------------------------

let watching = null;

async function openScreening(id) {
  watching = id;
  $("result").replaceChildren();
  $("diagnosis-form").hidden = true;
  $("status").textContent = "Loading…";
  show("result-view");
  try {
    let screening = await api(`/screenings/${id}`);
    while (watching === id && (screening.status === "queued" || screening.status === "running")) {
      $("status").textContent = STATUS[screening.status];
      $("status").dataset.status = screening.status;
      screening = await api(`/screenings/${id}?wait=${WAIT_S}`);
    }
    if (watching !== id) return;
    $("status").textContent = STATUS[screening.status];
    $("status").dataset.status = screening.status;
    renderResult(screening);
    await openDiagnosis(id);
  } catch (error) {
    if (watching === id && error.status !== 401) $("status").textContent = error.message;
  }
}

const percent = (p) => `${(p * 100).toFixed(1)} %`;

function element(tag, props = {}, ...children) {
  const el = Object.assign(document.createElement(tag), props);
  el.append(...children);
  return el;
}

function term(list, label, value, id) {
  const dd = element("dd", {}, value);
  if (id) dd.id = id;
  list.append(element("dt", {}, label), dd);
  return dd;
}

function renderResult(screening) {
  const out = $("result");
  if (screening.status === "failed") {
    out.append(element("p", { className: "error" }, screening.failure_reason || ""));
    return;
  }
  const result = screening.result;
  const decision = element(
    "div",
    { id: "decision", className: result.suspicious ? "decision refer" : "decision routine" },
    element(
      "h3",
      {},
      result.suspicious ? "Refer to a specialist" : "No sign of cancer found: routine follow-up",
    ),
  );
  if (result.suspicious && result.reasons?.length) {
    decision.append(
      element("p", { id: "reasons" }, `Why: ${result.reasons.map((r) => REASONS[r] || r).join("; ")}.`),
    );
  }
  const facts = element("dl", { className: "facts" });
  const probability = term(facts, "Probability of skin cancer", percent(result.cancer_probability), "probability");
  probability.dataset.value = String(result.cancer_probability);
  term(facts, "Threshold for referral", percent(result.threshold), "threshold");
  if (result.melanoma_threshold != null) {
    term(facts, "Melanoma threshold", percent(result.melanoma_threshold));
  }
  term(facts, "Model", `${screening.model}, version ${result.model_version}`, "model-version");
  if (screening.clinical) {
    const c = screening.clinical;
    const region = REGIONS.find(([value]) => value === c.region)?.[1] ?? c.region;
    term(facts, "Patient", `${c.age} years, ${region.toLowerCase()}`);
  }
  term(facts, "Sent", new Date(screening.created_at).toLocaleString());
  out.append(decision, facts);
  if (result.diagnoses) {
    const rows = result.diagnoses.map((d) =>
      element("tr", {}, element("th", { scope: "row" }, `${DIAGNOSES[d.diagnosis] || d.diagnosis} (${d.diagnosis})`),
        element("td", {}, percent(d.probability))),
    );
    out.append(
      element(
        "table",
        { id: "diagnoses" },
        element("caption", {}, "What the lesion may be, by the model"),
        element("thead", {}, element("tr", {}, element("th", { scope: "col" }, "Diagnosis"),
          element("th", { scope: "col" }, "Probability"))),
        element("tbody", {}, ...rows),
      ),
    );
  }
  out.append(
    element(
      "p",
      { className: "notice" },
      "This is not a diagnosis. skinscreen estimates how likely a lesion is to be a skin cancer, to " +
        "decide who should see a specialist first; only a specialist, and a biopsy, can say what it is.",
    ),
  );
}

// --- Confirmed diagnosis --------------------------------------------------------------------------

async function openDiagnosis(id) {
  const form = $("diagnosis-form");
  form.reset();
  clearErrors(form);
  form.dataset.screening = id;
  $("diagnosis-saved").hidden = true;
  form.hidden = false;
  try {
    showSaved(await api(`/screenings/${id}/diagnosis`));
  } catch (error) {
    if (error.status !== 404) throw error;
  }
}

function showSaved(recorded) {
  const form = $("diagnosis-form");
  form.elements.diagnosis.value = recorded.diagnosis;
  for (const radio of form.querySelectorAll('input[name="confirmed_by"]')) {
    radio.checked = radio.value === recorded.confirmed_by;
  }
  const how = recorded.confirmed_by === "histopathology" ? "by biopsy" : "by consensus";
  const saved = $("diagnosis-saved");
  saved.textContent = `Recorded: ${DIAGNOSES[recorded.diagnosis]}, ${how}, ${new Date(recorded.updated_at).toLocaleString()}.`;
  saved.hidden = false;
}

async function submitDiagnosis(event) {
  event.preventDefault();
  const form = event.currentTarget;
  clearErrors(form);
  $("diagnosis-saved").hidden = true;
  const body = {
    diagnosis: form.elements.diagnosis.value || null,
    confirmed_by: form.querySelector('input[name="confirmed_by"]:checked')?.value ?? null,
  };
  const patient = form.elements.patient_id.value.trim();
  if (patient) body.patient_id = patient;
  try {
    const recorded = await api(`/screenings/${form.dataset.screening}/diagnosis`, {
      method: "POST",
      body: JSON.stringify(body),
      headers: { "Content-Type": "application/json" },
    });
    showSaved(recorded);
  } catch (error) {
    if (error.status !== 401) showApiErrors(form, error, $("diagnosis-form-error"));
  }
}

// --- History --------------------------------------------------------------------------------------

let nextCursor = null;

async function loadHistory(more = false) {
  const list = $("history-list");
  const errorSlot = $("history-error");
  errorSlot.hidden = true;
  if (!more) {
    list.replaceChildren();
    nextCursor = null;
  }
  const query = new URLSearchParams({ limit: String(PAGE_SIZE) });
  if (more && nextCursor) query.set("cursor", nextCursor);
  try {
    const page = await api(`/screenings?${query}`);
    for (const screening of page.items) list.append(historyItem(screening));
    nextCursor = page.next_cursor;
    $("history-more").hidden = !nextCursor;
    if (!list.children.length) list.append(element("li", {}, "No screenings yet."));
  } catch (error) {
    if (error.status !== 401) showError(errorSlot, error.message);
  }
}

function historyItem(screening) {
  const when = new Date(screening.created_at).toLocaleString();
  let summary = STATUS[screening.status];
  let tone = "";
  if (screening.status === "done") {
    const r = screening.result;
    summary = `${r.suspicious ? "Refer to a specialist" : "Routine follow-up"}, ${percent(r.cancer_probability)}`;
    tone = r.suspicious ? "refer" : "routine";
  }
  const where = screening.clinical
    ? ` · ${REGIONS.find(([v]) => v === screening.clinical.region)?.[1] ?? ""}, ${screening.clinical.age} y`
    : " · photo only";
  const button = element(
    "button",
    { type: "button", className: `history-item ${tone}` },
    element("span", { className: "summary" }, summary),
    element("span", { className: "when" }, `${when}${where}`),
  );
  button.dataset.id = screening.id;
  button.addEventListener("click", () => openScreening(screening.id));
  return element("li", {}, button);
}

// --- Wiring ---------------------------------------------------------------------------------------

function start() {
  buildForm();
  $("signin-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    const key = $("api-key").value.trim();
    const slot = $("api-key-error");
    slot.hidden = true;
    slot.textContent = "";
    if (!key) {
      showError(slot, "Enter your clinic's API key.");
      $("api-key").focus();
      return;
    }
    try {
      await signIn(key);
    } catch (error) {
      showError(slot, error.status === 401 ? `This key was refused: ${error.message}` : error.message);
      $("api-key").setAttribute("aria-invalid", "true");
      $("api-key").focus();
    }
  });
  $("sign-out").addEventListener("click", () => signOut());
  $("nav-new").addEventListener("click", () => {
    watching = null;
    show("new-view");
  });
  $("nav-history").addEventListener("click", () => {
    watching = null;
    show("history-view");
    loadHistory();
  });
  $("history-more").addEventListener("click", () => loadHistory(true));
  $("another").addEventListener("click", () => {
    watching = null;
    resetScreening();
    show("new-view");
  });
  $("camera").addEventListener("change", (e) => choosePhoto(e.target.files[0]));
  $("file").addEventListener("change", (e) => choosePhoto(e.target.files[0]));
  $("model").addEventListener("change", updateQuestions);
  $("screening-form").addEventListener("input", (e) => {
    if (e.target.type !== "file") idempotencyKey = null;
  });
  $("screening-form").addEventListener("submit", submitScreening);
  $("diagnosis-form").addEventListener("submit", submitDiagnosis);

  if (sessionStorage.getItem(KEY_ITEM)) {
    signIn(sessionStorage.getItem(KEY_ITEM)).catch((error) => signOut(error.message));
  } else {
    show("signin-view");
  }
}

start();
