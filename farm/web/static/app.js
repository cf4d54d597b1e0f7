// The farm's web view: the runs list (/) and one run (/runs/<id>), refreshed from the JSON API every 1.5 s,
// plus the artifacts built from a source commit. Plain DOM, no libraries, nothing loaded from elsewhere.
"use strict";

(() => {
  const POLL_MS = 1500;
  const STATES = ["running", "queued", "waiting", "failed", "blocked", "built", "cached", "cancelled"];
  const BAR_ORDER = ["built", "cached", "running", "queued", "waiting", "failed", "blocked", "cancelled"];
  const HAS_RECORD = new Set(["built", "cached"]);

  // -- helpers ---------------------------------------------------------------------------------------------
  function h(tag, attrs, ...children) {
    const el = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === null || v === undefined || v === false) continue;
      if (k === "class") el.className = v;
      else if (k === "dataset") Object.assign(el.dataset, v);
      else if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
      else el.setAttribute(k, v === true ? "" : String(v));
    }
    for (const c of children.flat(Infinity)) {
      if (c === null || c === undefined || c === false || c === "") continue;
      el.append(c instanceof Node ? c : document.createTextNode(String(c)));
    }
    return el;
  }

  let skew = 0; // server clock minus ours, seconds (from the X-Server-Time header)
  const now = () => Date.now() / 1000 + skew;

  class ApiError extends Error {
    constructor(status, error) {
      super(error ? error.message : `HTTP ${status}`);
      this.status = status;
      this.error = error;
    }
  }

  async function getJSON(url) {
    const resp = await fetch(url, { cache: "no-store", headers: { Accept: "application/json" } });
    const serverTime = parseFloat(resp.headers.get("X-Server-Time"));
    if (!Number.isNaN(serverTime)) skew = serverTime - Date.now() / 1000;
    const body = await resp.json().catch(() => null);
    if (!resp.ok) throw new ApiError(resp.status, body && body.error);
    return body;
  }

  function duration(s) {
    if (s === null || s === undefined || Number.isNaN(s)) return "";
    s = Math.max(0, s);
    if (s < 10) return `${s.toFixed(1)}s`;
    if (s < 120) return `${Math.round(s)}s`;
    const m = Math.floor(s / 60);
    if (m < 120) return `${m}m ${Math.round(s % 60)}s`;
    return `${Math.floor(m / 60)}h ${m % 60}m`;
  }
  const ago = (t) => (t ? `${duration(now() - t)} ago` : "");
  const clock = (t) => (t ? new Date(t * 1000).toLocaleString() : "");
  function size(n) {
    if (n < 1024) return `${n} B`;
    const units = ["KiB", "MiB", "GiB", "TiB"];
    let i = -1;
    do { n /= 1024; i += 1; } while (n >= 1024 && i < units.length - 1);
    return `${n.toFixed(1)} ${units[i]}`;
  }

  function errorBox(err) {
    const e = err.error;
    return h("div", { class: "error", role: "alert" },
      h("strong", {}, e ? `error[${e.code}]` : "error"), " ", err.message,
      e && e.hint ? h("div", { class: "hint" }, `hint: ${e.hint}`) : null);
  }

  const badge = (state, label) => h("span", { class: `badge state-${state}` }, label || state);
  const runBadge = (r) => (r.status === "done" && !r.ok ? badge("done-failed", "done, with failures") : badge(r.status));

  function bar(summary, total) {
    const el = h("div", { class: "bar", role: "img", "aria-label": counts(summary) });
    for (const s of BAR_ORDER) {
      if (!summary[s]) continue;
      const seg = h("span", { class: `seg state-${s}`, title: `${summary[s]} ${s}` });
      seg.style.width = `${(100 * summary[s]) / Math.max(1, total)}%`;
      el.append(seg);
    }
    return el;
  }
  const counts = (summary) => STATES.filter((s) => summary[s]).map((s) => `${summary[s]} ${s}`).join(", ");

  function setLive(ok, text) {
    const live = document.getElementById("live");
    live.className = ok ? "live ok" : "live down";
    live.textContent = text;
  }

  // -- runs list ---------------------------------------------------------------------------------------------
  async function drawRuns(view) {
    const runs = await getJSON("/api/runs");
    document.title = "MANGOS build farm: runs";
    const rows = runs.map((r) => h("tr", { dataset: { run: r.run, status: r.status } },
      h("td", {}, h("a", { href: `/runs/${encodeURIComponent(r.run)}` }, r.run),
        r.reason ? h("div", { class: "reason" }, `queued because: ${r.reason}`) : null),
      h("td", {}, runBadge(r)),
      h("td", {}, r.lane), h("td", {}, r.arch),
      h("td", { title: clock(r.created) }, ago(r.created)),
      h("td", {}, duration((r.finished || now()) - r.created)),
      h("td", { class: "wide" }, bar(r.summary, r.total),
        h("div", { class: "counts" }, `${r.done} of ${r.total} done: ${counts(r.summary)}`))));
    view.replaceChildren(
      h("h1", {}, "Runs"),
      runs.length
        ? h("table", { id: "runs", class: "grid" },
          h("thead", {}, h("tr", {}, ["run", "status", "lane", "arch", "created", "took", "builds"].map((c) => h("th", {}, c)))),
          h("tbody", {}, rows))
        : h("p", { class: "empty" }, "No runs yet: start one with ", h("code", {}, "mangos-farm rebuild RECIPES/"), "."));
  }

  // -- one run -----------------------------------------------------------------------------------------------
  const records = new Map(); // build key -> record (immutable once published)
  const pendingRecords = new Set();
  let lastStatus = null;

  function wantRecord(key) {
    if (!key || records.has(key) || pendingRecords.has(key)) return;
    pendingRecords.add(key);
    getJSON(`/api/builds/${key}`)
      .then((rec) => { records.set(key, rec); if (lastStatus) drawBuilds(lastStatus); })
      .catch(() => {})
      .finally(() => pendingRecords.delete(key));
  }

  function timing(b) {
    const t = now();
    switch (b.state) {
      case "running": return b.started_at ? `running ${duration(t - b.started_at)}` : "running";
      case "queued": return b.dispatched_at ? `queued ${duration(t - b.dispatched_at)}` : "queued";
      case "waiting": return b.waiting_seconds !== undefined ? `ready ${duration(b.waiting_seconds)}` : "";
      default: return b.seconds !== undefined ? duration(b.seconds) : "";
    }
  }

  function buildCells(b) {
    const key = b.build_key;
    const rec = key ? records.get(key) : undefined;
    const links = HAS_RECORD.has(b.state) && key
      ? [h("a", { href: `/api/builds/${key}`, class: "record" }, "record"), " ",
        h("a", { href: `/api/builds/${key}/log`, class: "log" }, "log"), " ",
        h("a", { href: `/api/builds/${key}/provenance`, class: "provenance" }, "provenance")]
      : [];
    const artifacts = Object.keys(b.artifacts || {}).map((name) => (rec
      ? h("a", { href: `/commits/${rec.commit}/${encodeURIComponent(name)}?key=${key}`, class: "artifact", download: name }, name)
      : h("span", { class: "artifact" }, name)));
    const why = [h("span", { class: "why-text" }, b.why)];
    if (b.reason) why.push(h("div", { class: "reason" }, `queued because: ${b.reason}`));
    if (b.state === "failed" && b.error) {
      why.push(h("div", { class: "error-line" }, `error[${b.error.code}]: ${b.error.message}`));
      if (b.error.hint) why.push(h("div", { class: "hint" }, `hint: ${b.error.hint}`));
      if (b.log_tail) why.push(h("details", {}, h("summary", {}, "log tail"), h("pre", {}, b.log_tail)));
    }
    return [
      h("td", {}, h("span", { class: "recipe" }, b.recipe), " ", h("span", { class: "version" }, b.version)),
      h("td", { class: "state" }, badge(b.state)),
      h("td", { class: "why" }, why),
      h("td", { class: "worker" }, b.worker || ""),
      h("td", { class: "time" }, timing(b)),
      h("td", { class: "attempts" }, b.attempts || ""),
      h("td", { class: "links" }, links),
      h("td", { class: "artifacts" }, artifacts.flatMap((a, i) => (i ? [" ", a] : [a]))),
    ];
  }

  function drawBuilds(status) {
    const tbody = document.querySelector("#builds tbody");
    if (!tbody) return;
    const seen = new Set();
    let previous = null;
    for (const b of status.builds) {
      seen.add(b.recipe);
      if (HAS_RECORD.has(b.state)) wantRecord(b.build_key);
      const signature = JSON.stringify([b, timing(b), records.has(b.build_key)]);
      let tr = tbody.querySelector(`tr[data-recipe="${CSS.escape(b.recipe)}"]`);
      if (!tr) tr = h("tr", { dataset: { recipe: b.recipe } });
      if (tr.dataset.signature !== signature) { // unchanged rows stay untouched (selections, open details)
        const open = tr.querySelector("details[open]") !== null;
        tr.replaceChildren(...buildCells(b));
        if (open) { const d = tr.querySelector("details"); if (d) d.open = true; }
        tr.dataset.signature = signature;
        tr.dataset.state = b.state;
        tr.className = `row-${b.state}`;
      }
      const expected = previous ? previous.nextSibling : tbody.firstChild;
      if (expected !== tr) tbody.insertBefore(tr, expected);
      previous = tr;
    }
    for (const tr of [...tbody.children]) if (!seen.has(tr.dataset.recipe)) tr.remove();
  }

  // The run page's filters live in its query string (?state=&lane=&name=&limit=&page=), as the API's do.
  const FILTERS = ["state", "lane", "name", "limit", "page"];
  const LANES = ["security", "interactive", "rebuild"];
  const LIMITS = [25, 50, 100, 200];
  const DEFAULT_LIMIT = "50";

  function filters() {
    const params = new URL(window.location.href).searchParams;
    const out = {};
    for (const k of FILTERS) if (params.get(k)) out[k] = params.get(k);
    if (!out.limit) out.limit = DEFAULT_LIMIT;
    return out;
  }

  function setFilters(changes) {
    const url = new URL(window.location.href);
    for (const [k, v] of Object.entries(changes)) {
      if (v === null || v === undefined || v === "" || (k === "page" && String(v) === "1") || (k === "limit" && String(v) === DEFAULT_LIMIT)) url.searchParams.delete(k);
      else url.searchParams.set(k, String(v));
    }
    window.history.pushState(null, "", url);
    refreshNow();
  }

  function filterBar(status) {
    const f = filters();
    const summary = status ? status.summary : {};
    const option = (value, label, selected) => h("option", { value, selected: selected || null }, label);
    const state = h("select", { id: "f-state", name: "state", onchange: (e) => setFilters({ state: e.target.value, page: 1 }) },
      option("", "all states", !f.state),
      STATES.map((s) => option(s, summary[s] !== undefined ? `${s} (${summary[s]})` : s, f.state === s)),
      f.state && !STATES.includes(f.state) ? option(f.state, f.state, true) : null);
    const lane = h("select", { id: "f-lane", name: "lane", onchange: (e) => setFilters({ lane: e.target.value, page: 1 }) },
      option("", "any lane", !f.lane), LANES.map((l) => option(l, l, f.lane === l)),
      f.lane && !LANES.includes(f.lane) ? option(f.lane, f.lane, true) : null);
    const name = h("input", { id: "f-name", name: "name", value: f.name || "", placeholder: "recipe name glob, e.g. lib*", spellcheck: "false" });
    const limit = h("select", { id: "f-limit", name: "limit", onchange: (e) => setFilters({ limit: e.target.value, page: 1 }) },
      LIMITS.map((n) => option(String(n), `${n} per page`, f.limit === String(n))),
      LIMITS.map(String).includes(f.limit) ? null : option(f.limit, `${f.limit} per page`, true));
    const form = h("form", { id: "filters", class: "filters", autocomplete: "off" },
      h("label", {}, "state ", state), h("label", {}, "lane ", lane), h("label", {}, "name ", name),
      h("label", {}, limit), h("button", { type: "submit" }, "filter"));
    form.addEventListener("submit", (ev) => { ev.preventDefault(); setFilters({ name: name.value.trim(), page: 1 }); });
    return form;
  }

  function pager(status) {
    const q = status.query;
    const first = (status.page - 1) * (q.limit || 0) + 1;
    const shown = status.builds.length ? `builds ${first}-${first + status.builds.length - 1} of ${status.matched}` : `no builds of ${status.matched}`;
    return h("div", { id: "pager", class: "pager", dataset: { page: String(status.page), pages: String(status.pages) } },
      h("button", { type: "button", id: "prev", disabled: status.page <= 1, onclick: () => setFilters({ page: status.page - 1 }) }, "‹ previous"),
      h("span", { class: "pages" }, `${shown} · page ${status.page} of ${status.pages}`),
      h("button", { type: "button", id: "next", disabled: status.page >= status.pages, onclick: () => setFilters({ page: status.page + 1 }) }, "next ›"),
      h("span", { class: "order" }, status.order));
  }

  function eta(status) {
    const e = status.eta;
    if (status.done >= status.total) return null;
    if (e.seconds === null) return [h("dt", {}, "ETA"), h("dd", { class: "eta", title: e.why }, `unknown: ${e.why}`)];
    return [h("dt", {}, "ETA"), h("dd", { class: "eta", title: `at ${clock(e.at)}, median build ${duration(e.median_seconds)}` },
      `~${duration(e.seconds)} on ${e.slots} slots`)];
  }

  function runHeader(status) {
    const took = duration((status.finished || now()) - status.created);
    const path = status.critical_path;
    const stateLinks = STATES.filter((s) => status.summary[s]).map((s) => h("a", {
      href: "#", class: `count state-link`, dataset: { state: s },
      onclick: (ev) => { ev.preventDefault(); setFilters({ state: s, page: 1 }); },
    }, `${status.summary[s]} ${s}`));
    return h("div", { id: "run", dataset: { status: status.status, ok: String(status.ok) } },
      h("h1", {}, "Run ", h("code", {}, status.run), " ", runBadge(status)),
      h("dl", { class: "facts" },
        h("dt", {}, "lane"), h("dd", {}, status.lane),
        h("dt", {}, "arch"), h("dd", {}, status.arch),
        status.reason ? [h("dt", {}, "queued because"), h("dd", { class: "reason" }, status.reason)] : null,
        h("dt", {}, "created"), h("dd", { title: clock(status.created) }, ago(status.created)),
        h("dt", {}, status.finished ? "took" : "running for"), h("dd", {}, took),
        h("dt", {}, "done"), h("dd", { id: "done" }, `${status.done} of ${status.total}`),
        path.builds ? [h("dt", {}, "critical path"), h("dd", { id: "critical-path", title: `starts with ${path.first}` },
          `${path.builds} builds` + (path.seconds !== null ? `, ~${duration(path.seconds)}` : ""))] : null,
        eta(status),
        status.oldest_waiting_seconds ? [h("dt", {}, "oldest waiting"), h("dd", {}, duration(status.oldest_waiting_seconds))] : null),
      bar(status.summary, status.total),
      h("div", { class: "counts", id: "counts" }, stateLinks.flatMap((a, i) => (i ? [", ", a] : [a]))));
  }

  async function drawRun(view, runId) {
    const params = new URLSearchParams(filters());
    let status;
    try {
      status = await getJSON(`/api/runs/${encodeURIComponent(runId)}?${params}`);
    } catch (err) {
      if (err.status === 404 || err.status === 400) {
        lastStatus = null;
        view.replaceChildren(h("p", { class: "crumbs" }, h("a", { href: "/" }, "all runs")),
          err.status === 400 ? filterBar(null) : null, errorBox(err));
        return;
      }
      throw err;
    }
    lastStatus = status;
    document.title = `run ${status.run}: ${status.done}/${status.total} done (${status.status})`;
    if (!document.getElementById("builds")) {
      view.replaceChildren(
        h("p", { class: "crumbs" }, h("a", { href: "/" }, "all runs")),
        h("div", { id: "run-header" }),
        h("div", { id: "filters-box" }),
        h("div", { id: "pager-box" }),
        h("table", { id: "builds", class: "grid" },
          h("thead", {}, h("tr", {}, ["recipe", "state", "why", "worker", "time", "attempts", "links", "artifacts"].map((c) => h("th", {}, c)))),
          h("tbody", {})));
    }
    document.getElementById("run-header").replaceChildren(runHeader(status));
    const box = document.getElementById("filters-box");
    const focused = box.contains(document.activeElement);
    if (!focused) box.replaceChildren(filterBar(status)); // never redraw a control under the user's hands
    document.getElementById("pager-box").replaceChildren(pager(status));
    drawBuilds(status);
    if (window.farmFirstRender === undefined) window.farmFirstRender = performance.now();
  }

  // -- workers -----------------------------------------------------------------------------------------------
  async function drawWorkers() {
    const workers = await getJSON("/api/workers");
    const box = document.getElementById("workers");
    if (!workers.length) {
      box.replaceChildren(h("p", { class: "empty" }, "No workers alive."));
      return;
    }
    box.replaceChildren(h("table", { class: "grid", id: "workers-table" },
      h("thead", {}, h("tr", {}, ["worker", "arch", "slots", "up", "last seen", "building"].map((c) => h("th", {}, c)))),
      h("tbody", {}, workers.map((w) => h("tr", { dataset: { worker: w.name }, class: w.disabled ? "disabled" : "" },
        h("td", {}, w.name, w.disabled ? h("span", { class: "badge state-failed" }, "out of rotation") : null),
        h("td", {}, w.arch), h("td", {}, w.concurrency), h("td", {}, duration(w.up_seconds)),
        h("td", {}, `${duration(w.last_seen_seconds)} ago`),
        h("td", {}, w.building.length
          ? w.building.flatMap((b, i) => [i ? ", " : "", h("a", { href: `/runs/${encodeURIComponent(b.run)}` }, b.recipe),
            b.since ? ` for ${duration(now() - b.since)}` : ""])
          : "idle"))))));
  }

  // -- artifacts by commit -----------------------------------------------------------------------------------
  async function showCommit(sha) {
    const box = document.getElementById("commit-results");
    box.hidden = false;
    box.replaceChildren(h("p", {}, `Looking up ${sha}…`));
    const close = h("button", { type: "button", class: "close", onclick: () => { box.hidden = true; setCommitParam(null); } }, "close");
    try {
      const rows = await getJSON(`/commits/${encodeURIComponent(sha)}`);
      box.replaceChildren(h("div", { class: "panel-head" }, h("h2", {}, "Artifacts built from ", h("code", {}, sha)), close),
        h("table", { class: "grid", id: "commit-artifacts" },
          h("thead", {}, h("tr", {}, ["artifact", "recipe", "sha256", "size", "built", "provenance"].map((c) => h("th", {}, c)))),
          h("tbody", {}, rows.map((r) => h("tr", { dataset: { artifact: r.artifact, recipe: r.recipe } },
            h("td", {}, h("a", { href: r.url, class: "download", download: r.artifact }, r.artifact)),
            h("td", {}, `${r.recipe} ${r.version}`),
            h("td", {}, h("code", { title: r.sha256, class: "digest" }, `${r.sha256.slice(0, 16)}…`)),
            h("td", {}, size(r.size)),
            h("td", {}, r.finished),
            h("td", {}, h("a", { href: r.provenance }, "envelope"), " ", h("a", { href: r.log }, "log")))))));
    } catch (err) {
      box.replaceChildren(h("div", { class: "panel-head" }, h("h2", {}, "Artifacts by commit"), close), errorBox(err));
    }
  }

  function setCommitParam(sha) {
    const url = new URL(window.location.href);
    if (sha) url.searchParams.set("commit", sha); else url.searchParams.delete("commit");
    window.history.replaceState(null, "", url);
  }

  // -- the loop ----------------------------------------------------------------------------------------------
  window.farmRefreshes = 0; // for tests and the curious: how many refreshes have completed

  // A refresh runs at a time; the next one comes POLL_MS after the last, or later when refreshes are slow (a run
  // of many thousand builds): never more than a fifth of the time is spent asking.
  let timer = null;
  let busy = false;
  let again = false;

  async function refresh() {
    if (busy) { again = true; return; }
    busy = true;
    window.clearTimeout(timer);
    const started = performance.now();
    const view = document.getElementById("view");
    const match = window.location.pathname.match(/^\/runs\/([^/]+)\/?$/);
    try {
      await (match ? drawRun(view, decodeURIComponent(match[1])) : drawRuns(view)); // the main view first,
      await drawWorkers(); // then the workers: on a busy server the two would only slow each other down
      window.farmRefreshes += 1;
      setLive(true, `live, updated ${new Date().toLocaleTimeString()}`);
    } catch (err) {
      setLive(false, `not updating: ${err.message}`);
    }
    busy = false;
    const wait = again ? 0 : Math.max(POLL_MS, 4 * (performance.now() - started));
    again = false;
    timer = window.setTimeout(refresh, wait);
  }

  function refreshNow() { refresh(); }
  window.addEventListener("popstate", refreshNow);

  document.addEventListener("DOMContentLoaded", () => {
    const form = document.getElementById("commit-form");
    const input = document.getElementById("commit-input");
    form.addEventListener("submit", (ev) => {
      ev.preventDefault();
      const sha = input.value.trim().toLowerCase();
      setCommitParam(sha);
      showCommit(sha);
    });
    const initial = new URL(window.location.href).searchParams.get("commit");
    if (initial) { input.value = initial; showCommit(initial); }
    refresh();
  });
})();
