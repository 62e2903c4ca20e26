// The registry's pages: follow a conversion, push with a progress bar, compare versions.
// Plain JavaScript talking to the registry's own API; no external requests.
"use strict";

function $(selector, root) { return (root || document).querySelector(selector); }
function $all(selector, root) { return Array.from((root || document).querySelectorAll(selector)); }
function el(tag, attrs, children) {
  const node = document.createElement(tag);
  Object.entries(attrs || {}).forEach(([k, v]) => {
    if (k === "text") node.textContent = v; else if (k === "class") node.className = v; else node.setAttribute(k, v);
  });
  (children || []).forEach((c) => node.append(c));
  return node;
}
// Sent with every request that changes something: a signed-in session needs it (registry.access).
function csrfToken() { const meta = $('meta[name="csrf-token"]'); return meta ? meta.content : ""; }
function megabytes(n) { return (n / 1048576).toFixed(n < 10485760 ? 2 : 1) + " MB"; }
function errorMessage(body, status) {
  if (body && body.error) return typeof body.error === "string" ? body.error : body.error.message;
  return "the server answered " + status;
}

// -- version page: follow a conversion until it ends, then its SavedModel's build ---------
function followConversion() {
  const card = $("#status");
  if (!card || !card.dataset.poll) return;
  const poll = () => fetch(card.dataset.poll).then((r) => r.json()).then((v) => {
    if (card.dataset.shown === "saved_model") {  // ready; TF Serving's SavedModel still being built
      if ((v.saved_model || {}).state !== "pending") window.location.reload();
      else setTimeout(poll, 1000);
      return;
    }
    const badge = $(".badge", card);
    badge.textContent = v.status;
    badge.className = "badge badge-" + v.status;
    badge.dataset.status = v.status;
    $("#status-message").textContent = v.status_message;
    if (v.status === "ready" || v.status === "failed") window.location.reload();
    else setTimeout(poll, 1000);
  }).catch(() => setTimeout(poll, 3000));
  setTimeout(poll, 1000);
}

// -- push form ------------------------------------------------------------------------------
const FIELD_BY_CODE = {
  invalid_model_name: "name", invalid_meta_graph: "meta", invalid_checkpoint_index: "index",
  missing_data_shard: "data", invalid_data_shard: "data", invalid_labels: "labels",
  invalid_preprocessing: "preprocessing", conflicting_files: "frozen",
  unsafe_archive: "saved_model", invalid_saved_model: "saved_model", invalid_signature: "signature",
  invalid_keras: "keras",
};

// The file fields each kind of push sends.
const KIND_FILES = {
  checkpoint: ["meta", "index", "data", "graph", "labels"], frozen: ["frozen", "labels"],
  saved_model: ["saved_model", "labels"], keras: ["keras", "labels"],
};
const KIND_FILE_HINT = { frozen: "Choose the frozen .pb file.", saved_model: "Choose the SavedModel .zip or .tar.gz.",
  keras: "Choose the .keras or .h5 file." };

const MODEL_NAME = /^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$/;  // registry.catalog.MODEL_NAME_RE

function fieldFor(error) {
  const quoted = /'(meta|index|data|graph|frozen|saved_model|keras|labels)'/.exec(error.message);
  if (quoted) return quoted[1];
  if (error.code === "invalid_node_name") return /input node/.test(error.message) ? "input_nodes" : "output_nodes";
  if (error.code === "missing_files") {
    const missing = /missing (index|data)/.exec(error.message);
    if (missing) return missing[1];
    return /graph/.test(error.message) ? "meta" : null;
  }
  return FIELD_BY_CODE[error.code] || null;
}

function showFieldError(form, field, message) {
  const box = field && $(`[data-field="${field}"]`, form);
  const target = box ? $(".field-error", box) : $("#form-error", form);
  target.textContent = message;
  target.hidden = false;
  if (box) box.classList.add("invalid");
  (box || target).scrollIntoView({ block: "center" });
}

function clearErrors(form) {
  $all(".field-error, #form-error", form).forEach((e) => { e.hidden = true; e.textContent = ""; });
  $all(".invalid", form).forEach((e) => e.classList.remove("invalid"));
}

