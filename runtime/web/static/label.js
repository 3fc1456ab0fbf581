// cifar-edge: the label page. Lists the frames --collect DIR kept (GET /api/collected), and
// files the current one under a class, skips or deletes it (POST /api/label). Its own file:
// the page's CSP forbids inline script.
"use strict";

(() => {
  const $ = (id) => document.getElementById(id);
  const percent = (p) => `${(100 * p).toFixed(1)}%`;
  let modelClasses = []; // the model's, from /api/info
  let classes = []; // the buttons: the model's, then each new class filed so far
  const keyOf = (i) => (i < 9 ? `${i + 1}` : i === 9 ? "0" : ""); // 1-9, then 0 for the tenth

  if (new URLSearchParams(location.search).has("token")) {
    history.replaceState(null, "", location.pathname); // the cookie holds it from now on
  }

  function element(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined) node.textContent = text;
    return node;
  }

  async function fetchJSON(url, options = {}) {
    const headers = { Accept: "application/json", ...(options.headers || {}) };
    const response = await fetch(url, { ...options, headers });
    const data = await response.json().catch(() => null);
    if (!response.ok) throw new Error((data && data.error) || `${response.status} ${response.statusText}`);
    return data;
  }

  async function send(card, body) {
    try {
      await fetchJSON("/api/label", {
        method: "POST", body: JSON.stringify({ file: card.dataset.file, ...body }),
        headers: { "Content-Type": "application/json" },
      });
      $("label-status").textContent = "";
      await refresh();
    } catch (error) {
      $("label-status").textContent = error.message;
    }
  }

  function button(text, title, onClick) {
    const node = element("button", "", text);
    node.type = "button";
    node.title = title;
    node.addEventListener("click", onClick);
    return node;
  }

  function frameCard(frame) {
    const card = element("li", "result");
    card.dataset.file = frame.file;
    const picture = element("img", "thumb");
    picture.alt = frame.file;
    picture.src = `/collected/${encodeURIComponent(frame.file)}`;
    const meta = element("div", "meta");
    const guess = element("p", "now");
    guess.append(element("span", "result-label", frame.label), " ",
      element("span", "result-confidence", percent(frame.confidence)));
    const actions = element("div", "actions");
    classes.forEach((name, i) => {
      const key = keyOf(i);
      actions.append(button(key ? `${key} ${name}` : name, `file under ${name}`, () => send(card, { label: name })));
    });
    const typed = element("input", "new-class");
    typed.placeholder = "new class";
    typed.maxLength = 64;
    typed.addEventListener("keydown", (event) => {
      if (event.key === "Enter" && typed.value.trim()) send(card, { label: typed.value.trim() });
    });
    actions.append(typed, button("s skip", "keep it, label it later", () => send(card, { action: "skip" })),
      button("d delete", "remove the frame", () => send(card, { action: "delete" })));
    meta.append(element("span", "file", frame.file + (frame.skipped ? " (skipped)" : "")), guess, actions);
    card.append(picture, meta);
    return card;
  }

  async function refresh() {
    const listing = await fetchJSON("/api/collected");
    const filedNew = Object.keys(listing.labelled).filter((name) => !modelClasses.includes(name)).sort();
    classes = [...modelClasses, ...filedNew]; // a class typed once is a button from then on
    $("frames").replaceChildren(...listing.frames.map(frameCard));
    const shown = listing.frames.length < listing.total ? `, the first ${listing.frames.length} shown` : "";
    $("left").textContent = `(${listing.total} to label${shown})`;
    const filed = Object.entries(listing.labelled).map(([name, n]) => `${name}: ${n}`).join(", ");
    $("filed").textContent = filed ? `Filed so far: ${filed}` : "";
  }

  document.addEventListener("keydown", (event) => {
    if (event.target instanceof HTMLInputElement || event.ctrlKey || event.metaKey || event.altKey) return;
    const card = $("frames").firstElementChild;
    if (!card) return;
    if (event.key === "s") send(card, { action: "skip" });
    else if (event.key === "d") send(card, { action: "delete" });
    else if (/^[0-9]$/.test(event.key) && classes[event.key === "0" ? 9 : Number(event.key) - 1]) {
      send(card, { label: classes[event.key === "0" ? 9 : Number(event.key) - 1] });
    }
  });

  async function start() {
    try {
      const info = await fetchJSON("/api/info");
      modelClasses = info.classes;
      $("model").textContent = info.model;
      await refresh();
    } catch (error) {
      $("label-status").textContent = error.message;
    }
  }

  start();
})();
