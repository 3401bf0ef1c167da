// The demo page: plain JS over the public HTTP API (/predict, /classmap, /gradcam, /v1/samples, /v1/methods,
// /v1/models). No inline scripts, handlers or style attributes: it runs under the gateway's strict CSP.
"use strict";

(() => {
  const TOP_K = 5;
  const ALPHA_DEBOUNCE_MS = 250;
  const CLASSMAP_ALPHA = "0.55";  // the class map over a scene: strong enough to read, the ground still visible
  // Plain words per API error code; the API's own message is shown underneath.
  const ERROR_WORDS = {
    invalid_image: "That file is not an image the gateway can read. Try a JPEG, PNG, GeoTIFF, WebP, BMP or GIF.",
    unsupported_media_type: "That upload was not sent in a format the gateway accepts.",
    payload_too_large: "That image is too large for the gateway. Try a smaller image or scene.",
    invalid_parameter: "One of the settings was rejected by the gateway.",
    bad_request: "The gateway could not understand the request.",
    not_found: "The gateway could not find what was asked for (a sample, a model version or a class).",
    backend_unavailable: "The model backend is unavailable right now. Try again in a moment.",
    overloaded: "The gateway is busy right now. Try again in a moment.",
    deadline_exceeded: "The model took too long to answer. Try again.",
    backend_error: "The model backend failed to answer.",
    internal: "The gateway hit an internal error.",
    network: "Could not reach the gateway. Check the connection and try again.",
  };

  const $ = (id) => document.getElementById(id);
  // selected: the class index whose heat map is shown; scene: /classmap's JSON when the input is a scene.
  const state = {
    file: null, gsd: "", predictions: [], model: "", version: null, scene: null, selected: null, versionLabels: {},
  };
  let classifySeq = 0;
  let heatmapAbort = null;
  let previewUrl = null;
  let heatmapUrl = null;

  class ApiError extends Error {
    constructor(code, message) {
      super(message);
      this.code = code;
    }
  }

  // Sticky per tab, so the gateway's canary split keeps this visitor on one version.
  function routingKey() {
    let key = sessionStorage.getItem("scenecam-routing-key");
    if (!key) {
      key = Math.random().toString(36).slice(2) + Date.now().toString(36);
      sessionStorage.setItem("scenecam-routing-key", key);
    }
    return key;
  }

  async function errorOf(response) {
    try {
      const body = await response.json();
      if (body && body.error && body.error.code) return new ApiError(body.error.code, body.error.message || "");
    } catch (_) { /* not our JSON error: fall through */ }
    return new ApiError("http_" + response.status, `HTTP ${response.status} ${response.statusText}`.trim());
  }

  async function api(path, init) {
    let response;
    try {
      response = await fetch(path, init);
    } catch (err) {
      if (err.name === "AbortError") throw err;
      throw new ApiError("network", String(err.message || err));
    }
    if (!response.ok) throw await errorOf(response);
    return response;
  }

  function setStatus(text) {
    $("status").textContent = text;
  }

  function showError(err) {
    const code = err.code || "internal";
    $("error-title").textContent = ERROR_WORDS[code] || `The request failed (${code}).`;
    $("error-detail").textContent = err.message ? `Details from the API: ${err.message}` : "";
    $("error").dataset.code = code;
    $("error").hidden = false;
    setStatus("");
  }

  function clearError() {
    $("error").hidden = true;
    delete $("error").dataset.code;
  }

  function fillSelect(select, values, chosen) {
    select.replaceChildren(...values.map((value) => new Option(value, value, false, value === chosen)));
  }

  async function loadOptions() {
    try {
      const body = await (await api("/v1/methods")).json();
      fillSelect($("method"), body.methods, body.default_method);
      fillSelect($("colormap"), body.colormaps, body.default_colormap);
    } catch (err) {
      fillSelect($("method"), ["gradcam"], "gradcam");
      fillSelect($("colormap"), ["turbo"], "turbo");
      showError(err);
    }
  }

  function sampleTile(sample) {
    const button = document.createElement("button");
    button.type = "button";
    button.className = "sample";
    button.dataset.testid = "sample";
    button.dataset.name = sample.name;
    button.setAttribute("aria-pressed", "false");
    const img = document.createElement("img");
    img.src = sample.url;
    img.alt = "";
    const caption = document.createElement("span");
    caption.textContent = sample.label;
    button.append(img, caption);
    button.addEventListener("click", () => chooseSample(sample, button));
    const item = document.createElement("li");
    item.append(button);
    return item;
  }

  async function loadSamples() {
    try {
      const body = await (await api("/v1/samples")).json();
      $("samples").replaceChildren(...body.samples.map(sampleTile));
      $("samples-empty").hidden = body.samples.length > 0;
    } catch (err) {
      $("samples-empty").hidden = false;
      showError(err);
    }
  }

  // Version labels (stable, canary, ...) of the default model, so the answering version says what it is.
  async function loadVersionLabels() {
    try {
      const body = await (await api("/v1/models")).json();
      const model = body.models.find((m) => m.name === state.model) || body.models.find((m) => m.default);
      state.versionLabels = {};
      for (const v of (model ? model.versions : [])) state.versionLabels[v.version] = v.labels;
    } catch (_) {
      state.versionLabels = {};
    }
  }

  function describeVersion(version) {
    const labels = state.versionLabels[version] || [];
    return labels.length ? `version ${version} (${labels.join(", ")})` : `version ${version}`;
  }

  function markPressed(container, chosen) {
    for (const el of container.querySelectorAll("[aria-pressed]")) {
      el.setAttribute("aria-pressed", String(el === chosen));
    }
  }

  async function chooseSample(sample, button) {
    markPressed($("samples"), button);
    try {
      const blob = await (await api(sample.url)).blob();
      await classify(new File([blob], sample.name, { type: blob.type }));
    } catch (err) {
      showError(err);
    }
  }

  function chooseFile(file) {
    if (!file) return;
    markPressed($("samples"), null);
    classify(file);
  }

  function imageForm(file) {
    const form = new FormData();
    form.append("image", file, file.name || "image");
    return form;
  }

  // Every request about the current image carries the ground resolution it was classified at.
  function withGsd(params) {
    const query = new URLSearchParams(params);
    if (state.gsd) query.set("gsd_m", state.gsd);
    return query;
  }

  // Browsers cannot display TIFF: such an image is shown as the gateway renders it (a PNG).
  function isTiff(file) {
    return file.type === "image/tiff" || /\.tiff?$/i.test(file.name || "");
  }

  // The seamless switch only means something for a scene (a single tile has no tile borders).
  function showSeamless(shown) {
    for (const id of ["seamless", "seamless-label", "seamless-hint"]) $(id).hidden = !shown;
  }

  function pct(fraction) {
    return (fraction * 100).toFixed(1) + "%";
  }

  function resetResults() {
    state.predictions = [];
    state.selected = null;
    state.scene = null;
    $("predictions").replaceChildren();
    $("predictions").hidden = false;
    $("legend").replaceChildren();
    $("composition").replaceChildren();
    $("scene").hidden = true;
    showSeamless(false);
    $("scene-summary").textContent = "";
    $("classes-title").textContent = "3. Top classes";
    $("prediction-version").textContent = "";
    hideHeatmap();
    if (previewUrl) URL.revokeObjectURL(previewUrl);
    previewUrl = null;
    $("preview").hidden = true;
    $("preview").removeAttribute("src");
    delete $("preview").dataset.kind;
    $("preview-caption").textContent = "";
  }

  async function showPreview(blob, kind, alt, caption) {
    if (previewUrl) URL.revokeObjectURL(previewUrl);
    previewUrl = URL.createObjectURL(blob);
    const img = $("preview");
    img.src = previewUrl;
    img.alt = alt;
    img.hidden = false;
    await img.decode().catch(() => {});
    img.dataset.kind = kind;
    $("preview-caption").textContent = caption;
  }

  // A /classmap PNG pinned to the version that answered /predict; alpha 0 is the image alone.
  async function classmapPng(file, alpha) {
    const query = withGsd({ version: String(state.version), overlay: "true", alpha });
    return (await api(`/classmap?${query}`, { method: "POST", body: imageForm(file) })).blob();
  }

  async function classify(file) {
    const seq = ++classifySeq;
    clearError();
    resetResults();
    Object.assign(state, { file, gsd: $("gsd").value.trim() });
    setStatus(`Classifying ${file.name}…`);
    try {
      const query = withGsd({ top_k: String(TOP_K) });
      const response = await api(`/predict?${query}`, {
        method: "POST", body: imageForm(file), headers: { "X-Routing-Key": routingKey() },
      });
      const body = await response.json();
      if (seq !== classifySeq) return;
      Object.assign(state, { predictions: body.predictions, model: body.model, version: body.version });
      await loadVersionLabels();
      if (seq !== classifySeq) return;
      await (body.scene ? showScene(file, seq) : showTile(file, seq));
    } catch (err) {
      if (seq === classifySeq) showError(err);
    }
  }

  async function showTile(file, seq) {
    const image = isTiff(file) ? await classmapPng(file, "0") : file;
    if (seq !== classifySeq) return;
    await showPreview(image, "image", `The chosen image: ${file.name}`, file.name);
    renderPredictions();
    setStatus(`Classified ${file.name}.`);
    selectClass(state.predictions[0].index);
  }

  // A scene: the class map (JSON for the legend and composition, PNG over the image), then the top class's heat map.
  async function showScene(file, seq) {
    setStatus(`Mapping the land cover of ${file.name}…`);
    const query = withGsd({ version: String(state.version) });
    const [map, overlay] = await Promise.all([
      api(`/classmap?${query}`, { method: "POST", body: imageForm(file), headers: { Accept: "application/json" } })
        .then((r) => r.json()),
      classmapPng(file, CLASSMAP_ALPHA),
    ]);
    if (seq !== classifySeq) return;
    state.scene = map;
    showSeamless(true);
    await showPreview(overlay, "classmap", `Land-cover class map of ${file.name}, drawn over the image`,
      `${file.name} · class map`);
    renderScene(map);
    setStatus(`Mapped the land cover of ${file.name}.`);
    selectClass(map.composition[0].index);
  }

  function describeGrid(map) {
    const [h, w] = map.cell_size_px.map((v) => Number(v.toFixed(1)));
    const ground = map.gsd_m ? ` (${Math.round(w * map.gsd_m)} m of ground)` : "";
    const gsd = map.gsd_m ? ` at ${Number(map.gsd_m.toFixed(2))} m per pixel` : "";
    return `${map.rows} × ${map.cols} cells of ${w} × ${h} px${ground}${gsd}`;
  }

  // One selectable class: a label, a share (bar), optionally its map colour.
  function classRow({ label, index, fraction, color, testid, words }) {
    const share = pct(fraction);
    const button = document.createElement("button");
    button.type = "button";
    button.className = "row";
    button.dataset.testid = testid;
    button.dataset.label = label;
    button.dataset.index = String(index);
    button.setAttribute("aria-pressed", "false");
    button.setAttribute("aria-label", `${label}: ${share}${words}. Show its heat map`);
    button.innerHTML = '<span class="name"><span class="swatch" aria-hidden="true"></span><span class="text">' +
      '</span></span><span class="pct"></span><span class="bar" aria-hidden="true"><span class="fill"></span></span>';
    button.querySelector(".text").textContent = label;
    button.querySelector(".pct").textContent = share;
    const fill = button.querySelector(".fill");
    fill.dataset.testid = testid.replace("-row", "-bar");
    fill.style.width = share;
    const swatch = button.querySelector(".swatch");
    if (color) {
      swatch.style.backgroundColor = color;
      fill.style.backgroundColor = color;
    } else {
      swatch.remove();
    }
    button.addEventListener("click", () => selectClass(index));
    const item = document.createElement("li");
    item.append(button);
    return item;
  }

  function renderPredictions() {
    $("predictions").replaceChildren(...state.predictions.map((p, i) => {
      const item = classRow({ label: p.label, index: p.index, fraction: p.probability, testid: "prediction-row",
        words: "" });
      item.firstChild.dataset.rank = String(i + 1);
      return item;
    }));
    describeAnswer("Predictions");
  }

  function describeAnswer(what) {
    $("prediction-version").textContent = `${what} from model ${state.model}, ${describeVersion(state.version)}.`;
    $("prediction-version").dataset.version = String(state.version);
  }

  function legendItem(name, index, color, present) {
    const button = document.createElement("button");
    button.type = "button";
    button.className = present ? "legend-item" : "legend-item absent";
    Object.assign(button.dataset, { testid: "legend-item", label: name, index: String(index), color });
    button.setAttribute("aria-pressed", "false");
    button.setAttribute("aria-label", `${name}${present ? "" : " (not in this scene)"}. Show its heat map`);
    const swatch = document.createElement("span");
    swatch.className = "swatch";
    swatch.setAttribute("aria-hidden", "true");
    swatch.style.backgroundColor = color;
    const text = document.createElement("span");
    text.textContent = name;
    button.append(swatch, text);
    button.addEventListener("click", () => selectClass(index));
    const item = document.createElement("li");
    item.append(button);
    return item;
  }

  function renderScene(map) {
    const present = new Set(map.composition.map((c) => c.index));
    $("classes-title").textContent = "3. Land cover";
    $("predictions").hidden = true;
    $("scene-summary").textContent = `${describeGrid(map)}. Each cell gets the class the model sees in it.`;
    $("legend").replaceChildren(...map.class_names.map((name, i) => legendItem(name, i, map.colors[i],
      present.has(i))));
    $("composition").replaceChildren(...map.composition.map((c) => classRow({
      label: c.label, index: c.index, fraction: c.fraction, color: map.colors[c.index], testid: "composition-row",
      words: " of the ground",
    })));
    $("scene").hidden = false;
    describeAnswer("Class map");
  }

  function selectClass(index) {
    state.selected = index;
    for (const list of ["predictions", "legend", "composition"]) {
      for (const el of $(list).querySelectorAll("button[aria-pressed]")) {
        el.setAttribute("aria-pressed", String(el.dataset.index === String(index)));
      }
    }
    refreshHeatmap();
  }

  function hideHeatmap() {
    if (heatmapAbort) heatmapAbort.abort();
    if (heatmapUrl) URL.revokeObjectURL(heatmapUrl);
    heatmapUrl = null;
    $("heatmap").hidden = true;
    $("heatmap").removeAttribute("src");
    delete $("heatmap").dataset.label;
    $("heatmap-caption").textContent = "";
    $("heatmap-version").textContent = "";
  }

  function heatmapQuery() {
    // Pinned to the version that ranked the classes, so the map explains the same model as the list.
    return withGsd({
      class: String(state.selected), version: String(state.version), method: $("method").value,
      colormap: $("colormap").value, alpha: $("alpha").value,
      ...(state.scene && $("seamless").checked ? { seamless: "true" } : {}),
    });
  }

  async function showHeatmap(blob, headers, query) {
    if (heatmapUrl) URL.revokeObjectURL(heatmapUrl);
    heatmapUrl = URL.createObjectURL(blob);
    const img = $("heatmap");
    const label = headers.get("X-Class-Label");
    const method = headers.get("X-Cam-Method") || $("method").value;
    const share = pct(Number(headers.get("X-Class-Probability")));
    const where = state.scene ? "across the scene" : "in the chosen image";
    img.src = heatmapUrl;
    img.alt = `Heat map (${method}) of where the model sees "${label}" ${where}`;
    img.hidden = false;
    await img.decode().catch(() => {});
    const seamless = query.get("seamless") === "true";
    Object.assign(img.dataset, { label, method, alpha: query.get("alpha"), seamless: String(seamless) });
    $("heatmap-caption").textContent = state.scene
      ? `${label} · ${share} mean probability · ${method}${seamless ? " · seamless" : ""}`
      : `${label} · ${share} · ${method}`;
    $("heatmap-version").textContent = `Heat map from ${describeVersion(headers.get("X-Model-Version"))}.`;
    $("heatmap-version").dataset.version = headers.get("X-Model-Version");
  }

  async function refreshHeatmap() {
    if (!state.file || state.selected === null) return;
    if (heatmapAbort) heatmapAbort.abort();
    const controller = new AbortController();
    heatmapAbort = controller;
    $("heatmap").setAttribute("aria-busy", "true");
    const query = heatmapQuery();
    try {
      const response = await api(`/gradcam?${query}`, {
        method: "POST", body: imageForm(state.file), signal: controller.signal,
      });
      const blob = await response.blob();
      if (controller.signal.aborted) return;
      clearError();
      await showHeatmap(blob, response.headers, query);
    } catch (err) {
      if (err.name !== "AbortError") showError(err);
    } finally {
      if (heatmapAbort === controller) $("heatmap").removeAttribute("aria-busy");
    }
  }

  function debounce(fn, ms) {
    let timer = null;
    return (...args) => {
      clearTimeout(timer);
      timer = setTimeout(() => fn(...args), ms);
    };
  }

  // Up/Down/Home/End move focus through a class list; Enter/Space already press the focused button.
  function onListKey(event) {
    const rows = [...event.currentTarget.querySelectorAll("button[aria-pressed]")];
    const at = rows.indexOf(document.activeElement);
    const moves = { ArrowDown: at + 1, ArrowUp: at - 1, Home: 0, End: rows.length - 1 };
    if (at < 0 || !(event.key in moves)) return;
    event.preventDefault();
    rows[Math.max(0, Math.min(rows.length - 1, moves[event.key]))].focus();
  }

  function wireDropzone() {
    const zone = $("dropzone");
    // A file dropped beside the zone must not navigate away from the page.
    for (const type of ["dragover", "drop"]) window.addEventListener(type, (e) => e.preventDefault());
    zone.addEventListener("dragover", () => zone.classList.add("over"));
    zone.addEventListener("dragleave", () => zone.classList.remove("over"));
    zone.addEventListener("drop", (e) => {
      zone.classList.remove("over");
      chooseFile(e.dataTransfer.files[0]);
    });
  }

  function wire() {
    $("file-input").addEventListener("change", (e) => {
      chooseFile(e.target.files[0]);
      e.target.value = "";
    });
    wireDropzone();
    $("method").addEventListener("change", refreshHeatmap);
    $("colormap").addEventListener("change", refreshHeatmap);
    $("seamless").addEventListener("change", refreshHeatmap);
    const refreshSoon = debounce(refreshHeatmap, ALPHA_DEBOUNCE_MS);
    $("alpha").addEventListener("input", () => {
      $("alpha-value").textContent = Number($("alpha").value).toFixed(2);
      refreshSoon();
    });
    for (const list of ["predictions", "legend", "composition"]) $(list).addEventListener("keydown", onListKey);
    // A new ground resolution re-reads the current image at that scale.
    $("gsd").addEventListener("change", () => state.file && classify(state.file));
  }

  wire();
  loadOptions();
  loadSamples();
})();