function setupPush() {
  const form = $("#push-form");
  if (!form) return;
  const toggle = () => {
    const kind = $('input[name="kind"]:checked', form).value;
    Object.keys(KIND_FILES).forEach((k) => { $(`.${k}-only`, form).hidden = k !== kind; });
    // SavedModels and Keras models bring their inputs and outputs with them.
    const tf2 = kind === "saved_model" || kind === "keras";
    ["output_nodes", "input_nodes"].forEach((f) => { $(`[data-field="${f}"]`, form).hidden = tf2; });
  };
  $all('input[name="kind"]', form).forEach((r) => r.addEventListener("change", toggle));
  toggle();
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    clearErrors(form);
    const name = $("#name", form).value.trim();
    if (!name) return showFieldError(form, "name", "Give the model a name.");
    // Checked here too: a name with "/" or ".." would change the upload's URL and come back as a bare 404.
    if (!MODEL_NAME.test(name)) {
      return showFieldError(form, "name", `invalid model name '${name}': use 1-128 letters, digits, '_', '-' or '.', starting with a letter or digit`);
    }
    const kind = $('input[name="kind"]:checked', form).value;
    const data = new FormData();
    KIND_FILES[kind].forEach((f) => Array.from($("#" + f, form).files).forEach((file) => data.append(f, file, file.name)));
    if (kind !== "checkpoint" && !$("#" + kind, form).files.length) return showFieldError(form, kind, KIND_FILE_HINT[kind]);
    const textFields = kind === "saved_model" ? ["signature"] : kind === "keras" ? [] : ["output_nodes", "input_nodes"];
    [...textFields, "description", "input_height", "input_width", "input_mean", "input_std"]
      .forEach((f) => { const v = form.elements[f].value.trim(); if (v) data.append(f, v); });
    const request = new XMLHttpRequest();
    const progress = $("#upload-progress");
    const text = $("#upload-text");
    $(".upload", form).hidden = false;
    $("#push-button").disabled = true;
    request.upload.addEventListener("progress", (e) => {
      if (!e.lengthComputable) return;
      progress.max = e.total;
      progress.value = e.loaded;
      text.textContent = `${megabytes(e.loaded)} of ${megabytes(e.total)} sent`;
    });
    request.addEventListener("load", () => {
      $("#push-button").disabled = false;
      let body = null;
      try { body = JSON.parse(request.responseText); } catch (e) { body = null; }
      if (request.status === 202 && body) {
        text.textContent = "uploaded: converting…";
        window.location.href = `/models/${encodeURIComponent(body.model)}/versions/${body.version}`;
        return;
      }
      $(".upload", form).hidden = true;
      const error = body && body.error && typeof body.error === "object" ? body.error : { message: errorMessage(body, request.status) };
      showFieldError(form, fieldFor(error), error.message);
    });
    request.addEventListener("error", () => {
      $("#push-button").disabled = false;
      showFieldError(form, null, "The upload was interrupted: check the connection and push again.");
    });
    request.open("POST", `/api/v1/models/${encodeURIComponent(name)}/versions`);
    request.setRequestHeader("X-CSRF-Token", csrfToken());
    request.send(data);
  });
}

