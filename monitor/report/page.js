"use strict";
// Renders the report's JSON data (#report-data). Journal text is only ever set with textContent
// (or as a title/href built from numbers): never as markup.
(function () {
  const DATA = JSON.parse(document.getElementById("report-data").textContent);
  const SEV = { info: 0, low: 1, medium: 2, high: 3, critical: 4 };
  const KINDS = ["process", "file", "network", "dns", "model", "alert", "action"];
  const views = [];  // one per session: {session, procs: [{data, tree, row, items: [...]}], alerts: [...], ...}

  function el(tag, cls, text) {
    const node = document.createElement(tag);
    if (cls) node.className = cls;
    if (text !== undefined && text !== null) node.textContent = String(text);
    return node;
  }
  function add(parent, child) { parent.appendChild(child); return child; }
  function fmtMs(ms) {
    if (ms < 1000) return ms.toFixed(ms < 10 ? 2 : 0) + " ms";
    if (ms < 120000) return (ms / 1000).toFixed(2) + " s";
    return (ms / 60000).toFixed(1) + " min";
  }
  function lower(s) { return String(s === undefined || s === null ? "" : s).toLowerCase(); }
  function netText(c) { return c.kind === "dns" ? "dns " + (c.query || "") : c.kind + " " + (c.transport || "") + " " + c.address + ":" + c.port; }
  function procText(p) { return p.args || p.executable || "(pid " + p.pid + ")"; }
  function procAlerted(p) {
    return p.alerts.length > 0 || p.files.some(function (f) { return f.alerts.length > 0; }) ||
      p.connections.some(function (c) { return c.alerts.length > 0; });
  }
  function isPlainRead(f) { return !f.write && !f.alerts.length && !f.verdict && f.ops.length === 1 && f.ops[0] === "read"; }
  function pct(t, span) { return Math.max(0, Math.min(100, span > 0 ? (t / span) * 100 : 0)); }
  function procId(si, pi) { return "proc-" + si + "-" + pi; }
  function jump(si, pi) {
    const target = document.getElementById(procId(si, pi));
    if (!target) return;
    target.classList.remove("hidden");
    target.scrollIntoView({ block: "center" });
    target.classList.remove("flash");
    void target.offsetWidth;
    target.classList.add("flash");
  }
  function procLink(si, pi, session) {
    const p = session.processes[pi];
    const a = el("a", "proc-link", "→ pid " + p.pid + " " + procText(p));
    a.href = "#" + procId(si, pi);
    a.dataset.proc = String(pi);
    a.addEventListener("click", function (ev) { ev.preventDefault(); jump(si, pi); });
    return a;
  }

  // ---------------------------------------------------------------- header
  function header() {
    document.getElementById("generated").textContent = "journal " + DATA.journal + " · generated " + DATA.generated +
      (DATA.window.sandbox ? " · sandbox " + DATA.window.sandbox : "") +
      (DATA.window.since ? " · since " + DATA.window.since : "") + (DATA.window.until ? " · until " + DATA.window.until : "");
    const notices = document.getElementById("notices");
    const lim = DATA.limits;
    DATA.sessions.forEach(function (s) {
      const name = s.sandbox.name || s.sandbox.id;
      if (s.processes.length < s.processes_total)
        add(notices, el("li", "notice", name + ": " + s.processes.length + " of " + s.processes_total +
          " processes shown (bound " + lim.processes + "; those with alerts or model-caused, their ancestors, then the earliest)"));
      if (s.alerts.length < s.alerts_total)
        add(notices, el("li", "notice", name + ": " + s.alerts.length + " of " + s.alerts_total + " alerts listed; counts by rule are complete"));
      if (s.model_calls.length < s.model_calls_total)
        add(notices, el("li", "notice", name + ": " + s.model_calls.length + " of " + s.model_calls_total + " model calls listed"));
      if (s.actions.length < s.actions_total)
        add(notices, el("li", "notice", name + ": " + s.actions.length + " of " + s.actions_total + " actions listed"));
    });
    if (DATA.marks_hidden)
      add(notices, el("li", "notice", DATA.marks_hidden + " file/network marks left off the timelines (bound " + lim.marks + "; alerted ones first); the process tree lists them"));
    add(notices, el("li", "dim", "Per process, at most " + lim.items_per_process + " distinct files and " + lim.items_per_process +
      " distinct connections are listed (alerted ones always); the rest are counted as \"more\"."));
    if (!DATA.sessions.length) add(notices, el("li", "notice", "no sandbox session in this journal window"));
  }

  function facts(section, s) {
    const dl = add(section, el("dl", "facts"));
    function fact(k, v, cls) { add(dl, el("dt", "", k)); return add(dl, el("dd", cls || "", v)); }
    const sb = s.sandbox;
    fact("sandbox", (sb.name || "") + " (" + sb.id + ")");
    fact("runtime", sb.runtime || "-");
    fact("image", s.image || sb.image || "- (no image: a host cgroup sandbox)");
    if (sb.cgroup_path) fact("cgroup", sb.cgroup_path);
    if (sb.labels) fact("labels", Object.keys(sb.labels).map(function (k) { return k + "=" + sb.labels[k]; }).join(", "));
    if (s.posture) {
      const p = s.posture;
      const parts = Object.keys(p).map(function (k) {
        const v = p[k];
        return k + ": " + (typeof v === "object" && v !== null ? JSON.stringify(v) : String(v));
      });
      fact("posture", parts.join("; "), p.privileged ? "verdict-bad" : "");
    } else {
      fact("posture", "- (no container_start record: no container posture)");
    }
    fact("time", (s.start || "?") + " → " + (s.end || "?"));
    fact("duration", fmtMs(s.duration_ms));
    let ended = "-";
    if (s.exit) ended = "exit " + s.exit.code + (s.exit.signal ? " signal " + s.exit.signal : "") +
      (s.exit.killed_by ? " killed by " + s.exit.killed_by : "");
    fact("ended", ended, s.exit && (s.exit.signal || s.exit.code) ? "verdict-bad" : "");
    fact("events", s.events + ": " + Object.keys(s.counts).map(function (k) { return k + " " + s.counts[k]; }).join(", "));
    fact("processes", String(s.processes_total));
    const sev = Object.keys(s.alerts_by_severity).sort(function (a, b) { return SEV[b] - SEV[a]; })
      .map(function (k) { return s.alerts_by_severity[k] + " " + k; }).join(", ");
    fact("alerts", s.alerts_total ? s.alerts_total + " (" + sev + ")" : "none", s.alerts_total ? "verdict-bad" : "");
    const verdicts = add(dl, el("dt", "", "verdicts"));
    void verdicts;
    const dd = add(dl, el("dd", "verdicts"));
    const rules = Object.keys(s.alerts_by_rule);
    if (!rules.length && !s.actions.length && !s.denied) dd.textContent = "no rule fired";
    rules.forEach(function (r) { add(dd, el("div", "verdict-bad", r + " ×" + s.alerts_by_rule[r])); });
    s.actions.forEach(function (a) { add(dd, el("div", "verdict-bad", a.action + " (" + a.rule + "): " + a.outcome)); });
    if (s.denied) add(dd, el("div", "verdict-bad", s.denied + " call(s) denied in the kernel"));
  }

  // ---------------------------------------------------------------- timeline
  function timeline(section, s, si, view) {
    add(section, el("h3", "", "Timeline"));
    const legend = add(section, el("div", "legend dim"));
    [["bar", "process lifetime"], ["file", "file"], ["network", "connection"], ["dns", "DNS"], ["model", "model call"],
     ["alert", "alert"], ["action", "action"], ["would", "would flag (--rules)"]].forEach(function (x) {
      const span = add(legend, el("span", ""));
      add(span, el("i", x[0]));
      add(span, document.createTextNode(x[1]));
    });
    const box = add(section, el("div", "timeline"));
    const span = s.duration_ms || 1;
    const axis = add(box, el("div", "row axis"));
    add(axis, el("div", "label", "0 = " + (s.start || "")));
    const axisTrack = add(axis, el("div", "track"));
    for (let i = 0; i < 5; i++) {
      const tick = add(axisTrack, el("span", "tick", "+" + fmtMs(span * i / 5)));
      tick.style.left = (i * 20) + "%";
    }
    function mark(track, t, cls, title) {
      const m = add(track, el("div", "mark " + cls));
      m.style.left = pct(t, span) + "%";
      m.title = title;
      return m;
    }
    // model lane: requests, responses; tool calls stand out and link to the processes they caused
    const modelRow = add(box, el("div", "row lane model-lane"));
    add(modelRow, el("div", "label", "model calls / tool calls"));
    const modelTrack = add(modelRow, el("div", "track"));
    s.model_calls.forEach(function (c, ci) {
      const tools = c.tool_calls.map(function (t) { return t.name + " " + t.arguments; }).join("; ");
      const m = mark(modelTrack, c.t, c.tool_calls.length ? "model toolcall" : "model",
        c.kind + " " + c.provider + "/" + c.model + " +" + fmtMs(c.t) + (tools ? " → " + tools : ""));
      m.addEventListener("click", function () { if (c.caused.length) jump(si, c.caused[0]); });
      view.marks.push({ node: m, type: "model", call: ci });
    });
    const actRow = add(box, el("div", "row lane action-lane"));
    add(actRow, el("div", "label", "actions"));
    const actTrack = add(actRow, el("div", "track"));
    s.actions.forEach(function (a, ai) {
      const m = mark(actTrack, a.t, "action", a.action + " (" + a.rule + "): " + a.outcome + " +" + fmtMs(a.t));
      view.marks.push({ node: m, type: "action", action: ai });
    });
    const orphanRow = add(box, el("div", "row lane alert-lane"));
    add(orphanRow, el("div", "label", "alerts (process not in the page)"));
    const orphanTrack = add(orphanRow, el("div", "track"));
    let orphans = 0;
    s.processes.forEach(function (p, pi) {
      const row = add(box, el("div", "row proc-row"));
      row.dataset.proc = String(pi);
      const label = add(row, el("div", "label", procText(p)));
      label.style.paddingLeft = (6 + Math.min(p.depth, 20) * 10) + "px";
      label.title = "pid " + p.pid + " " + procText(p);
      label.addEventListener("click", function () { jump(si, pi); });
      const track = add(row, el("div", "track"));
      const bar = add(track, el("div", "bar" + (procAlerted(p) ? " alerted" : "") + (p.caused_by ? " caused" : "")));
      bar.style.left = pct(p.start, span) + "%";
      bar.style.width = Math.max(0, pct(p.end, span) - pct(p.start, span)) + "%";
      bar.title = "pid " + p.pid + " " + procText(p) + " +" + fmtMs(p.start) + " → " + (p.exited ? "+" + fmtMs(p.end) : "end");
      view.procs[pi].row = row;
      p.files.forEach(function (f, fi) {
        if (f.mark) view.marks.push({ node: mark(track, f.t, "file", (f.ops.join("/")) + " " + f.path + " ×" + f.count), type: "file", proc: pi, item: view.procs[pi].files[fi] });
      });
      p.connections.forEach(function (c, ci) {
        const type = c.kind === "dns" ? "dns" : "network";
        if (c.mark) view.marks.push({ node: mark(track, c.t, type, netText(c) + " ×" + c.count), type: type, proc: pi, item: view.procs[pi].conns[ci] });
      });
    });
    s.alerts.forEach(function (a, ai) {
      const row = a.proc !== null ? view.procs[a.proc].row : null;
      const m = mark(row ? row.querySelector(".track") : orphanTrack, a.t, "alert", a.severity + ": " + a.rule + " · " + a.subject);
      if (!row) orphans++;
      view.marks.push({ node: m, type: "alert", alert: ai });
    });
    s.would_flag.forEach(function (a, ai) {
      const row = a.proc !== null ? view.procs[a.proc].row : null;
      const m = mark(row ? row.querySelector(".track") : orphanTrack, a.t, "would", "would flag: " + a.severity + ": " + a.rule + " · " + a.subject);
      if (!row) orphans++;
      view.marks.push({ node: m, type: "would", would: ai });
    });
    if (!orphans) orphanRow.classList.add("hidden");
    if (!s.model_calls.length) modelRow.classList.add("hidden");
    if (!s.actions.length) actRow.classList.add("hidden");
  }

  // ---------------------------------------------------------------- model calls, alerts
  function modelCalls(section, s, si, view) {
    if (!s.model_calls.length) return;
    add(section, el("h3", "", "Model calls and tool calls"));
    const ul = add(section, el("ul", "calls model-calls"));
    s.model_calls.forEach(function (c) {
      const li = add(ul, el("li", "model-call " + c.kind));
      add(li, el("span", "dim", "+" + fmtMs(c.t) + " "));
      add(li, el("span", "model-name", (c.kind === "llm_request" ? "request " : "response ") + c.provider + "/" + c.model));
      if (c.stop_reason) add(li, el("span", "dim", " (" + c.stop_reason + ")"));
      if (c.usage && c.usage.input_tokens !== undefined) add(li, el("span", "dim", " tokens in " + c.usage.input_tokens + " out " + c.usage.output_tokens));
      if (c.pid !== null) add(li, el("span", "dim", " · pid " + c.pid));
      c.alerts.forEach(function (r) { add(li, document.createTextNode(" ")); add(li, el("span", "badge", r)); });
      if (c.asked) add(li, el("div", "asked", "last message: " + c.asked));
      if (c.text) add(li, el("div", "asked", "text: " + c.text));
      c.tool_calls.forEach(function (t) {
        const div = add(li, el("div", "toolcall"));
        add(div, el("span", "", "tool call "));
        add(div, el("code", "", t.name + " " + t.arguments));
        if (!c.caused.length) add(div, el("span", "dim", " (no process seen caused by it)"));
        c.caused.forEach(function (pi) { add(div, procLink(si, pi, s)); });
      });
      view.calls.push({ node: li, data: c });
    });
  }

  function alertTable(section, title, rows, cls, si, s, list) {
    const table = add(section, el("table", "alerts " + cls));
    const head = add(add(table, el("thead")), el("tr"));
    ["+time", "severity", "rule", "action", "kind", "what", "process"].forEach(function (h) { add(head, el("th", "", h)); });
    const body = add(table, el("tbody"));
    rows.forEach(function (a) {
      const tr = add(body, el("tr", cls));
      add(tr, el("td", "", "+" + fmtMs(a.t)));
      add(tr, el("td", "sev-" + a.severity, a.severity));
      add(tr, el("td", "rule", a.rule));
      add(tr, el("td", "", a.action + (a.mode === "audit" ? " (audit)" : "") + (a.verdict ? " · " + a.verdict : "")));
      add(tr, el("td", "", a.kind));
      add(tr, el("td", "", a.subject));
      const td = add(tr, el("td", "", a.pid !== null ? "pid " + a.pid + " " + a.executable : ""));
      if (a.proc !== null) add(td, procLink(si, a.proc, s));
      list.push({ node: tr, data: a });
    });
    void title;
  }

  // ---------------------------------------------------------------- process tree
  function itemLine(li, tag, what, extra) {
    add(li, el("span", "tag", tag + " "));
    add(li, el("span", "what", what));
    if (extra) add(li, el("span", "dim", extra));
  }
  function tree(section, s, si, view) {
    add(section, el("h3", "", "Process tree"));
    const box = add(section, el("div", "tree"));
    s.processes.forEach(function (p, pi) {
      const v = view.procs[pi];
      const div = add(box, el("div", "proc" + (procAlerted(p) ? " alerted" : "") + (p.placeholder ? " context" : "")));
      div.id = procId(si, pi);
      div.dataset.pid = String(p.pid);
      div.style.marginLeft = (Math.min(p.depth, 30) * 18) + "px";
      if (p.model_asked) add(div, el("div", "asked", "model asked: " + p.model_asked));
      const head = add(div, el("div", "head"));
      add(head, el("span", "cmd", procText(p)));
      let meta = "pid " + p.pid + (p.ppid !== null && p.ppid !== undefined ? " · ppid " + p.ppid : "") + " · " + p.executable +
        " · +" + fmtMs(p.start);
      if (p.exit) meta += " · exit " + p.exit.code + (p.exit.signal ? " signal " + p.exit.signal : "");
      if (p.previous) meta += " · was " + p.previous.join(", ");
      add(head, el("span", "meta", meta));
      p.alerts.forEach(function (r) { add(head, el("span", "badge", r)); });
      view.wouldByProc[pi] && view.wouldByProc[pi].forEach(function (r) { add(head, el("span", "badge would", "would flag: " + r)); });
      const ul = add(div, el("ul", "items"));
      // plain reads (mostly libraries and locale files) fold into one line; the rest stays in view
      const plainReads = p.files.filter(function (f) { return isPlainRead(f); }).length;
      let readsUl = null;
      if (plainReads) {
        v.reads = add(div, el("details", "reads"));
        v.readsSummary = add(v.reads, el("summary", "dim", plainReads + " file(s) only read"));
        readsUl = add(v.reads, el("ul", "items"));
      }
      p.files.forEach(function (f, fi) {
        const li = add(isPlainRead(f) ? readsUl : ul, el("li", "item file" + (f.alerts.length ? " alerted" : "") + (f.write ? " write" : "")));
        itemLine(li, "file " + f.ops.join("/"), f.path + (f.new_path ? " → " + f.new_path : ""),
          (f.count > 1 ? " ×" + f.count : "") + (f.verdict ? " " + f.verdict : ""));
        f.alerts.forEach(function (r) { add(li, document.createTextNode(" ")); add(li, el("span", "badge", r)); });
        v.files[fi].node = li;
      });
      if (p.more_files) v.moreFiles = add(ul, el("li", "more", p.more_files + " more file events on other paths (past the bound of " + DATA.limits.items_per_process + " paths read, as many again written)"));
      p.connections.forEach(function (c, ci) {
        const type = c.kind === "dns" ? "dns" : "network";
        const li = add(ul, el("li", "item " + type + (c.alerts.length ? " alerted" : "")));
        itemLine(li, type === "dns" ? "dns" : "net " + c.kind, type === "dns" ? c.query : (c.transport || "") + " " + c.address + ":" + c.port,
          (c.count > 1 ? " ×" + c.count : "") + (c.result !== null && c.result !== undefined && c.result < 0 ? " result " + c.result : "") + (c.verdict ? " " + c.verdict : ""));
        c.alerts.forEach(function (r) { add(li, document.createTextNode(" ")); add(li, el("span", "badge", r)); });
        v.conns[ci].node = li;
      });
      if (p.more_connections) v.moreConns = add(ul, el("li", "more", p.more_connections + " more connection events to other addresses (past the bound of " + DATA.limits.items_per_process + ")"));
      v.tree = div;
    });
  }

  // ---------------------------------------------------------------- filters
  function state() {
    const kinds = new Set(KINDS.filter(function (k) { return document.getElementById("f-kind-" + k).checked; }));
    const sevName = document.getElementById("f-severity").value;
    return { kinds: kinds, sev: sevName ? SEV[sevName] : -1,
             proc: lower(document.getElementById("f-process").value.trim()),
             path: lower(document.getElementById("f-path").value.trim()),
             addr: lower(document.getElementById("f-address").value.trim()),
             q: lower(document.getElementById("f-search").value.trim()) };
  }
  function has(text, needle) { return !needle || lower(text).indexOf(needle) >= 0; }
  function rulesSev(rules, ruleSev) { let m = -1; rules.forEach(function (r) { m = Math.max(m, SEV[ruleSev[r]] !== undefined ? SEV[ruleSev[r]] : 0); }); return m; }

  function applyFilters() {
    const st = state();
    let shownProcs = 0, totalProcs = 0, shownAlerts = 0, totalAlerts = 0;
    views.forEach(function (view) {
      const s = view.session, ruleSev = view.ruleSev;
      // items first: a process with a path/address filter shows only if one of its items does
      view.procs.forEach(function (v) {
        const p = v.data;
        const own = "pid " + p.pid + " " + p.args + " " + p.executable + " " + (p.model_asked || "") + " " + p.alerts.join(" ");
        const procOk = !st.proc || String(p.pid) === st.proc || has(p.args + " " + p.executable, st.proc);
        const ownSearch = has(own, st.q);
        let anyItem = false, anyPath = false, anyAddr = false, maxSev = rulesSev(p.alerts, ruleSev);
        v.files.forEach(function (f) {
          const d = f.data;
          const text = d.path + " " + (d.new_path || "") + " " + d.alerts.join(" ");
          let ok = st.kinds.has("file") && has(d.path + " " + (d.new_path || ""), st.path) && !st.addr &&
            (ownSearch || has(text, st.q)) && (st.sev < 0 || rulesSev(d.alerts, ruleSev) >= st.sev);
          maxSev = Math.max(maxSev, rulesSev(d.alerts, ruleSev));
          f.visible = ok;
          if (ok) { anyItem = true; if (st.path) anyPath = true; }
        });
        v.conns.forEach(function (c) {
          const d = c.data, type = d.kind === "dns" ? "dns" : "network";
          const text = netText(d) + " " + d.alerts.join(" ");
          const ok = st.kinds.has(type) && has(netText(d), st.addr) && !st.path &&
            (ownSearch || has(text, st.q)) && (st.sev < 0 || rulesSev(d.alerts, ruleSev) >= st.sev);
          maxSev = Math.max(maxSev, rulesSev(d.alerts, ruleSev));
          c.visible = ok;
          if (ok) { anyItem = true; if (st.addr) anyAddr = true; }
        });
        let visible = procOk && (ownSearch || anyItem) && (!st.path || anyPath) && (!st.addr || anyAddr) &&
          (st.sev < 0 || maxSev >= st.sev) && (st.kinds.has("process") || anyItem);
        v.visible = visible;
      });
      // ancestors of a shown process stay, dimmed, so the tree still says where it came from
      view.procs.forEach(function (v) { v.context = false; });
      view.procs.forEach(function (v) {
        if (!v.visible) return;
        let parent = v.data.parent;
        while (parent !== null && parent !== undefined && !view.procs[parent].visible && !view.procs[parent].context) {
          view.procs[parent].context = true;
          parent = view.procs[parent].data.parent;
        }
      });
      view.procs.forEach(function (v) {
        totalProcs++;
        if (v.visible) shownProcs++;
        const show = v.visible || v.context;
        v.tree.classList.toggle("hidden", !show);
        v.tree.classList.toggle("context", v.context || v.data.placeholder);
        if (v.row) v.row.classList.toggle("hidden", !show);
        v.files.forEach(function (f) { f.node.classList.toggle("hidden", !(v.visible && f.visible)); });
        if (v.reads) {
          const reads = v.files.filter(function (f) { return v.visible && f.visible && isPlainRead(f.data); }).length;
          v.reads.classList.toggle("hidden", reads === 0);
          v.readsSummary.textContent = reads + " file(s) only read";
          if (st.path || st.q) v.reads.open = reads > 0;
        }
        v.conns.forEach(function (c) { c.node.classList.toggle("hidden", !(v.visible && c.visible)); });
        const filtered = st.path || st.addr || st.q || st.sev >= 0;
        if (v.moreFiles) v.moreFiles.classList.toggle("hidden", !v.visible || filtered || !st.kinds.has("file"));
        if (v.moreConns) v.moreConns.classList.toggle("hidden", !v.visible || filtered || !(st.kinds.has("network") || st.kinds.has("dns")));
      });
      function alertOk(a) {
        const procOk = !st.proc || String(a.pid) === st.proc || has(a.executable, st.proc);
        const pathOk = !st.path || (["open", "unlink", "rename", "chmod"].indexOf(a.kind) >= 0 && has(a.subject, st.path));
        const addrOk = !st.addr || (["connect", "accept", "bind", "listen", "dns"].indexOf(a.kind) >= 0 && has(a.subject, st.addr));
        const text = a.rule + " " + a.severity + " " + a.subject + " " + a.executable + " " + a.tags.join(" ") + " " + a.description;
        return st.kinds.has("alert") && procOk && pathOk && addrOk && has(text, st.q) && (st.sev < 0 || SEV[a.severity] >= st.sev);
      }
      view.alerts.forEach(function (a) {
        const ok = alertOk(a.data);
        totalAlerts++;
        if (ok) shownAlerts++;
        a.node.classList.toggle("hidden", !ok);
      });
      view.would.forEach(function (a) { a.node.classList.toggle("hidden", !alertOk(a.data)); });
      view.calls.forEach(function (c) {
        const d = c.data;
        const text = d.kind + " " + d.provider + " " + d.model + " " + (d.text || "") + " " + (d.asked || "") + " " +
          d.tool_calls.map(function (t) { return t.name + " " + t.arguments; }).join(" ") + " " + d.alerts.join(" ");
        const ok = st.kinds.has("model") && has(text, st.q) && (!st.proc || String(d.pid) === st.proc ||
          d.caused.some(function (pi) { return view.procs[pi].visible; }));
        c.visible = ok;
        c.node.classList.toggle("hidden", !ok);
      });
      view.actions.forEach(function (a) {
        const d = a.data;
        a.node.classList.toggle("hidden", !(st.kinds.has("action") && has(d.action + " " + d.rule + " " + d.outcome + " " + d.message, st.q)));
      });
      view.marks.forEach(function (m) {
        let ok;
        if (m.type === "alert") ok = alertOk(s.alerts[m.alert]) && (s.alerts[m.alert].proc === null || view.procs[s.alerts[m.alert].proc].visible);
        else if (m.type === "would") ok = alertOk(s.would_flag[m.would]);
        else if (m.type === "model") ok = view.calls[m.call].visible;
        else if (m.type === "action") ok = st.kinds.has("action") && has(s.actions[m.action].rule + " " + s.actions[m.action].action, st.q);
        else ok = view.procs[m.proc].visible && m.item.visible;
        m.node.classList.toggle("hidden", !ok);
      });
    });
    document.getElementById("filter-status").textContent = "showing " + shownProcs + " of " + totalProcs + " processes, " +
      shownAlerts + " of " + totalAlerts + " alerts";
  }

  // ---------------------------------------------------------------- sessions
  function session(s, si) {
    const view = { session: s, procs: [], alerts: [], would: [], calls: [], actions: [], marks: [], ruleSev: {}, wouldByProc: {} };
    s.alerts.forEach(function (a) { view.ruleSev[a.rule] = a.severity; });
    s.would_flag.forEach(function (a) {
      if (view.ruleSev[a.rule] === undefined) view.ruleSev[a.rule] = a.severity;
      if (a.proc !== null) (view.wouldByProc[a.proc] = view.wouldByProc[a.proc] || []).push(a.rule);
    });
    Object.keys(view.wouldByProc).forEach(function (k) { view.wouldByProc[k] = Array.from(new Set(view.wouldByProc[k])); });
    s.processes.forEach(function (p) {
      // the data leaves out defaults (see model.py _compact) and names each path once per session
      p.files.forEach(function (f) {
        f.path = s.paths[f.p]; f.ops = f.ops || []; f.alerts = f.alerts || []; f.count = f.count || 1;
        f.write = !!f.write; f.mark = !!f.mark;
      });
      p.connections.forEach(function (c) {
        c.alerts = c.alerts || []; c.count = c.count || 1; c.mark = !!c.mark;
        if (c.address === undefined) c.address = "";
        if (c.port === undefined) c.port = "";
      });
      view.procs.push({ data: p, files: p.files.map(function (f) { return { data: f }; }),
                        conns: p.connections.map(function (c) { return { data: c }; }) });
    });
    const section = add(document.getElementById("sessions"), el("section", "session"));
    section.id = "session-" + si;
    add(section, el("h2", "", "sandbox " + (s.sandbox.name || s.sandbox.id)));
    facts(section, s);
    timeline(section, s, si, view);
    modelCalls(section, s, si, view);
    if (s.actions.length) {
      add(section, el("h3", "", "Actions"));
      const ul = add(section, el("ul", "calls actions"));
      s.actions.forEach(function (a) {
        const li = add(ul, el("li", "action", "+" + fmtMs(a.t) + " " + a.action + " (" + a.rule + "): " + a.outcome +
          (a.latency_ms ? " in " + a.latency_ms + " ms" : "") + (a.message ? " · " + a.message : "")));
        if (a.proc !== null) add(li, procLink(si, a.proc, s));
        view.actions.push({ node: li, data: a });
      });
    }
    add(section, el("h3", "", "Alerts (" + s.alerts_total + ")"));
    if (s.alerts.length) alertTable(section, "", s.alerts, "alert", si, s, view.alerts);
    else add(section, el("p", "dim", "no alert was recorded"));
    if (DATA.rules) {
      const would = add(section, el("div", "would-section"));
      add(would, el("h3", "", "With the given rules (" + DATA.rules.join(", ") + "): " + s.would_flag_total + " more would have been flagged"));
      (DATA.rules_diff || []).forEach(function (d) { add(would, el("div", "diff diff-" + d.status, d.text)); });
      if (s.would_flag.length) alertTable(would, "", s.would_flag, "would-flag", si, s, view.would);
    }
    tree(section, s, si, view);
    views.push(view);
  }

  header();
  DATA.sessions.forEach(session);
  const form = document.getElementById("filters");
  // typing waits for a pause (a large page takes a moment per pass); boxes and lists apply at once
  let timer = null;
  function applyNow() {
    if (timer !== null) { clearTimeout(timer); timer = null; }
    applyFilters();
    document.body.dataset.pending = "0";
  }
  function applySoon() {
    document.body.dataset.pending = "1";
    if (timer !== null) clearTimeout(timer);
    timer = setTimeout(applyNow, 200);
  }
  form.addEventListener("input", function (ev) { if (ev.target.type === "search") applySoon(); else applyNow(); });
  form.addEventListener("change", function (ev) { if (ev.target.type !== "search") applyNow(); });
  form.addEventListener("reset", function () { document.body.dataset.pending = "1"; setTimeout(applyNow, 0); });
  form.addEventListener("submit", function (ev) { ev.preventDefault(); });
  applyNow();
  document.body.dataset.ready = "1";
})();
