// certd dashboard. Hand-written, no framework, no build step. Reads only certd's REST API
// (/api/v1/...) with the operator's bearer token, kept in this tab's sessionStorage and sent
// in the Authorization header. Every value from the API reaches the page through
// textContent / setAttribute (via el() below), never innerHTML: an error message holding
// markup shows as text.
"use strict";

(function () {
  const TOKEN_KEY = "certd.token";
  const PAGE = 50;                      // aliases per page
  const POLL_MS = 2000;                 // a moving alias's page refreshes itself
  const MOVING = new Set(["pending", "awaiting_dns", "issuing", "issued", "removing"]);
  const SCOPES = ["read", "aliases", "admin"];
  // the matrix's cells: short words (50 certificates x 20 nodes fit a laptop's width), the
  // full state in the legend, the cell's title and data-state
  const CELL = {current: "ok", stale: "stale", failed: "FAIL", pending: "wait", unreachable: "down"};
  let me = null;                        // {name, scope} of the token
  let pollTimer = null;
  let renderSeq = 0;                    // a newer route wins over a slow older one

  // --- DOM helpers: text only ------------------------------------------------------------
  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs || {})) {
      if (value === null || value === undefined || value === false) continue;
      if (key === "text") node.textContent = String(value);
      else if (key === "class") node.className = value;
      else if (key === "on") for (const [ev, fn] of Object.entries(value)) node.addEventListener(ev, fn);
      else node.setAttribute(key, value === true ? "" : String(value));
    }
    for (const child of children.flat(Infinity)) {
      if (child === null || child === undefined || child === false) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }
  const $ = (id) => document.getElementById(id);
  const can = (scope) => me !== null && SCOPES.indexOf(me.scope) >= SCOPES.indexOf(scope);
  const slug = (s) => String(s).replace(/[^a-z0-9_]/gi, "_");
  const badge = (status) => el("span", {class: "st st-" + slug(status || "none"),
                                         text: status || "none"});
  function when(iso) {
    if (!iso) return "—";
    const d = new Date(iso);
    return isNaN(d) ? String(iso) : d.toISOString().slice(0, 16).replace("T", " ") + " UTC";
  }
  function days(n) { return n === null || n === undefined ? "—" : n.toFixed(1) + " d"; }
  function table(headers, rows, cls) {
    return el("div", {class: "scroll"},
      el("table", {class: cls || null},
        el("thead", {}, el("tr", {}, headers.map((h) => el("th", {scope: "col", text: h})))),
        el("tbody", {}, rows.length ? rows : [el("tr", {}, el("td", {colspan: headers.length,
                                                   class: "muted", text: "nothing"}))])));
  }
  function facts(pairs) {
    return el("dl", {class: "facts"}, pairs.map(([k, v]) =>
      [el("dt", {text: k}), el("dd", {}, v === null || v === undefined ? "—" : v)]));
  }
  function status(text) { $("status").textContent = text || ""; }
  const certLink = (name) => el("a", {href: "#/certificates/" + encodeURIComponent(name), text: name});
  const aliasLink = (name) => el("a", {href: "#/aliases/" + encodeURIComponent(name), text: name});

  // --- the API ---------------------------------------------------------------------------
  class ApiError extends Error {
    constructor(status, problem) {
      super((problem && (problem.detail || problem.title)) || ("HTTP " + status));
      this.status = status; this.problem = problem || {};
    }
  }
  async function api(method, path, body) {
    const token = sessionStorage.getItem(TOKEN_KEY);
    const headers = {"Accept": "application/json", "Authorization": "Bearer " + token};
    const init = {method, headers, credentials: "omit", cache: "no-store", redirect: "error"};
    if (body !== undefined) { headers["Content-Type"] = "application/json"; init.body = JSON.stringify(body); }
    const resp = await fetch(path, init);
    let data = null;
    try { data = await resp.json(); } catch (e) { data = null; }
    if (resp.status === 401) { signOut("The token was refused (401): sign in again."); throw new ApiError(401, data); }
    if (!resp.ok) throw new ApiError(resp.status, data);
    return data;
  }

  // --- sign in / out ---------------------------------------------------------------------
  function showLogin(message) {
    $("view").hidden = true; $("nav").hidden = true; $("logout").hidden = true;
    $("who").textContent = "";
    $("login").hidden = false;
    $("login-error").textContent = message || "";
    $("token").focus();
  }
  function signOut(message) {
    sessionStorage.removeItem(TOKEN_KEY);
    me = null;
    stopPolling();
    showLogin(message);
  }
  async function signIn(event) {
    event.preventDefault();
    const token = $("token").value.trim();
    $("token").value = "";
    if (!/^[!-~]{16,}$/.test(token)) { showLogin("A token has at least 16 printable characters."); return; }
    sessionStorage.setItem(TOKEN_KEY, token);
    if (await loadMe()) { if (!location.hash || location.hash === "#") location.hash = "#/overview"; else render(); }
  }
  async function loadMe() {
    try {
      me = await api("GET", "/api/v1/whoami");
    } catch (e) {
      if (e.status !== 401) signOut("Cannot sign in: " + e.message);
      return false;
    }
    $("login").hidden = true; $("nav").hidden = false; $("logout").hidden = false;
    $("who").textContent = me.name + " (" + me.scope + ")";
    return true;
  }

  // --- routing ---------------------------------------------------------------------------
  function stopPolling() { if (pollTimer) { clearTimeout(pollTimer); pollTimer = null; } }
  function route() {
    const parts = (location.hash.replace(/^#\/?/, "") || "overview").split("/");
    let page = parts[0], arg = null;
    try { arg = parts.length > 1 ? decodeURIComponent(parts.slice(1).join("/")) : null; }
    catch (e) { arg = null; }
    return {page, arg};
  }
  const PAGES = {overview, timeline, certificates: certificatePage, aliases: aliasesOrAlias,
                 alerts: alertsPage, events: eventsPage};
  async function render() {
    stopPolling();
    if (!me) return;
    const {page, arg} = route();
    const fn = PAGES[page] || overview;
    for (const a of document.querySelectorAll("nav a")) {
      if (a.dataset.page === page) a.setAttribute("aria-current", "page"); else a.removeAttribute("aria-current");
    }
    const seq = ++renderSeq;
    const view = $("view");
    view.hidden = false;
    status("Loading…");
    const started = performance.now();
    let content;
    try {
      content = await fn(arg, seq);
    } catch (e) {
      if (e.status === 401) return;
      content = el("div", {}, el("h1", {text: "Error"}), el("p", {class: "error", text: e.message}));
    }
    if (seq !== renderSeq || !content) return;
    view.replaceChildren(content);
    view.dataset.page = page;
    status("Loaded " + new Date().toISOString().slice(11, 19) + " UTC in " +
           Math.round(performance.now() - started) + " ms");
  }

  // --- overview --------------------------------------------------------------------------
  async function overview() {
    const o = await api("GET", "/api/v1/overview");
    const cards = el("div", {class: "cards"},
      el("div", {class: "card"}, el("span", {class: "n", text: o.certificates}), "certificates"),
      el("div", {class: "card"}, el("span", {class: "n", text: o.aliases}), "of them aliases"),
      Object.entries(o.counts).map(([s, n]) =>
        el("div", {class: "card", "data-status": s}, el("span", {class: "n", text: n}), badge(s))),
      el("div", {class: "card"}, el("span", {class: "n", text: o.alerts}),
         el("a", {href: "#/alerts", text: "active findings"})));
    const head = ["certificate", "status", "days left"].concat(o.nodes);
    const rows = o.matrix.map((r) => el("tr", {"data-certificate": r.name, "data-alias": r.alias ? "1" : null,
                                               class: r.alias ? "alias-row" : null},
      el("th", {scope: "row", title: r.name}, r.alias ? [aliasLink(r.name), el("span", {class: "tag", text: "alias"})]
                                       : certLink(r.name)),
      el("td", {}, badge(r.status)),
      el("td", {text: days(r.days_left)}),
      r.cells.map((c, i) => el("td", {class: "cell" + (c ? " st-" + slug(c) : " st-none"),
                                      "data-node": o.nodes[i], "data-state": c || "none",
                                      title: r.name + " on " + o.nodes[i] + ": " + (c || "not deployed there"),
                                      text: CELL[c] || "–"}))));
    const matrix = el("div", {class: "scroll"}, el("table", {class: "matrix", id: "matrix"},
      el("thead", {}, el("tr", {}, head.map((h, i) =>
        el("th", {scope: "col", class: i > 2 ? "node" : null, text: h})))),
      el("tbody", {}, rows.length ? rows : [el("tr", {}, el("td", {colspan: head.length,
                                               class: "muted", text: "no configured certificate"}))])));
    // aliases: the matrix holds those not deployed, worst first, up to a limit; the rest counted
    const aliasNote = el("p", {class: "muted", id: "matrix-aliases"},
      o.aliases_not_deployed === 0 ? (o.aliases ? "Every alias (" + o.aliases + ") is deployed." : "No alias.")
        : [o.aliases_not_deployed + " of " + o.aliases + " aliases are not deployed" +
           (o.aliases_not_shown ? "; the worst " + (o.aliases_not_deployed - o.aliases_not_shown) +
            " are in the matrix, " + o.aliases_not_shown + " more are not shown. " : " (all in the matrix). "),
           el("a", {href: "#/aliases", text: "All aliases"})]);
    const legend = el("p", {class: "legend"}, Object.entries(CELL).map(([state, label]) =>
      el("span", {}, el("span", {class: "st st-" + state, text: label}), " " + state)),
      el("span", {}, el("span", {class: "st st-none", text: "–"}), " not deployed there"));
    return el("div", {},
      el("h1", {text: "Overview"}), cards,
      el("h2", {text: "Certificates × nodes (what each node serves)"}), legend, matrix, aliasNote,
      el("h2", {text: "Worst findings first"}), findingsTable(o.worst));
  }
  function findingsTable(items) {
    return table(["severity", "check", "certificate", "domain", "node", "message", "since"],
      items.map((a) => el("tr", {},
        el("td", {}, badge(a.severity)), el("td", {text: a.check}),
        el("td", {}, a.certificate ? certLink(a.certificate) : "—"),
        el("td", {text: a.domain}), el("td", {text: a.node}),
        el("td", {class: "message", text: a.message}), el("td", {text: when(a.first_seen)}))));
  }

  // --- timeline --------------------------------------------------------------------------
  const SVG = "http://www.w3.org/2000/svg";
  function svg(tag, attrs, text) {
    const node = document.createElementNS(SVG, tag);
    for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, String(v));
    if (text !== undefined) node.textContent = String(text);
    return node;
  }
  const TIMELINE_DAYS = [30, 90, 180];
  let timelineDays = 90;
  async function timeline() {
    const t = await api("GET", "/api/v1/timeline?days=" + timelineDays);
    const now = new Date(t.now).getTime(), dayMs = 86400000, kinds = ["expiry", "renewal", "retry"];
    // counted by the server for every certificate (day 0: today and what is overdue)
    const buckets = Array.from({length: t.days + 1}, (_, i) =>
      ({expiry: t.per_day.expiry[i], renewal: t.per_day.renewal[i], retry: t.per_day.retry[i]}));
    const overdue = t.overdue;
    const max = Math.max(1, ...buckets.map((b) => b.expiry + b.renewal + b.retry));
    const W = 960, H = 260, left = 40, bottom = 30, top = 10, plotH = H - bottom - top;
    const bw = (W - left - 10) / buckets.length;
    const chart = svg("svg", {class: "timeline", id: "timeline-chart", viewBox: `0 0 ${W} ${H}`,
                              role: "img", "aria-label": "expiries, renewals and retries per day, next " + t.days + " days"});
    for (const frac of [0, 0.5, 1]) {
      const y = top + plotH * (1 - frac);
      chart.append(svg("line", {class: "grid", x1: left, x2: W - 10, y1: y, y2: y}),
                   svg("text", {x: 4, y: y + 4}, Math.round(max * frac)));
    }
    buckets.forEach((b, i) => {
      let y = top + plotH;
      for (const k of kinds) {
        if (!b[k]) continue;
        const h = plotH * b[k] / max;
        y -= h;
        const rect = svg("rect", {class: k, x: left + i * bw + 0.5, y, width: Math.max(1, bw - 1), height: h});
        rect.append(svg("title", {}, `day ${i}: ${b[k]} ${k}`));
        chart.append(rect);
      }
      const step = t.days > 120 ? 30 : t.days > 45 ? 15 : 5;
      if (i % step === 0 && i < buckets.length - t.days / 12) {   // no label cut at the right edge
        const label = new Date(now + i * dayMs).toISOString().slice(5, 10);
        chart.append(svg("text", {x: left + i * bw, y: H - 10}, i === 0 ? "today" : label));
      }
    });
    chart.append(svg("line", {class: "axis", x1: left, x2: W - 10, y1: top + plotH, y2: top + plotH}));
    const legend = el("div", {class: "legend"}, kinds.map((k) =>
      el("span", {}, el("span", {class: "swatch " + k}), k)));
    const shown = t.items;
    const choose = el("select", {id: "timeline-days", "aria-label": "days shown", on: {change: (ev) => {
      timelineDays = Number(ev.target.value); render(); }}},
      TIMELINE_DAYS.map((n) => el("option", {value: String(n), selected: n === t.days, text: "next " + n + " days"})));
    const reasons = Object.entries(t.by_reason).map(([k, n]) => k.replace(":", " (") + (k.includes(":") ? ")" : "") + ": " + n);
    const list = table(["when", "certificate", "what", "reason"], shown.map((i) =>
      el("tr", {class: i.overdue ? "overdue" : null},
        el("td", {text: when(i.at) + (i.overdue ? " (overdue)" : "")}),
        el("td", {}, certLink(i.certificate)), el("td", {text: i.kind}),
        el("td", {text: i.reason || "—"}))));
    return el("div", {}, el("h1", {text: "Timeline: next " + t.days + " days"}),
      el("form", {class: "inline", on: {submit: (ev) => ev.preventDefault()}}, el("label", {}, "show", choose)),
      el("p", {class: "muted", id: "timeline-summary", text: t.total + " moments" +
         (overdue ? ", " + overdue + " overdue (shown on today)" : "") + (reasons.length ? " — " + reasons.join(", ") : "") +
         " (as of " + when(t.as_of) + ")"}),
      legend, chart, el("h2", {text: "In order" + (t.total > shown.length ? " (first " + shown.length + " of " + t.total + ")" : "")}), list);
  }

  // --- a certificate ---------------------------------------------------------------------
  function deploymentsTable(deps) {
    const yesNo = (v) => v === undefined ? "—" : (v ? "yes" : "no");
    return table(["frontend", "node", "status", "serial", "current", "verified", "batch", "updated", "message"],
      deps.map((d) => el("tr", {"data-node": d.frontend + "/" + d.node},
        el("td", {text: d.frontend}), el("td", {text: d.node}), el("td", {}, badge(d.status)),
        el("td", {text: d.serial}), el("td", {text: yesNo(d.current)}),
        el("td", {class: "verified",
                  title: d.verified ? "the node was seen serving it after the reload" +
                    (d.verified_at ? " (" + when(d.verified_at) + ")" : "") : null,
                  text: yesNo(d.verified)}),
        el("td", {text: d.batch || "—"}), el("td", {text: when(d.updated_at)}),
        el("td", {text: d.message || ""}))));
  }
  function eventsTable(items) {
    return table(["when", "kind", "severity", "certificate", "node", "token", "message"],
      items.map((e) => el("tr", {"data-kind": e.kind},
        el("td", {text: when(e.at)}), el("td", {text: e.kind}), el("td", {}, badge(e.severity)),
        el("td", {}, e.certificate ? certLink(e.certificate) : "—"), el("td", {text: e.node || "—"}),
        el("td", {text: e.token || "—"}), el("td", {class: "message", text: e.message}))));
  }
  function actionButton(label, id, question, run, danger) {
    return el("button", {type: "button", id, class: danger ? "danger" : null, on: {click: async (ev) => {
      if (!window.confirm(question)) return;
      ev.target.disabled = true;
      try { await run(); status(label + ": accepted"); }
      catch (e) { status(label + " failed: " + e.message); }
      finally { ev.target.disabled = false; }
      render();
    }}}, label);
  }
  async function certificatePage(name) {
    const path = "/api/v1/certificates/" + encodeURIComponent(name);
    const [c, history, alerts, events] = await Promise.all([
      api("GET", path), api("GET", path + "/history"), api("GET", "/api/v1/alerts"),
      api("GET", "/api/v1/events?limit=30&certificate=" + encodeURIComponent(name))]);
    const current = history.items.find((h) => h.serial === c.serial) || null;
    const actions = el("div", {class: "actions"},
      can("admin") ? [
        actionButton("Renew", "renew", "Renew " + c.name + " now (a new order at the CA), then deploy it?",
                     () => api("POST", path + "/renew")),
        actionButton("Deploy", "deploy", "Deploy the current certificate of " + c.name + " to every node?",
                     () => api("POST", path + "/deploy"))] : []);
    return el("div", {},
      el("h1", {}, "Certificate ", el("span", {id: "title", text: c.name}), " ", badge(c.status)),
      actions,
      facts([["names", c.domains.join(", ")], ["frontends", c.frontends.join(", ")],
             ...("profile" in c ? [["profile", c.profile]] : []),   // when the CA profile is shown
             ["status", badge(c.status)], ["serial", c.serial], ["not before", when(c.not_before)],
             ["not after", when(c.not_after)], ["days left", days(c.days_left)],
             ["SHA-256", c.fingerprint_sha256],
             ["issuer", current ? (current.issuer_name || "?") : null],
             ["CA directory", current ? current.issuer : null],
             ["renewal", c.renewal_at ? when(c.renewal_at) + " (" + (c.renewal_reason || "?") + ")" : null],
             ["failed attempts", String(c.attempts)], ["next attempt", when(c.next_attempt_at)]]),
      el("h2", {text: "Last error"}),
      el("pre", {class: "text", id: "last-error", text: c.last_error || "none"}),
      el("h2", {text: "Deployments"}), deploymentsTable(c.deployments),
      el("h2", {text: "Serial history (newest first)"}),
      table(["serial", "issued", "not before", "not after", "issuer"], history.items.map((h) =>
        el("tr", {"data-serial": h.serial}, el("td", {text: h.serial}), el("td", {text: when(h.issued_at)}),
           el("td", {text: when(h.not_before)}), el("td", {text: when(h.not_after)}),
           el("td", {text: h.issuer_name || "—"})))),
      el("h2", {text: "Findings"}), findingsTable(alerts.items.filter((a) => a.certificate === c.name)),
      el("h2", {text: "Recent events"}), eventsTable(events.items));
  }

  // --- aliases ---------------------------------------------------------------------------
  let aliasQuery = {status: "", q: "", cursors: [null]};   // cursors: the stack of pages seen
  function aliasesOrAlias(arg, seq) { return arg ? aliasPage(arg, seq) : aliasesPage(); }
  async function aliasesPage() {
    const page = aliasQuery.cursors[aliasQuery.cursors.length - 1];
    const params = new URLSearchParams({limit: String(PAGE)});
    if (aliasQuery.status) params.set("status", aliasQuery.status);
    if (aliasQuery.q) params.set("q", aliasQuery.q);
    if (page) params.set("cursor", page);
    const data = await api("GET", "/api/v1/domains?" + params);
    const statusSelect = el("select", {id: "filter-status", name: "status"},
      ["", "pending", "awaiting_dns", "issuing", "issued", "deployed", "failed", "removing"].map((s) =>
        el("option", {value: s, selected: s === aliasQuery.status, text: s || "any"})));
    const text = el("input", {id: "filter-q", name: "q", type: "search", value: aliasQuery.q,
                              placeholder: "part of the name"});
    const filters = el("form", {class: "inline", id: "filters", on: {submit: (ev) => {
      ev.preventDefault();
      aliasQuery = {status: statusSelect.value, q: text.value.trim(), cursors: [null]};
      render();
    }}}, el("label", {}, "status", statusSelect), el("label", {}, "name contains", text),
      el("button", {type: "submit"}, "Filter"));
    const rows = data.items.map((d) => el("tr", {"data-domain": d.domain},
      el("th", {scope: "row"}, aliasLink(d.domain)), el("td", {}, badge(d.status)),
      el("td", {text: d.frontends.join(", ")}),
      el("td", {text: d.certificate ? when(d.certificate.not_after) : "—"}),
      el("td", {class: "message", text: d.last_error || ""})));
    const pager = el("div", {class: "pager"},
      el("button", {type: "button", id: "prev", disabled: aliasQuery.cursors.length < 2, on: {click: () => {
        aliasQuery.cursors.pop(); render(); }}}, "← Previous"),
      el("span", {class: "muted", text: "page " + aliasQuery.cursors.length}),
      el("button", {type: "button", id: "next", disabled: !data.next_cursor, on: {click: () => {
        aliasQuery.cursors.push(data.next_cursor); render(); }}}, "Next →"));
    return el("div", {}, el("h1", {text: "Aliases (custom domains)"}),
      can("aliases") ? addForm() : null, filters,
      table(["domain", "status", "frontends", "expires", "last error"], rows), pager);
  }
  function addForm() {
    const input = el("input", {id: "add-domain", name: "domain", required: true, spellcheck: "false",
                               placeholder: "shop.example.com", "aria-describedby": "add-error"});
    const validation = el("select", {id: "add-validation", name: "validation"},
      el("option", {value: "http-01", text: "http-01 (through the frontends)"}),
      el("option", {value: "dns-persist", text: "dns-persist (a TXT record, once)"}));
    const error = el("p", {id: "add-error", class: "error", role: "alert"});
    const form = el("form", {class: "inline", id: "add-form", on: {submit: async (ev) => {
      ev.preventDefault();
      error.textContent = "";
      try {
        const body = {domain: input.value.trim()};
        if (validation.value !== "http-01") body.validation = validation.value;  // the default
        const added = await api("POST", "/api/v1/domains", body);
        location.hash = "#/aliases/" + encodeURIComponent(added.domain);
      } catch (e) {
        if (e.status !== 401) error.textContent = e.message;   // the name policy's words, as text
      }
    }}}, el("label", {}, "add a domain", input), el("label", {}, "validation", validation),
      el("button", {type: "submit", id: "add-submit"}, "Add"));
    return el("div", {}, form, error);
  }
  async function aliasPage(domain, seq) {
    const path = "/api/v1/domains/" + encodeURIComponent(domain);
    const [d, events] = await Promise.all([api("GET", path),
      api("GET", "/api/v1/events?limit=30&certificate=" + encodeURIComponent(domain))]);
    if (MOVING.has(d.status)) {
      pollTimer = setTimeout(() => { if (seq === renderSeq) render(); }, POLL_MS);
    }
    const cert = d.certificate || {};
    return el("div", {},
      el("h1", {}, "Alias ", el("span", {id: "title", text: d.domain}), " ",
         el("span", {id: "alias-status"}, badge(d.status))),
      el("div", {class: "actions"}, can("aliases") && d.status !== "removing" ?
        actionButton("Remove", "remove", "Remove " + d.domain + " from every node and forget it?",
                     async () => { await api("DELETE", path); }, true) : null,
        d.status !== "removing" ? el("a", {href: "#/certificates/" + encodeURIComponent(d.domain),
                                           text: "certificate details"}) : null),
      facts([["frontends", d.frontends.join(", ")], ["serial", cert.serial],
             ["not after", when(cert.not_after)], ["renewal", when(d.renewal_at)],
             ["next attempt", when(d.next_attempt_at)], ["added", when(d.created_at)]]),
      d.dns_record ? [el("h2", {text: "DNS record the customer publishes (" + (d.validation || "dns") + ")"}),
                      facts(Object.entries(d.dns_record).map(([k, v]) => [k, el("code", {id: "dns-" + slug(k), text: v})]))] : null,
      el("h2", {text: "Last error"}),
      el("pre", {class: "text", id: "last-error", text: d.last_error || "none"}),
      el("h2", {text: "Deployments"}), deploymentsTable(d.deployments),
      el("h2", {text: "Events"}), eventsTable(events.items));
  }

  // --- alerts and events -----------------------------------------------------------------
  async function alertsPage() {
    const a = await api("GET", "/api/v1/alerts");
    return el("div", {}, el("h1", {text: "Active findings (" + a.items.length + ")"}), findingsTable(a.items));
  }
  const EVENTS_PAGE = 100;
  let eventQuery = {kind: "", cursors: [null]};   // cursors: the stack of pages seen
  async function eventsPage() {
    const params = new URLSearchParams({limit: String(EVENTS_PAGE)});
    const cursor = eventQuery.cursors[eventQuery.cursors.length - 1];
    if (eventQuery.kind) params.set("kind", eventQuery.kind);
    if (cursor) params.set("cursor", cursor);
    const e = await api("GET", "/api/v1/events?" + params);
    const kind = el("input", {id: "filter-kind", type: "search", value: eventQuery.kind, placeholder: "e.g. api.domain.add"});
    const form = el("form", {class: "inline", on: {submit: (ev) => {
      ev.preventDefault(); eventQuery = {kind: kind.value.trim(), cursors: [null]}; render(); }}},
      el("label", {}, "kind", kind), el("button", {type: "submit"}, "Filter"));
    const pager = el("div", {class: "pager"},
      el("button", {type: "button", id: "events-prev", disabled: eventQuery.cursors.length < 2, on: {click: () => {
        eventQuery.cursors.pop(); render(); }}}, "← Newer"),
      el("span", {class: "muted", text: "page " + eventQuery.cursors.length}),
      el("button", {type: "button", id: "events-next", disabled: !e.next_cursor, on: {click: () => {
        eventQuery.cursors.push(e.next_cursor); render(); }}}, "Older →"));
    return el("div", {}, el("h1", {text: "Events (audit log, newest first)"}), form, eventsTable(e.items), pager);
  }

  // --- start -----------------------------------------------------------------------------
  document.addEventListener("DOMContentLoaded", async () => {
    $("login-form").addEventListener("submit", signIn);
    $("logout").addEventListener("click", () => signOut("Signed out."));
    window.addEventListener("hashchange", render);
    if (sessionStorage.getItem(TOKEN_KEY) && await loadMe()) render();
    else if (!sessionStorage.getItem(TOKEN_KEY)) showLogin("");
  });
})();