// -- compare page ---------------------------------------------------------------------------
function setupCompare() {
  const form = $("#compare-form");
  if (!form) return;
  const chosen = [];  // {name, blob}
  const list = $("#chosen-images");
  const render = () => {
    list.replaceChildren(...chosen.map((c) => el("li", {}, [el("img", { src: URL.createObjectURL(c.blob), alt: c.name }), el("span", { text: c.name })])));
  };
  const add = (files) => { Array.from(files).forEach((f) => chosen.push({ name: f.name, blob: f })); render(); };
  $("#images").addEventListener("change", (e) => add(e.target.files));
  const drop = $("#drop");
  drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => { e.preventDefault(); drop.classList.remove("over"); add(e.dataTransfer.files); });
  const samples = $("#use-samples");
  if (samples) {
    samples.addEventListener("click", async () => {
      const items = JSON.parse(samples.dataset.samples);
      for (const item of items) {
        const blob = await fetch(samples.dataset.base + item.name).then((r) => r.blob());
        chosen.push({ name: item.name, blob });
      }
      $("#expected").value = items.map((i) => i.expected).join("\n");
      render();
    });
  }
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const error = $("#form-error", form);
    error.hidden = true;
    const versions = $all('input[name="version"]:checked', form).map((c) => c.value);
    if (!versions.length) { error.textContent = "Choose at least one version."; error.hidden = false; return; }
    if (!chosen.length) { error.textContent = "Add at least one image."; error.hidden = false; return; }
    const data = new FormData();
    data.append("versions", versions.join(","));
    const expected = $("#expected").value.trim();
    if (expected) data.append("expected", expected);
    chosen.forEach((c) => data.append("image", c.blob, c.name));
    $("#compare-button").disabled = true;
    try {
      const response = await fetch(`/v1/models/${encodeURIComponent(form.dataset.model)}:compare`, { method: "POST", body: data, headers: { "X-CSRF-Token": csrfToken() } });
      const body = await response.json();
      if (!response.ok) throw new Error(errorMessage(body, response.status));
      showComparison(body);
    } catch (e) {
      error.textContent = e.message;
      error.hidden = false;
    } finally {
      $("#compare-button").disabled = false;
    }
  });

  function showComparison(body) {
    const results = $("#results");
    results.hidden = false;
    const percent = (x) => (100 * x).toFixed(1) + "%";
    $("#version-summary tbody").replaceChildren(...body.versions.map((v) => el("tr", { "data-version": v.version }, [
      el("td", { text: "v" + v.version + (v.aliases.length ? " (" + v.aliases.join(", ") + ")" : "") }),
      el("td", { text: v.latency_ms.toFixed(1) + " ms" }),
      el("td", { text: v.latency_per_image_ms.toFixed(1) + " ms" }),
      el("td", { class: "accuracy-top1", text: v.accuracy ? percent(v.accuracy.top1) : "–" }),
      el("td", { text: v.accuracy ? percent(v.accuracy.top5) : "–" }),
    ])));
    $("#pairs").textContent = body.agreement.pairs.map((p) =>
      `v${p.a} vs v${p.b}: top-1 agreement ${percent(p.top1_agreement)}` +
      (p.mean_abs_score_diff !== null ? `, mean |score difference| ${p.mean_abs_score_diff.toFixed(4)}` : "")).join(" · ");
    $("#image-results").replaceChildren(...body.images.map((image, i) => {
      const card = el("div", { class: "image-result" + (image.agree ? "" : " disagree"), "data-image": image.image }, [
        el("h3", { text: image.image + (image.agree ? "" : " — versions disagree") + (image.expected ? ` (expected ${image.expected})` : "") }),
      ]);
      const blob = chosen.find((c) => c.name === image.image);
      if (blob) card.append(el("img", { class: "thumb", src: URL.createObjectURL(blob.blob), alt: image.image }));
      const row = el("div", { class: "charts" });
      body.versions.forEach((v) => {
        const chart = el("div", { class: "chart", "data-version": v.version }, [el("h4", { text: "v" + v.version })]);
        v.results[i].predictions.forEach((p) => {
          chart.append(el("div", { class: "bar-row" + (image.expected && p.label === image.expected ? " expected" : ""), "data-label": p.label, "data-score": p.score }, [
            el("span", { class: "bar-label", text: p.label }),
            el("span", { class: "bar", style: `width: ${Math.max(1, 100 * p.score).toFixed(1)}%` }),
            el("span", { class: "bar-value", text: p.score.toFixed(3) }),
          ]));
        });
        row.append(chart);
      });
      card.append(row);
      return card;
    }));
    results.scrollIntoView();
  }
}

// Compare on a stored evaluation set or pasted JSON inputs: the report is stored; go to its permalink
// (a large set runs as a job: its page shows the progress).
function setupCompareAny() {
  const form = $("#compare-any-form");
  if (!form) return;
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const error = $("#any-error", form);
    error.hidden = true;
    const versions = $all('#compare-form input[name="version"]:checked').map((c) => c.value);
    const chosenSet = $("#eval-set").value;
    const text = $("#instances").value.trim();
    let body = { versions };
    try {
      if (!versions.length) throw new Error("Choose at least one version (above).");
      if (chosenSet) body.eval_set = chosenSet;
      else if (text) body = { ...JSON.parse(text), versions };
      else throw new Error("Choose an evaluation set, or paste JSON inputs.");
    } catch (e) {
      error.textContent = e instanceof SyntaxError ? "The JSON inputs do not parse: " + e.message : e.message;
      error.hidden = false;
      return;
    }
    const signature = $("#signature-name").value.trim();
    if (signature) body.signature_name = signature;
    $("#compare-any-button").disabled = true;
    try {
      const response = await fetch(`/v1/models/${encodeURIComponent(form.dataset.model)}:compare`, {
        method: "POST", body: JSON.stringify(body),
        headers: { "Content-Type": "application/json", "X-CSRF-Token": csrfToken() } });
      const answer = await response.json();
      if (!response.ok) throw new Error(errorMessage(answer, response.status));
      window.location.href = `/models/${encodeURIComponent(form.dataset.model)}/comparisons/${answer.report}`;
    } catch (e) {
      error.textContent = e.message;
      error.hidden = false;
    } finally {
      $("#compare-any-button").disabled = false;
    }
  });
}

// A report still running: reload its page until it is done.
function followReport() {
  const bar = $("#report-progress");
  if (bar) setTimeout(() => window.location.reload(), 1500);
}

document.addEventListener("DOMContentLoaded", () => {
  followConversion(); setupPush(); setupCompare(); setupCompareAny(); followReport();
});
