// cifar-edge: the live view and the upload, without a framework. The page works without this
// file (the stream is an <img>, the upload a plain form); with it, the top-k updates live and
// uploads show their result without a reload. Its own file: the page's CSP forbids inline script.
"use strict";

(() => {
  const POLL_MS = 250; // how often the live prediction is fetched while the page is visible
  const $ = (id) => document.getElementById(id);
  const percent = (p) => `${(100 * p).toFixed(1)}%`;
  let info = { max_upload_bytes: 20 * 1024 * 1024 };
  let cards = 0;

  // The token came in the URL once; the server answered with a cookie, so take it out of the
  // address bar and the history.
  if (new URLSearchParams(location.search).has("token")) {
    history.replaceState(null, "", location.pathname);
  }

  function element(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function showTopK(list, topK) {
    list.replaceChildren(...topK.map(({ label, probability }) => {
      const bar = element("progress");
      bar.max = 1;
      bar.value = probability;
      const row = element("li");
      row.append(element("span", "name", label), bar, element("span", "pct", percent(probability)));
      return row;
    }));
  }

  async function fetchJSON(url, options = {}) {
    const response = await fetch(url, { ...options, headers: { Accept: "application/json" } });
    const data = await response.json().catch(() => null);
    if (!response.ok) throw new Error((data && data.error) || `${response.status} ${response.statusText}`);
    return data;
  }

  // -- live view ------------------------------------------------------------------------------

  function startLive() {
    const stream = $("stream");
    if (!stream) return; // no camera: upload only
    const status = $("live-status");
    stream.addEventListener("error", () => {
      status.textContent = "The stream is not available; trying again in a few seconds.";
      setTimeout(() => { stream.src = `/stream.mjpg?retry=${Date.now()}`; }, 3000);
    });
    const poll = async () => {
      if (!document.hidden) {
        try {
          const latest = await fetchJSON("/api/latest");
          $("live-label").textContent = latest.label;
          $("live-confidence").textContent = percent(latest.confidence);
          showTopK($("live-topk"), latest.top_k);
          $("live-fps").textContent = latest.fps.toFixed(1);
          $("live-frame").textContent = latest.frame;
          status.textContent = "";
        } catch (error) {
          status.textContent = error.message;
        }
      }
      setTimeout(poll, POLL_MS);
    };
    poll();
  }

  // -- upload ---------------------------------------------------------------------------------

  function resultCard(file) {
    const card = element("li", "result");
    card.id = `result-${++cards}`;
    card.dataset.state = "pending";
    const picture = element("img", "thumb");
    picture.alt = file.name;
    picture.src = URL.createObjectURL(file);
    picture.addEventListener("load", () => URL.revokeObjectURL(picture.src), { once: true });
    picture.addEventListener("error", () => { // not a picture the browser shows: an empty box
      URL.revokeObjectURL(picture.src);
      picture.replaceWith(element("div", "thumb"));
    }, { once: true });
    const meta = element("div", "meta");
    const parts = {
      label: element("span", "result-label", "…"),
      confidence: element("span", "result-confidence"),
      topK: element("ol", "topk result-topk"),
      error: element("span", "result-error"),
    };
    meta.append(element("span", "file", file.name), parts.label, " ", parts.confidence, parts.topK, parts.error);
    card.append(picture, meta);
    $("results").prepend(card);
    return { card, ...parts };
  }

  async function classify(file) {
    const shown = resultCard(file);
    try {
      if (file.size > info.max_upload_bytes) {
        throw new Error(`${file.name} is over the ${Math.round(info.max_upload_bytes / 2 ** 20)} MB limit`);
      }
      const body = new FormData();
      body.append("image", file, file.name);
      const result = await fetchJSON("/api/classify", { method: "POST", body });
      shown.label.textContent = result.label;
      shown.confidence.textContent = percent(result.confidence);
      showTopK(shown.topK, result.top_k);
      shown.card.dataset.state = "done";
    } catch (error) {
      shown.label.textContent = "";
      shown.error.textContent = error.message;
      shown.card.dataset.state = "error";
    }
  }

  async function classifyAll(files) {
    for (const file of files) await classify(file); // one at a time: the device's CPU is small
  }

  function startUpload() {
    const form = $("upload-form");
    const input = $("upload-input");
    const zone = $("drop-zone");
    $("upload-submit").hidden = true; // picking or dropping classifies at once
    form.addEventListener("submit", (event) => {
      event.preventDefault();
      classifyAll([...input.files]);
    });
    input.addEventListener("change", () => {
      classifyAll([...input.files]);
      input.value = "";
    });
    // A file dropped anywhere else must not make the browser leave the page to open it.
    for (const type of ["dragover", "drop"]) {
      window.addEventListener(type, (event) => event.preventDefault());
    }
    zone.addEventListener("dragover", () => zone.classList.add("over"));
    zone.addEventListener("dragleave", () => zone.classList.remove("over"));
    zone.addEventListener("drop", (event) => {
      zone.classList.remove("over");
      classifyAll([...event.dataTransfer.files]);
    });
  }

  async function start() {
    startLive();
    startUpload();
    try {
      info = await fetchJSON("/api/info");
      $("model").textContent = info.model;
      $("label-link").hidden = !info.labelling; // --collect DIR: its frames can be labelled
    } catch (error) {
      $("model").textContent = error.message;
    }
  }

  start();
})();
