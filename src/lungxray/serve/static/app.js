// lungxray web page: upload an X-ray, show label, probabilities, heatmap. Vanilla JS, no build step.
// Server text is always inserted with textContent (never innerHTML), so nothing it echoes can run.
"use strict";

(function () {
  const KEY_STORE = "lungxray.apiKey";
  const $ = (id) => document.getElementById(id);
  let card = null;
  let maxBytes = 20 * 1048576;
  let busy = false;

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (k === "class") node.className = v;
      else node.setAttribute(k, v);
    }
    for (const c of children) node.append(c);
    return node;
  }

  function authHeaders() {
    const key = sessionStorage.getItem(KEY_STORE);
    return key ? { "X-API-Key": key } : {};
  }

  function fmt(p, digits = 2) {
    return p === null || p === undefined || Number.isNaN(p) ? "n/a" : Number(p).toFixed(digits);
  }

  function pct(p) {
    return `${Math.max(0, Math.min(100, p * 100)).toFixed(1)}%`;
  }

  // ------------------------------------------------------------------------------- messages

  function showError(message) {
    const box = $("error");
    box.textContent = message;
    box.hidden = false;
    box.scrollIntoView({ block: "center" });
  }

  function clearError() {
    $("error").hidden = true;
    $("error").textContent = "";
  }

  function setBusy(on) {
    busy = on;
    $("spinner").hidden = !on;
    $("dropzone").classList.toggle("disabled", on);
    $("file-input").disabled = on;
  }

  async function errorMessage(response) {
    let detail = "";
    try {
      const body = await response.json();
      detail = typeof body.detail === "string" ? body.detail : JSON.stringify(body.detail);
    } catch (_) {
      detail = response.statusText;
    }
    switch (response.status) {
      case 401:
        return "This server needs an API key, or the key given was not accepted. Enter it below.";
      case 408:
        return `The upload was too slow: ${detail}`;
      case 413:
        return `The file is too large: ${detail}`;
      case 415:
        return `This kind of upload is not accepted: ${detail}`;
      case 422:
        return `This file could not be read as an image: ${detail}`;
      case 503: {
        const wait = response.headers.get("Retry-After") || "a few";
        return `The server is busy analysing other images. Try again in ${wait} s.`;
      }
      default:
        return `The server could not analyse the image (HTTP ${response.status}): ${detail}`;
    }
  }

  function askForKey() {
    $("key-form").hidden = false;
    $("api-key").focus();
  }

  // ----------------------------------------------------------------------------- drift banner

  async function loadHealth() {
    try {
      const response = await fetch("/health");
      if (!response.ok) return;
      const h = await response.json();
      const warnings = Array.isArray(h.warnings) ? h.warnings : [];
      const banner = $("drift-banner");
      banner.textContent = warnings.length ? `Warning: ${warnings.join(" ")}` : "";
      banner.hidden = warnings.length === 0;
    } catch (_) {
      // the model card's fetch reports an unreachable server
    }
  }

  // ----------------------------------------------------------------------------- model card

  async function loadModel() {
    let response;
    try {
      response = await fetch("/api/model", { headers: authHeaders() });
    } catch (err) {
      showError(`Could not reach the server (${err.message}).`);
      return;
    }
    if (response.status === 401) {
      $("model-badge").textContent = "API key needed";
      showError(await errorMessage(response));
      askForKey();
      return;
    }
    if (!response.ok) {
      showError(await errorMessage(response));
      return;
    }
    card = await response.json();
    $("key-form").hidden = true;
    clearError();
    renderCard(card);
  }

  function metricText(m) {
    if (m === null || m === undefined) return null;
    if (typeof m === "number") return fmt(m, 3);
    if (typeof m === "object" && "value" in m) {
      if (m.value === null) return null;
      const ci = m.ci_low !== null && m.ci_low !== undefined ? ` (95% CI ${fmt(m.ci_low, 3)}\u2013${fmt(m.ci_high, 3)})` : "";
      return `${fmt(m.value, 3)}${ci}`;
    }
    return null;
  }

  function renderCard(c) {
    maxBytes = (c.max_upload_mb || 20) * 1048576;
    $("max-mb").textContent = String(Math.round((c.max_upload_mb || 20) * 100) / 100);
    $("model-badge").textContent = `Model: ${c.name} (${c.architecture}, ${c.task})`;
    if (c.disclaimer) $("disclaimer-text").textContent = c.disclaimer;

    const dl = el("dl", { class: "facts" });
    const fact = (k, v) => dl.append(el("dt", {}, k), el("dd", {}, v));
    fact("Task", `${c.task}: ${c.classes.join(", ")}`);
    if (c.positive_class) fact("Positive class", c.positive_class);
    if (c.threshold !== null && c.threshold !== undefined) fact("Threshold", `${fmt(c.threshold, 3)}, ${c.threshold_note}`);
    else fact("Decision rule", c.threshold_note);
    fact("Intended population", c.population || "not stated");
    if (c.calibration) {
      const k = c.calibration;
      const th = k.threshold !== null && k.threshold !== undefined ? `threshold ${fmt(k.threshold, 3)}, ` : "";
      fact("Calibration in force", `${th}${k.strategy} on ${k.split}${k.created ? `, ${k.created}` : ""}`);
    }
    for (const a of c.site_adaptation || []) {
      fact("Site adaptation", `BatchNorm statistics adapted to ${a.images} site images (${a.name}${a.created ? `, ${a.created}` : ""}); the scores are this adapted model's`);
    }
    fact("Input", `${c.input_size} \u00d7 ${c.input_size} px grayscale`);
    if (c.preprocessing && c.preprocessing.summary) fact("Preprocessing", c.preprocessing.summary);
    if (c.training) {
      const parts = Object.entries(c.training.counts || {}).map(
        ([split, counts]) => `${split}: ` + Object.entries(counts).map(([k, n]) => `${n} ${k}`).join(", ")
      );
      fact("Training data", `${c.training.data || "unknown"} (${c.training.n_images} images; ${parts.join("; ")})`);
    }
    const body = $("card-body");
    body.replaceChildren(dl);

    const metrics = c.test_metrics;
    if (metrics) {
      const names = {
        auc: "AUC", sensitivity: "Sensitivity", specificity: "Specificity", accuracy: "Accuracy",
        macro_auc: "Macro AUC", macro_f1: "Macro F1", macro_average_precision: "Macro AP",
      };
      const list = el("ul", { class: "metrics" });
      for (const [key, label] of Object.entries(names)) {
        const text = metricText(metrics[key]);
        if (text) list.append(el("li", {}, `${label}: ${text}`));
      }
      const n = metrics.n ? ` (n = ${metrics.n})` : "";
      body.append(el("h3", {}, `Held-out test set${n}`), list);
    } else {
      body.append(el("p", { class: "note" }, "No test-set evaluation is available for this model."));
    }
    const audit = c.shortcut_audit;
    if (audit) {
      const list = el("ul", { class: "metrics" });
      if (audit.cam_in_lungs !== null && audit.cam_in_lungs !== undefined) {
        list.append(el("li", {}, `Heatmap mass inside the lung fields: ${fmt(100 * audit.cam_in_lungs, 0)}% ` +
          `(the lungs cover ${fmt(100 * (audit.lung_area || 0), 0)}% of the image)`));
      }
      const aucs = [["auc_plain", "AUC as is"], ["auc_lungs_blanked", "AUC with the lung fields blanked"],
        ["auc_only_lungs", "AUC with only the lung fields kept"]];
      for (const [key, label] of aucs) {
        const text = metricText(audit[key]);
        if (text) list.append(el("li", {}, `${label}: ${text}`));
      }
      body.append(el("h3", {}, "Where the model looks (shortcut audit, test set)"), list,
        el("p", { class: "note" }, "A model that reads the lungs loses its AUC when they are blanked and keeps it " +
          "when only they are kept."));
    }
    const external = Array.isArray(c.external) ? c.external : [];
    if (external.length) {
      const list = el("ul", { class: "metrics" });
      for (const e of external) {
        const parts = [["sensitivity", "sensitivity"], ["specificity", "specificity"], ["auc", "AUC"]]
          .map(([k, label]) => [label, metricText(e[k])]).filter(([, t]) => t).map(([label, t]) => `${label} ${t}`);
        const shift = e.shift_fired ? "; differs from the training data (shift test)" : "";
        const pct = (v) => `${(100 * v).toFixed(0)}%`;
        const flags = [[e.ood_flagged, "out-of-distribution"], [e.gate_flagged, "by the population gate"]]
          .filter(([v]) => typeof v === "number").map(([v, label]) => `${pct(v)} flagged ${label}`);
        const flagged = flags.length ? `; ${flags.join(", ")}` : "";
        const own = [[e.overlap_with_training, "were this model's training films (optimistic)"],
          [e.overlap_with_test, "are this model's own test films (not an independent set)"]]
          .filter(([v]) => v > 0).map(([v, label]) => `; ${v} ${label}`).join("");
        list.append(el("li", {}, `${e.name} (n = ${e.n}): ${parts.join(", ") || "no binary rates"}${shift}${flagged}${own}`));
      }
      body.append(el("h3", {}, "Other data sets (external, at the same threshold)"), list);
    }
    if (c.population_gate) {
      const g = c.population_gate;
      body.append(el("h3", {}, "Population gate"), el("p", {},
        `Attached: ${g.note} (threshold ${Number(g.threshold).toFixed(2)}, ${g.strategy}; trained on ${g.trained_on || "?"}).`));
    }
    body.append(el("h3", {}, "Intended use"), el("p", {}, c.intended_use));
    const lim = el("ul", {});
    for (const item of c.limitations || []) lim.append(el("li", {}, item));
    const details = el("details", {}, el("summary", {}, "Limitations"), lim);
    body.append(details);
  }

  // ---------------------------------------------------------------------------------- results

  // kind: "positive" (at/above its threshold: red), "best" (most likely of a multiclass run), or "".
  function bar(name, p, threshold, kind) {
    const row = el("div", { class: `prob ${kind || ""}`.trim() });
    const valueId = `p-${name.replace(/[^A-Za-z0-9_-]/g, "_")}`;
    row.append(el("div", { class: "prob-head" }, el("span", { class: "prob-name" }, name),
      el("span", { class: "prob-value", id: valueId }, fmt(p))));
    const label = `Probability of ${name}: ${fmt(p)}` + (threshold !== null ? `; threshold ${fmt(threshold)}` : "");
    const track = el("div", { class: "track", role: "img", "aria-label": label });
    const fill = el("div", { class: "fill" });
    fill.style.width = pct(p);
    track.append(fill);
    if (threshold !== null && threshold !== undefined) {
      const tick = el("div", { class: "tick" });
      tick.style.left = pct(threshold);
      const tickLabel = el("span", { class: "tick-label" }, `threshold ${fmt(threshold)}`);
      if (threshold > 0.8) tickLabel.classList.add("end");
      else if (threshold < 0.2) tickLabel.classList.add("start");
      tick.append(tickLabel);
      track.append(tick);
    }
    row.append(track);
    return row;
  }

  function renderResult(r) {
    $("result").hidden = false;
    $("result-file").textContent = r.filename ? `for ${r.filename}` : "";
    $("ood-banner").hidden = !(r.ood && r.ood.flag);
    // Warnings (e.g. from the DICOM header: a lateral view, an adult in a pediatric model) come
    // before the score, so they are read first.
    const warnings = Array.isArray(r.warnings) ? r.warnings : [];
    const box = $("pred-warnings");
    box.replaceChildren(el("strong", {}, "Check before reading the result:"),
      el("ul", {}, ...warnings.map((w) => el("li", {}, String(w)))));
    box.hidden = warnings.length === 0;
    const summary = $("summary");
    summary.textContent = r.summary;
    const flagged = r.task === "binary" ? r.label === r.positive_class : r.task === "multilabel" ? r.label.length > 0 : false;
    summary.className = "summary" + (flagged ? " positive" : "");

    const bars = $("bars");
    bars.replaceChildren();
    if (r.task === "binary") {
      bars.append(bar(`P(${r.positive_class})`, r.score, r.threshold, r.score >= r.threshold ? "positive" : ""));
      $("threshold-note").textContent =
        `A probability at or above ${fmt(r.threshold)} counts as ${r.positive_class}; ` +
        `this threshold was chosen on the validation data (${r.threshold_strategy}).`;
    } else if (r.task === "multiclass") {
      for (const [name, p] of Object.entries(r.probabilities)) bars.append(bar(name, p, null, name === r.label ? "best" : ""));
      $("threshold-note").textContent = "The most likely class is reported (probabilities sum to 1).";
    } else {
      for (const [name, p] of Object.entries(r.probabilities)) {
        const t = r.threshold ? r.threshold[name] : 0.5;
        bars.append(bar(name, p, t, p >= t ? "positive" : ""));
      }
      $("threshold-note").textContent = `Each finding has its own threshold, chosen on the validation data (${r.threshold_strategy}).`;
    }

    const xray = $("xray");
    const heat = $("heat");
    const hasImage = Boolean(r.image_png);
    $("xray").hidden = !hasImage;
    if (hasImage) xray.src = r.image_png;
    const hasHeat = Boolean(r.heatmap_png);
    heat.hidden = !hasHeat;
    $("opacity-row").hidden = !hasHeat;
    $("overlay-link").hidden = !r.overlay_png;
    if (r.overlay_png) $("overlay-link").href = r.overlay_png;
    if (hasHeat) {
      heat.src = r.heatmap_png;
      heat.alt = `Grad-CAM heatmap: regions that raised the score for ${r.heatmap_target}`;
      $("heat-caption").textContent =
        `Heatmap (Grad-CAM): warm colours mark the regions that most raised the score for ${r.heatmap_target}. ` +
        "It shows where the model looked, not where disease is.";
      applyOpacity();
    } else {
      $("heat-caption").textContent = r.heatmap_error ? `No heatmap: ${r.heatmap_error}` : "";
    }

    const t = r.timing_ms || {};
    const ood = r.ood && r.ood.score !== null ? ` \u00b7 OOD distance ${fmt(r.ood.score, 1)} (limit ${fmt(r.ood.threshold, 1)})` : "";
    $("meta").textContent = `Model ${r.model.name} (${r.model.architecture}) \u00b7 ${Math.round(t.total || 0)} ms${ood}`;
  }

  function applyOpacity() {
    const v = Number($("opacity").value);
    $("heat").style.opacity = String(v / 100);
    $("opacity-value").textContent = `${v}%`;
  }

  // ----------------------------------------------------------------------------------- upload

  async function analyse(file) {
    if (!file || busy) return;
    clearError();
    if (file.size > maxBytes) {
      showError(`The file is too large: ${(file.size / 1048576).toFixed(1)} MB, the limit is ${(maxBytes / 1048576).toFixed(1)} MB.`);
      return;
    }
    const form = new FormData();
    form.append("file", file, file.name);
    $("result").hidden = true; // never show the previous image's result next to a new upload
    $("summary").textContent = "";
    setBusy(true);
    try {
      const response = await fetch("/api/predict?heatmap=true", { method: "POST", headers: authHeaders(), body: form });
      if (!response.ok) {
        showError(await errorMessage(response));
        if (response.status === 401) askForKey();
        return;
      }
      renderResult(await response.json());
      loadHealth();
      $("result").scrollIntoView({ behavior: "smooth", block: "nearest" });
    } catch (err) {
      showError(`Could not reach the server (${err.message}).`);
    } finally {
      setBusy(false);
      $("file-input").value = "";
    }
  }

  function init() {
    const zone = $("dropzone");
    $("file-input").addEventListener("change", (e) => analyse(e.target.files[0]));
    for (const type of ["dragenter", "dragover"]) {
      zone.addEventListener(type, (e) => {
        e.preventDefault();
        zone.classList.add("over");
      });
    }
    for (const type of ["dragleave", "drop"]) {
      zone.addEventListener(type, (e) => {
        e.preventDefault();
        zone.classList.remove("over");
      });
    }
    zone.addEventListener("drop", (e) => {
      const file = e.dataTransfer && e.dataTransfer.files[0];
      if (file) analyse(file);
    });
    // A file dropped outside the zone must not replace the page.
    window.addEventListener("dragover", (e) => e.preventDefault());
    window.addEventListener("drop", (e) => e.preventDefault());
    $("opacity").addEventListener("input", applyOpacity);
    $("key-form").addEventListener("submit", (e) => {
      e.preventDefault();
      const key = $("api-key").value.trim();
      if (!key) return;
      sessionStorage.setItem(KEY_STORE, key);
      $("api-key").value = "";
      loadModel();
    });
    loadModel();
    loadHealth();
  }

  document.addEventListener("DOMContentLoaded", init);
})();
