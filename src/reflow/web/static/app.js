// reflow: the little JavaScript the pages need. No framework, no build step.
"use strict";

(function () {
  const csrf = (document.querySelector('meta[name="csrf-token"]') || {}).content || "";

  // -- helpers -----------------------------------------------------------------------------
  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (k === "class") node.className = v;
      else node.setAttribute(k, v);
    }
    for (const child of children) {
      if (child === null || child === undefined) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }

  async function api(path) {
    const response = await fetch(path, {
      headers: { Accept: "application/json", "X-CSRF-Token": csrf },
      credentials: "same-origin",
    });
    let body = null;
    try { body = await response.json(); } catch (e) { body = null; }
    if (!response.ok) {
      const detail = body && body.detail ? body.detail : response.statusText;
      throw new Error(detail);
    }
    return body;
  }

  function fmtTime(iso) {
    return iso ? iso.replace("T", " ").slice(0, 19) : "";
  }

  function fmtDuration(seconds) {
    if (seconds === null || seconds === undefined) return "";
    if (seconds < 1) return Math.round(seconds * 1000) + "ms";
    if (seconds < 60) return seconds.toFixed(1) + "s";
    let minutes = Math.floor(seconds / 60);
    const sec = Math.floor(seconds % 60);
    const hours = Math.floor(minutes / 60);
    minutes = minutes % 60;
    const pad = (n) => String(n).padStart(2, "0");
    return hours ? hours + "h" + pad(minutes) + "m" : minutes + "m" + pad(sec) + "s";
  }

  function badge(state) {
    return el("span", { class: "badge s-" + (state || "none") }, (state || "-").replace(/_/g, " "));
  }

  function setState(node, state) {
    for (const cls of Array.from(node.classList)) {
      if (cls.startsWith("s-")) node.classList.remove(cls);
    }
    node.classList.add("s-" + (state || "none"));
  }

  const enc = encodeURIComponent;
  const ACTIVE = new Set(["queued", "running"]);

  // -- confirmations for history actions --------------------------------------------------------
  document.addEventListener("submit", (event) => {
    const form = event.target;
    const message = form.getAttribute && form.getAttribute("data-confirm");
    if (message && !window.confirm(message)) event.preventDefault();
  });

  // -- the panel: a task instance's tries and a live log -----------------------------------------
  const panel = document.getElementById("panel");
  let generation = 0;

  function openPanel(pipeline, run, task) {
    if (!panel) return;
    generation += 1;
    const mine = generation;
    panel.hidden = false;
    document.getElementById("panel-title").textContent = task + " · run " + run;
    const tbody = panel.querySelector("#panel-tries tbody");
    const info = document.getElementById("panel-ti");
    const log = document.getElementById("log");
    const status = document.getElementById("log-status");
    tbody.replaceChildren();
    log.textContent = "";
    status.textContent = "loading…";
    info.replaceChildren();
    const base = "/api/v1/pipelines/" + enc(pipeline) + "/runs/" + enc(run) + "/tasks/" + enc(task);

    function renderTries(detail, selected) {
      const ti = detail.task_instance;
      info.replaceChildren(
        el("p", {}, "state ", badge(ti.state), " · logical date " + fmtTime(detail.run.logical_date),
          ti.failure_reason ? " · reason " + ti.failure_reason : "",
          " · ", el("a", { href: "/pipelines/" + enc(pipeline) + "/runs/" + enc(run) }, "run page"))
      );
      tbody.replaceChildren();
      for (const t of detail.tries.slice().reverse()) {
        const row = el("tr", { "data-try": t.try_number },
          el("td", {}, t.try_number), el("td", {}, t.run_attempt), el("td", {}, badge(t.state)),
          el("td", {}, fmtTime(t.started_at)), el("td", { class: "num" }, fmtDuration(t.duration)),
          el("td", {}, t.exit_code === null ? "" : t.exit_code),
          el("td", {}, t.failure_reason || ""),
          el("td", {}, el("code", { class: "small" }, JSON.stringify(t.conf))));
        if (t.try_number === selected) row.classList.add("selected");
        row.addEventListener("click", () => { if (mine === generation) tail(detail, t.try_number); });
        tbody.append(row);
      }
    }

    function tail(detail, tryNumber) {
      generation += 1;
      const me = generation;
      renderTries(detail, tryNumber);
      log.textContent = "";
      let offset = 0;
      async function step() {
        if (me !== generation) return;
        try {
          const chunk = await api(base + "/log?try=" + tryNumber + "&offset=" + offset);
          if (me !== generation) return;
          if (chunk.data) {
            const atBottom = log.scrollTop + log.clientHeight >= log.scrollHeight - 20;
            log.append(document.createTextNode(chunk.data));
            if (atBottom) log.scrollTop = log.scrollHeight;
          }
          offset = chunk.next_offset;
          if (chunk.complete) {
            status.textContent = "try " + tryNumber + ": " + chunk.state + " · " + chunk.size + " bytes";
            const fresh = await api(base);
            if (me === generation) renderTries(fresh, tryNumber);
            return;
          }
          status.textContent = "try " + tryNumber + ": " + chunk.state + " · following…";
          // More is already written: read on at once; else wait for the try to write.
          setTimeout(step, chunk.data && chunk.next_offset < chunk.size ? 0 : 1000);
        } catch (err) {
          status.textContent = err.message;
        }
      }
      step();
    }

    api(base).then((detail) => {
      if (mine !== generation) return;
      if (!detail.tries.length) {
        renderTries(detail, null);
        status.textContent = "no try yet";
        return;
      }
      tail(detail, detail.tries[detail.tries.length - 1].try_number);
    }).catch((err) => { status.textContent = err.message; });
    panel.scrollIntoView({ behavior: "smooth", block: "nearest" });
  }

  if (panel) {
    document.getElementById("panel-close").addEventListener("click", () => {
      generation += 1;
      panel.hidden = true;
      document.querySelectorAll("td.cell.selected").forEach((c) => c.classList.remove("selected"));
    });
  }

  // -- the grid --------------------------------------------------------------------------------
  const grid = document.getElementById("grid");
  if (grid) {
    const pipeline = grid.dataset.pipeline;
    grid.addEventListener("click", (event) => {
      const cell = event.target.closest("td.cell[data-task]");
      if (!cell || cell.classList.contains("s-none")) return;
      grid.querySelectorAll("td.cell.selected").forEach((c) => c.classList.remove("selected"));
      cell.classList.add("selected");
      openPanel(pipeline, cell.dataset.run, cell.dataset.task);
    });
    const columns = Array.from(grid.querySelectorAll("tr.runrow td.cell")).map((c, i) => i);
    async function refresh() {
      if (grid.dataset.live !== "1") return;
      try {
        const data = await api("/api/v1/pipelines/" + enc(pipeline) + "/grid?" + grid.dataset.query);
        const shown = Array.from(grid.querySelectorAll("tbody tr:first-child td.cell")).map((c) => Number(c.dataset.run));
        const same = data.runs.length === shown.length && data.runs.every((r, i) => r.id === shown[i]);
        if (!same) return;
        const runCells = grid.querySelectorAll("tr.runrow td.cell");
        data.runs.forEach((r, i) => {
          setState(runCells[i], r.state);
          runCells[i].classList.toggle("late", r.late);
        });
        const rows = grid.querySelectorAll("tbody tr");
        data.tasks.forEach((task, t) => {
          const cells = rows[t] ? rows[t].querySelectorAll("td.cell") : [];
          data.states[t].forEach((st, i) => { if (cells[i]) setState(cells[i], st); });
        });
        if (!data.runs.some((r) => ACTIVE.has(r.state))) grid.dataset.live = "0";
      } catch (err) { /* keep the page as it is */ }
      setTimeout(refresh, 3000);
    }
    if (columns.length) setTimeout(refresh, 3000);
  }

  // -- the run page ------------------------------------------------------------------------------
  const tis = document.getElementById("tis");
  if (tis) {
    const pipeline = tis.dataset.pipeline;
    const run = tis.dataset.run;
    tis.addEventListener("click", (event) => {
      const button = event.target.closest("button.open-log");
      if (button) openPanel(pipeline, button.dataset.run, button.dataset.task);
    });
    async function refresh() {
      try {
        const detail = await api("/api/v1/pipelines/" + enc(pipeline) + "/runs/" + enc(run));
        if (!ACTIVE.has(detail.run.state)) { window.location.reload(); return; }
        for (const ti of detail.task_instances) {
          const row = tis.querySelector('tr[data-task="' + CSS.escape(ti.task_id) + '"]');
          if (row) row.querySelector("td.state").replaceChildren(badge(ti.state));
        }
      } catch (err) { /* keep the page as it is */ }
      setTimeout(refresh, 2000);
    }
    if (tis.dataset.live === "1") setTimeout(refresh, 2000);
  }

  // -- backfills -----------------------------------------------------------------------------------
  function updateProgress(b) {
    const svg = document.querySelector('svg.progress[data-id="' + b.id + '"]');
    const text = document.querySelector('.progress-text[data-id="' + b.id + '"]');
    if (!svg) return;
    const width = Number(svg.getAttribute("width"));
    const total = b.total || 1;
    const ok = b.runs.success || 0;
    const bad = b.failed;
    const running = b.runs.running || 0;
    const set = (sel, x, w) => {
      const r = svg.querySelector(sel);
      r.setAttribute("x", x);
      r.setAttribute("width", w);
    };
    set(".seg-ok", 0, width * ok / total);
    set(".seg-bad", width * ok / total, width * bad / total);
    set(".seg-run", width * (ok + bad) / total, width * running / total);
    if (text) text.textContent = b.done + "/" + b.total + (bad ? ", " + bad + " failed" : "");
  }

  const list = document.getElementById("backfills");
  if (list && list.dataset.live === "1") {
    const query = list.dataset.pipeline ? "?pipeline=" + enc(list.dataset.pipeline) : "";
    async function refresh() {
      try {
        const data = await api("/api/v1/backfills" + query);
        for (const b of data.backfills) {
          const row = list.querySelector('tr[data-id="' + b.id + '"]');
          if (!row) continue;
          if (row.dataset.state !== b.state) { window.location.reload(); return; }
          updateProgress(b);
        }
      } catch (err) { /* keep the page as it is */ }
      setTimeout(refresh, 2000);
    }
    setTimeout(refresh, 2000);
  }

  const one = document.getElementById("backfill");
  if (one && one.dataset.live === "1") {
    let done = null;
    async function refresh() {
      try {
        const data = await api("/api/v1/backfills/" + enc(one.dataset.id));
        const b = data.backfill;
        if (b.state !== one.dataset.state || (done !== null && b.done !== done)) {
          window.location.reload();
          return;
        }
        done = b.done;
        updateProgress(b);
      } catch (err) { /* keep the page as it is */ }
      setTimeout(refresh, 2000);
    }
    setTimeout(refresh, 2000);
  }
})();
