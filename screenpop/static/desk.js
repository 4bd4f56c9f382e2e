// The agent's desk: pops over the WebSocket /agent/ws (protocol in screenpop/hub.py), wrap-up,
// click-to-dial and create/link through the agent's JSON routes.
//
// Rules:
// 1. Text only: everything from the server goes into the page through textContent (el() below),
//    never innerHTML, so a customer's name or note is shown as typed, never run as markup.
// 2. One card per pop_id: a replayed or repeated pop updates its card in place.
// 3. Resume: epoch, last_seq and the cards are kept in sessionStorage (per tab, per agent): a
//    reload shows the cards at once and asks only for what changed since last_seq; a new tab
//    starts empty and gets every live pop. The welcome's `live` drops cards whose retract was
//    missed (answered ones go to wrap-up instead: the call happened and needs a disposition).
// 4. Reconnect with capped exponential backoff and jitter; a 1008 close (session ended) or
//    a 401 from the agent routes means logged out: the page reloads to the login form.
"use strict";

(() => {
  const agentId = document.getElementById("agent").dataset.agentId;
  const STORE_KEY = `callbridge.desk.${agentId}`;
  const BACKOFF_INITIAL = 0.5;
  const BACKOFF_MAX = 15;
  const REMOVE_AFTER_MS = 4000;
  const ANSWERED = new Set(["answered", "held"]);
  const RETRACT_TEXT = {
    answered_elsewhere: "answered by someone else",
    caller_hung_up: "the caller hung up",
    ring_no_answer: "not answered",
    call_ended: "call ended",
    transferred_away: "transferred away",
  };
  const UPDATE_TEXT = {
    answered: "answered",
    held: "on hold",
    unheld: "back from hold",
    transferred: "transferred",
    caller_id: "caller id changed",
    queue: "queue changed",
    details: "details changed",
    customer: "customer linked",
  };

  const popsEl = document.getElementById("pops");
  const emptyEl = document.getElementById("empty");
  const connEl = document.getElementById("conn");

  let me = { dispositions: [], can_dial: false, loaded: false };
  let ws = null;
  let attempt = 0;
  let reconnectTimer = null;
  let leaving = false;
  const cards = new Map();

  // --- persistent state (Rule 3) --------------------------------------------------------------

  function loadState() {
    try {
      const saved = JSON.parse(sessionStorage.getItem(STORE_KEY) || "null");
      if (saved && typeof saved === "object" && saved.pops && typeof saved.pops === "object") {
        return saved;
      }
    } catch (err) {
      // A corrupt entry: start as a new tab would.
    }
    return { epoch: null, last_seq: null, pops: {} };
  }

  const state = loadState();

  function saveState() {
    try {
      sessionStorage.setItem(STORE_KEY, JSON.stringify(state));
    } catch (err) {
      // Storage full or disabled: the page still works, a reload replays every live pop.
    }
  }

  // --- DOM helpers (Rule 1) -------------------------------------------------------------------

  function el(tag, props, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(props || {})) {
      if (value === undefined || value === null || value === false) continue;
      if (key === "class") node.className = value;
      else if (key === "dataset") Object.assign(node.dataset, value);
      else if (key === "on") for (const [ev, fn] of Object.entries(value)) node.addEventListener(ev, fn);
      else if (key.startsWith("aria-") || key === "role" || key === "for") node.setAttribute(key, value);
      else node[key] = value;
    }
    for (const child of children.flat()) {
      if (child === undefined || child === null || child === false) continue;
      node.append(child instanceof Node ? child : String(child));
    }
    return node;
  }

  function fmtDuration(seconds) {
    if (typeof seconds !== "number" || !Number.isFinite(seconds)) return "";
    const s = Math.max(0, Math.round(seconds));
    const m = Math.floor(s / 60);
    return m ? `${m}m ${String(s % 60).padStart(2, "0")}s` : `${s}s`;
  }

  function fmtTime(value) {
    if (value === null || value === undefined || value === "") return "";
    const date = typeof value === "number" ? new Date(value * 1000) : new Date(value);
    return Number.isNaN(date.getTime()) ? String(value) : date.toLocaleString();
  }

  function setConn(kind, text) {
    connEl.className = `conn conn-${kind}`;
    connEl.textContent = text;
    document.body.dataset.conn = kind;
  }

  // --- HTTP ------------------------------------------------------------------------------------

  async function api(method, path, body) {
    const init = { method, credentials: "same-origin", headers: { Accept: "application/json" } };
    if (body !== undefined) {
      init.headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    let response;
    try {
      response = await fetch(path, init);
    } catch (err) {
      return { status: 0, data: { error: { code: "unreachable", message: "the service cannot be reached" } } };
    }
    if (response.status === 401) sessionEnded();
    let data = null;
    const text = await response.text();
    try {
      data = text ? JSON.parse(text) : null;
    } catch (err) {
      data = { error: { code: `http-${response.status}`, message: text.slice(0, 200) } };
    }
    return { status: response.status, data };
  }

  function errorOf(result) {
    const error = result.data && result.data.error;
    if (error && typeof error === "object") return error;
    return { code: `http-${result.status}`, message: `failed (${result.status || "no answer"})` };
  }

  function sessionEnded() {
    if (leaving) return;
    leaving = true;
    sessionStorage.removeItem(STORE_KEY);
    window.location.replace(window.location.pathname);
  }

  async function loadMe() {
    const restoredEnded = new Set(Object.keys(state.pops).filter((id) => state.pops[id].ended));
    const result = await api("GET", "me");
    if (result.status === 200 && result.data) {
      me = {
        dispositions: Array.isArray(result.data.dispositions) ? result.data.dispositions : [],
        can_dial: Boolean(result.data.can_dial),
        loaded: true,
      };
      if (Array.isArray(result.data.pending_wrapups)) adoptPending(result.data.pending_wrapups, restoredEnded);
    }
    document.getElementById("dial-form").hidden = !me.can_dial;
    for (const card of cards.values()) renderCard(card);
  }

  // The server's list of calls waiting for this agent's wrap-up is the truth: a new tab gets
  // their cards, and a card restored from storage that another tab wrapped up goes.
  function adoptPending(pending, restoredEnded) {
    const waiting = new Set();
    for (const call of pending) {
      if (!call || typeof call.pop_id !== "string") continue;
      waiting.add(call.pop_id);
      if (state.pops[call.pop_id]) continue;
      const number = call.number || "";
      state.pops[call.pop_id] = {
        message: {
          type: "pop",
          pop_id: call.pop_id,
          call_id: call.call_id,
          facts: { caller_num: number, queue: call.queue || null, state: "answered", answered_at: call.ended_at },
          payload: { customer: null, match: null, candidates: [] },
        },
        ended: true,
        gone: false,
        customer_id: call.customer_id || null,
        note: "",
      };
      const card = cardFor(call.pop_id, state.pops[call.pop_id]);
      card.lastReason = RETRACT_TEXT.call_ended;
    }
    for (const popId of restoredEnded) {
      if (!waiting.has(popId)) finishWrapup(popId);
    }
    saveState();
  }

  // --- click-to-dial ---------------------------------------------------------------------------

  async function dial(number, customerId, statusEl) {
    statusEl.textContent = `dialling ${number}…`;
    const body = { number };
    if (customerId) body.customer_id = customerId;
    const result = await api("POST", "dial", body);
    statusEl.textContent =
      result.status === 202 ? `calling ${number}: your phone rings first` : errorOf(result).message;
    statusEl.classList.toggle("error", result.status !== 202);
  }

  document.getElementById("dial-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const input = document.getElementById("dial-number");
    const number = input.value.trim();
    if (number) dial(number, null, document.getElementById("dial-status"));
  });

  document.getElementById("logout").addEventListener("click", async () => {
    leaving = true;
    clearTimeout(reconnectTimer);
    if (ws) ws.close(1000, "logout");
    try {
      await fetch("logout", { method: "POST", credentials: "same-origin" });
    } finally {
      sessionStorage.removeItem(STORE_KEY);
      window.location.replace(window.location.pathname);
    }
  });

  // --- cards ------------------------------------------------------------------------------------

  function entryPhase(entry) {
    if (entry.ended) return "ended";
    if (entry.gone) return "gone";
    const s = entry.message.facts && entry.message.facts.state;
    return s || "ringing";
  }

  function wasAnswered(entry) {
    const facts = entry.message.facts || {};
    return ANSWERED.has(facts.state) || Boolean(facts.answered_at);
  }

  function callerTitle(entry) {
    const payload = entry.message.payload || {};
    const facts = entry.message.facts || {};
    if (payload.customer && payload.customer.display_name) return payload.customer.display_name;
    const outbound = facts.direction === "outbound";
    const name = outbound ? facts.remote_name : facts.caller_name;
    const number = outbound ? facts.remote_num : facts.caller_num;
    if (name && name !== number && !/^<?unknown>?$/i.test(name)) return name;
    return number || "Unknown caller";
  }

  function upsert(message) {
    let entry = state.pops[message.pop_id];
    if (entry) {
      entry.message = { ...entry.message, ...message, type: "pop" };
      entry.gone = false;
    } else {
      entry = { message: { ...message, type: "pop" }, ended: false, gone: false, customer_id: null, note: "" };
      state.pops[message.pop_id] = entry;
    }
    return entry;
  }

  function showPop(message) {
    const entry = upsert(message);
    const card = cardFor(message.pop_id, entry);
    card.lastReason = message.replay ? "" : "new call";
    renderCard(card);
    saveState();
    send({ type: "ack", pop_id: message.pop_id });
  }

  function updatePop(message) {
    const entry = state.pops[message.pop_id];
    if (!entry) return;
    // An update carries the payload only when the pop was assembled again (hub.py): else keep ours.
    const payload = "payload" in message ? message.payload : entry.message.payload;
    entry.message = { ...entry.message, facts: message.facts, payload, seq: message.seq };
    const card = cardFor(message.pop_id, entry);
    card.lastReason = UPDATE_TEXT[message.reason] || message.reason;
    renderCard(card);
    saveState();
  }

  function retractPop(popId, reason) {
    const entry = state.pops[popId];
    if (!entry) return;
    const card = cardFor(popId, entry);
    if (wasAnswered(entry)) {
      entry.ended = true;
      card.lastReason = RETRACT_TEXT[reason] || reason;
      renderCard(card);
      saveState();
      return;
    }
    entry.gone = true;
    card.lastReason = RETRACT_TEXT[reason] || reason;
    delete state.pops[popId];
    saveState();
    renderCard(card);
    setTimeout(() => dropCard(popId), REMOVE_AFTER_MS);
  }

  function dropCard(popId) {
    const card = cards.get(popId);
    if (card && card.entry !== state.pops[popId]) {
      card.root.remove();
      cards.delete(popId);
    }
    updateEmpty();
  }

  function finishWrapup(popId) {
    delete state.pops[popId];
    saveState();
    const card = cards.get(popId);
    if (card) {
      card.root.remove();
      cards.delete(popId);
    }
    updateEmpty();
  }

  function updateEmpty() {
    emptyEl.hidden = cards.size > 0;
  }

  function cardFor(popId, entry) {
    let card = cards.get(popId);
    if (!card) {
      const root = el("article", { class: "pop", dataset: { popId } });
      card = { root, entry, lastReason: "", forms: {} };
      cards.set(popId, card);
      popsEl.prepend(root);
      updateEmpty();
    }
    card.entry = entry;
    return card;
  }

  function renderCard(card) {
    const { entry, root } = card;
    const message = entry.message;
    const facts = message.facts || {};
    const payload = message.payload || {};
    const phase = entryPhase(entry);
    root.className = `pop phase-${phase}`;
    root.dataset.state = phase;
    // Forms keep what the agent typed across re-renders: they are built once and moved back in.
    const kept = card.forms;
    const parts = [
      renderHead(entry, facts, phase, card.lastReason),
      renderCall(facts, payload),
      payload.error ? el("p", { class: "warning store-error", role: "alert" }, payload.error.message) : null,
      renderMatch(card, payload, facts),
      renderActions(card, payload, phase, kept),
    ];
    // replaceChildren() would show a null as the text "null".
    root.replaceChildren(...parts.filter(Boolean));
  }

  function renderHead(entry, facts, phase, reason) {
    const outbound = facts.direction === "outbound";
    const number = outbound ? facts.remote_num : facts.caller_num;
    const title = callerTitle(entry);
    const label = { ringing: "ringing", answered: "on call", held: "on hold", ended: "wrap-up", gone: "gone" };
    // A click-to-dial the agent picked up while the customer's phone still rings.
    const dialing = phase === "answered" && outbound && facts.customer_answered_at === null;
    return el(
      "header",
      { class: "pop-head" },
      el("h2", { class: "caller" }, title),
      number && number !== title ? el("span", { class: "number" }, number) : null,
      el("span", { class: `badge badge-${dialing ? "dialing" : phase}` }, dialing ? "dialing" : label[phase] || phase),
      reason ? el("span", { class: "reason" }, reason) : null,
    );
  }

  function renderCall(facts, payload) {
    const items = [];
    items.push(["direction", facts.direction]);
    if (facts.queue) items.push(["queue", facts.queue]);
    if (typeof facts.queue_position === "number") items.push(["position", String(facts.queue_position)]);
    if (typeof facts.wait_time === "number") items.push(["waited", fmtDuration(facts.wait_time)]);
    if (facts.dialed) items.push(["dialled", facts.dialed]);
    if (facts.transferred_from) items.push(["transferred from", facts.transferred_from]);
    const since = facts.answered_at || facts.ringing_since;
    const list = el("dl", { class: "call" });
    for (const [key, value] of items) {
      if (value === null || value === undefined || value === "") continue;
      list.append(el("dt", {}, key), el("dd", { class: `call-${key.replace(/ /g, "-")}` }, value));
    }
    if (typeof since === "number") {
      list.append(
        el("dt", {}, facts.answered_at ? "talking" : "ringing"),
        el("dd", { class: "timer", dataset: { since: String(since) } }, fmtDuration(Date.now() / 1000 - since)),
      );
    }
    const parts = [list];
    if (facts.ivr) {
      const ivr = facts.ivr;
      const spent =
        typeof ivr.entered_at === "number" && typeof ivr.left_at === "number"
          ? fmtDuration(ivr.left_at - ivr.entered_at)
          : null;
      parts.push(
        el(
          "p",
          { class: "ivr" },
          el("strong", {}, "IVR: "),
          [ivr.script, ivr.context && `${ivr.context}/${ivr.exten || ""}`, ivr.application]
            .filter(Boolean)
            .join(" · "),
          spent ? ` (${spent})` : null,
        ),
      );
      if (typeof ivr.digits === "string" && ivr.digits) {
        parts.push(el("p", { class: "ivr-digits" }, el("strong", {}, "Keyed in: "), el("kbd", {}, ivr.digits)));
      }
      if (Array.isArray(ivr.steps) && ivr.steps.length) {
        parts.push(
          el(
            "details",
            { class: "ivr-steps" },
            el("summary", {}, `IVR journey (${ivr.steps.length} steps)`),
            el("ol", {}, ivr.steps.map((step) => el("li", {}, String(step)))),
          ),
        );
      }
    }
    if (payload.campaign) {
      parts.push(
        el(
          "p",
          { class: "campaign" },
          el("strong", {}, "Campaign: "),
          payload.campaign.campaign_id || "—",
          payload.campaign.lead ? ` · lead ${payload.campaign.lead}` : null,
        ),
      );
    }
    return el("section", { class: "pop-call" }, parts);
  }

  function renderMatch(card, payload, facts) {
    const match = payload.match;
    const section = el("section", { class: `pop-customer match-${match || "none"}` });
    if (match === "withheld") section.append(el("p", { class: "match" }, "Number withheld."));
    if (match === "unknown") section.append(el("p", { class: "match" }, "Unknown caller: no customer has this number."));
    if (match === "ambiguous") {
      section.append(el("p", { class: "match" }, `${payload.candidates_total} customers share this number: pick the caller.`));
    }
    if (match === "ranked") {
      section.append(el("p", { class: "match" }, `Best of ${payload.candidates_total} customers with this number.`));
    }
    if (payload.customer) section.append(renderProfile(payload.customer, card));
    const candidates = Array.isArray(payload.candidates) ? payload.candidates : [];
    if (candidates.length > 1 || match === "ambiguous") {
      const list = el("ol", { class: "candidates" });
      for (const c of candidates) {
        const chosen = card.entry.customer_id === c.id;
        list.append(
          el(
            "li",
            { class: chosen ? "candidate chosen" : "candidate", dataset: { customerId: c.id } },
            el("span", { class: "candidate-name" }, c.display_name),
            el("span", { class: "score" }, ` ${Math.round(c.score)}`),
            el("span", { class: "reasons" }, (c.reasons || []).join("; ")),
            match === "ambiguous"
              ? el(
                  "button",
                  {
                    type: "button",
                    class: "pick",
                    on: {
                      click: () => {
                        card.entry.customer_id = c.id;
                        saveState();
                        renderCard(card);
                      },
                    },
                  },
                  chosen ? "the caller" : "this is the caller",
                )
              : null,
          ),
        );
      }
      section.append(list);
    }
    if (card.entry.linked) section.append(el("p", { class: "linked" }, card.entry.linked));
    return section;
  }

  function renderProfile(customer, card) {
    const consent = customer.consent || {};
    const parts = [];
    const dnc = Array.isArray(consent.do_not_call) ? consent.do_not_call : [];
    for (const entry of dnc) {
      parts.push(
        el(
          "p",
          { class: "warning dnc", role: "alert" },
          entry.scope === "number" ? `Do not call ${entry.target}` : `Do not call (${entry.scope})`,
          entry.reason ? `: ${entry.reason}` : "",
          entry.until ? ` until ${fmtTime(entry.until)}` : "",
        ),
      );
    }
    const refused = Object.entries(consent.channels || {})
      .filter(([, ok]) => ok === false)
      .map(([channel]) => channel);
    if (refused.length) parts.push(el("p", { class: "warning consent" }, `No consent: ${refused.join(", ")}`));
    if (Array.isArray(consent.quiet_hours) && consent.quiet_hours.length) {
      parts.push(el("p", { class: "consent quiet" }, `Quiet hours: ${consent.quiet_hours.join("–")}`));
    }
    const facts = el("dl", { class: "profile" });
    const add = (key, value) => {
      if (value !== null && value !== undefined && value !== "") facts.append(el("dt", {}, key), el("dd", {}, value));
    };
    add("company", customer.company);
    add("language", customer.language);
    add("time zone", customer.timezone);
    if (customer.value) {
      add("value", `${customer.value.score}${customer.value.explanation ? ` (${customer.value.explanation})` : ""}`);
    }
    parts.push(facts);
    if (Array.isArray(customer.segments) && customer.segments.length) {
      parts.push(el("ul", { class: "segments" }, customer.segments.map((s) => el("li", { class: "segment" }, s))));
    }
    parts.push(renderIdentities(customer, card));
    parts.push(renderLatest(customer.latest || {}));
    const notes = Array.isArray(customer.notes) ? [...customer.notes] : [];
    if (notes.length) {
      notes.sort((a, b) => Number(Boolean(b.pinned)) - Number(Boolean(a.pinned)));
      parts.push(
        el(
          "section",
          { class: "notes" },
          el("h3", {}, "Notes"),
          el(
            "ul",
            {},
            notes.map((n) =>
              el(
                "li",
                { class: n.pinned ? "note pinned" : "note" },
                el("span", { class: "note-text" }, n.text),
                el("span", { class: "meta" }, ` ${n.author || ""} ${fmtTime(n.at)}`),
              ),
            ),
          ),
        ),
      );
    }
    return el("div", { class: "customer", dataset: { customerId: customer.id } }, parts);
  }

  function renderIdentities(customer, card) {
    const list = el("ul", { class: "identities" });
    for (const identity of customer.identities || []) {
      const flags = [identity.label, identity.shared ? "shared" : null, identity.verified ? "verified" : null]
        .filter(Boolean)
        .join(", ");
      const item = el(
        "li",
        { class: `identity identity-${identity.kind}` },
        el("span", { class: "kind" }, identity.kind),
        " ",
        el("span", { class: "value" }, identity.value),
        identity.extension ? ` ext. ${identity.extension}` : null,
        flags ? el("span", { class: "meta" }, ` (${flags})`) : null,
      );
      if (identity.kind === "phone" && me.can_dial) {
        const status = el("span", { class: "dial-status", role: "status" });
        item.append(
          " ",
          el(
            "button",
            {
              type: "button",
              class: "dial-number",
              dataset: { number: identity.value },
              on: { click: () => dial(identity.value, customer.id, status) },
            },
            "Dial",
          ),
          status,
        );
      }
      list.append(item);
    }
    return list;
  }

  function renderLatest(latest) {
    const channels = Object.entries(latest).filter(([, items]) => Array.isArray(items) && items.length);
    if (!channels.length) return el("p", { class: "latest none" }, "No earlier interactions.");
    return el(
      "section",
      { class: "latest" },
      el("h3", {}, "Latest"),
      channels.map(([channel, items]) =>
        el(
          "div",
          { class: `channel channel-${channel}` },
          el("h4", {}, channel),
          el(
            "ul",
            {},
            items.map((item) =>
              el(
                "li",
                { class: "interaction" },
                el("span", { class: "meta" }, `${fmtTime(item.at)} ${item.direction || ""} `),
                el("span", { class: "summary" }, item.summary || ""),
              ),
            ),
          ),
        ),
      ),
    );
  }

  // --- forms: wrap-up, create, link -----------------------------------------------------------

  function renderActions(card, payload, phase, kept) {
    const section = el("section", { class: "pop-actions" });
    if (phase === "gone") return section;
    const actions = Array.isArray(payload.actions) ? payload.actions : [];
    const chosen = chosenCustomer(card.entry);
    if (!chosen && actions.some((a) => a.action === "create_customer")) {
      kept.create = kept.create || createForm(card, actions.find((a) => a.action === "create_customer"));
      section.append(kept.create);
    }
    if (!chosen && actions.some((a) => a.action === "link_number")) {
      kept.link = kept.link || linkForm(card);
      section.append(kept.link);
    }
    if (phase === "answered" || phase === "held" || phase === "ended") {
      kept.wrapup = kept.wrapup && kept.wrapup.dataset.dispositions === dispositionsKey() ? kept.wrapup : wrapupForm(card);
      section.append(kept.wrapup);
    }
    return section;
  }

  function chosenCustomer(entry) {
    const payload = entry.message.payload || {};
    return entry.customer_id || (payload.customer && payload.customer.id) || payload.linked_customer_id || null;
  }

  function dispositionsKey() {
    return `${me.loaded}:${me.dispositions.map((d) => d.code).join("\u0000")}`;
  }

  function fieldError(form, field, text) {
    for (const node of form.querySelectorAll(".field-error, .form-error")) node.textContent = "";
    const target =
      (field && form.querySelector(`.field-error[data-field="${CSS.escape(field)}"]`)) || form.querySelector(".form-error");
    if (target) target.textContent = text;
  }

  function wrapupForm(card) {
    const popId = card.entry.message.pop_id;
    const form = el("form", { class: "wrapup", dataset: { dispositions: dispositionsKey() } });
    form.append(el("h3", {}, "Wrap-up"));
    if (!me.dispositions.length) {
      form.append(el("p", { class: "form-error" }, me.loaded ? "No dispositions are configured." : "Loading dispositions…"));
      return form;
    }
    const select = el("select", { name: "disposition", required: true }, el("option", { value: "" }, "— disposition —"));
    for (const d of me.dispositions) select.append(el("option", { value: d.code }, d.label || d.code));
    const notes = el("textarea", { name: "notes", rows: 3, placeholder: "Notes" });
    notes.value = card.entry.note || "";
    notes.addEventListener("input", () => {
      card.entry.note = notes.value;
      saveState();
    });
    const submit = el("button", { type: "submit" }, "Save wrap-up");
    form.append(
      el("label", {}, "Disposition ", select),
      el("span", { class: "field-error", dataset: { field: "disposition" } }),
      el("label", {}, "Notes ", notes),
      el("span", { class: "field-error", dataset: { field: "notes" } }),
      el("span", { class: "field-error", dataset: { field: "customer_id" } }),
      submit,
      el("p", { class: "form-error", role: "alert" }),
    );
    form.addEventListener("input", () => fieldError(form, "", ""));
    form.addEventListener("submit", async (event) => {
      event.preventDefault();
      const code = select.value;
      const disposition = me.dispositions.find((d) => d.code === code);
      if (!disposition) return fieldError(form, "disposition", "Pick a disposition.");
      if (disposition.notes_required && !notes.value.trim()) {
        return fieldError(form, "notes", "Notes are required for this disposition.");
      }
      const body = { pop_id: popId, disposition: code };
      if (notes.value.trim()) body.notes = notes.value.trim();
      const customerId = chosenCustomer(card.entry);
      if (customerId) body.customer_id = customerId;
      submit.disabled = true;
      const result = await api("POST", "wrapup", body);
      submit.disabled = false;
      if (result.status >= 200 && result.status < 300) {
        finishWrapup(popId);
        return;
      }
      const error = errorOf(result);
      if (error.code === "already-wrapped-up") {
        finishWrapup(popId);
        return;
      }
      fieldError(form, error.field || "", error.message);
      if (result.status === 404 && error.field === "pop_id") {
        // The service forgot the call (wrap-up window over, or restarted): let the agent close it.
        form.append(el("button", { type: "button", class: "dismiss", on: { click: () => finishWrapup(popId) } }, "Dismiss"));
      }
    });
    return form;
  }

  function createForm(card, action) {
    const prefill = (action && action.prefill) || {};
    const name = el("input", { name: "display_name", required: true, placeholder: "Name" });
    name.value = prefill.display_name || "";
    const email = el("input", { name: "email", type: "email", placeholder: "Email (optional)" });
    const form = el(
      "form",
      { class: "create-customer" },
      el("h3", {}, "New customer"),
      el("label", {}, "Name ", name),
      el("span", { class: "field-error", dataset: { field: "display_name" } }),
      el("label", {}, "Email ", email),
      el("span", { class: "field-error", dataset: { field: "email" } }),
      el("button", { type: "submit" }, "Create"),
      el("p", { class: "form-error", role: "alert" }),
    );
    form.addEventListener("submit", async (event) => {
      event.preventDefault();
      const body = { pop_id: card.entry.message.pop_id, display_name: name.value.trim() };
      if (email.value.trim()) body.email = email.value.trim();
      const result = await api("POST", "customers", body);
      const created = result.data && (result.data.customer_id || (result.data.customer && result.data.customer.id));
      if (result.status === 201 && created) {
        card.entry.customer_id = created;
        card.entry.linked = `Created customer ${body.display_name}.`;
        saveState();
        renderCard(card);
        return;
      }
      const error = errorOf(result);
      fieldError(form, error.field || "", error.message);
    });
    return form;
  }

  function linkForm(card) {
    const query = el("input", { name: "q", type: "search", placeholder: "Name, email or number", required: true });
    const results = el("ul", { class: "link-results" });
    const form = el(
      "form",
      { class: "link-customer" },
      el("h3", {}, "Link this number to a customer"),
      query,
      el("button", { type: "submit" }, "Search"),
      results,
      el("p", { class: "form-error", role: "alert" }),
    );
    form.addEventListener("submit", async (event) => {
      event.preventDefault();
      const result = await api("GET", `customers?q=${encodeURIComponent(query.value.trim())}`);
      if (result.status !== 200) return fieldError(form, "", errorOf(result).message);
      const data = result.data;
      const found = Array.isArray(data) ? data : (data && (data.customers || data.matches || data.items)) || [];
      results.replaceChildren(
        ...(found.length ? [] : [el("li", {}, "Nobody found.")]),
        ...found.map((c) =>
          el(
            "li",
            {},
            el("span", {}, c.display_name || c.id),
            " ",
            el(
              "button",
              {
                type: "button",
                on: {
                  click: async () => {
                    const id = c.id || c.customer_id;
                    const linked = await api("POST", "link", { pop_id: card.entry.message.pop_id, customer_id: id });
                    if (linked.status >= 200 && linked.status < 300) {
                      card.entry.customer_id = id;
                      card.entry.linked = `Number linked to ${c.display_name || id}.`;
                      saveState();
                      renderCard(card);
                    } else {
                      fieldError(form, "", errorOf(linked).message);
                    }
                  },
                },
              },
              "Link",
            ),
          ),
        ),
      );
    });
    return form;
  }

  // --- the WebSocket (Rules 2-4) ----------------------------------------------------------------

  function send(message) {
    if (ws && ws.readyState === WebSocket.OPEN) ws.send(JSON.stringify(message));
  }

  function onWelcome(welcome) {
    const live = new Set(welcome.live || []);
    for (const [popId, entry] of Object.entries(state.pops)) {
      if (live.has(popId) || entry.ended) continue;
      if (wasAnswered(entry)) {
        entry.ended = true;
        const card = cardFor(popId, entry);
        card.lastReason = RETRACT_TEXT.call_ended;
        renderCard(card);
      } else {
        delete state.pops[popId];
        const card = cards.get(popId);
        if (card) card.root.remove();
        cards.delete(popId);
      }
    }
    state.epoch = welcome.epoch;
    state.last_seq = welcome.seq;
    saveState();
    updateEmpty();
    attempt = 0;
    setConn("live", "connected");
  }

  function onMessage(event) {
    let message;
    try {
      message = JSON.parse(event.data);
    } catch (err) {
      return;
    }
    if (message.type === "welcome") return onWelcome(message);
    if (typeof message.seq === "number" && (state.last_seq === null || message.seq > state.last_seq)) {
      state.last_seq = message.seq;
    }
    if (message.type === "pop") showPop(message);
    else if (message.type === "update") updatePop(message);
    else if (message.type === "retract") retractPop(message.pop_id, message.reason);
    else if (message.type === "wrapped") finishWrapup(message.pop_id);
    saveState();
  }

  function connect() {
    clearTimeout(reconnectTimer);
    if (leaving) return;
    setConn(attempt ? "reconnecting" : "connecting", attempt ? "reconnecting…" : "connecting…");
    const url = new URL("ws", window.location.href);
    url.protocol = url.protocol === "https:" ? "wss:" : "ws:";
    const socket = new WebSocket(url);
    ws = socket;
    socket.addEventListener("open", () => {
      socket.send(JSON.stringify({ type: "hello", last_seq: state.last_seq, epoch: state.epoch }));
    });
    socket.addEventListener("message", onMessage);
    socket.addEventListener("close", (event) => {
      if (ws !== socket || leaving) return;
      ws = null;
      if (event.code === 1008) return sessionEnded();
      scheduleReconnect();
    });
  }

  function scheduleReconnect() {
    // Jitter (each delay 50-100% of the capped exponential one): after a restart, the agents'
    // pages spread their reconnects instead of arriving together.
    const cap = Math.min(BACKOFF_MAX, BACKOFF_INITIAL * 2 ** attempt);
    const delay = cap * (0.5 + Math.random() / 2);
    attempt += 1;
    setConn("reconnecting", `disconnected: reconnecting in ${Math.ceil(delay)}s`);
    reconnectTimer = setTimeout(connect, delay * 1000);
    if (attempt >= 2) {
      // The upgrade of a logged-out page fails with no close code: ask an agent route who we are.
      api("GET", "me");
    }
  }

  window.addEventListener("online", () => {
    if (!ws && !leaving) {
      attempt = 0;
      connect();
    }
  });

  setInterval(() => {
    const now = Date.now() / 1000;
    for (const node of document.querySelectorAll(".timer[data-since]")) {
      node.textContent = fmtDuration(now - Number(node.dataset.since));
    }
  }, 1000);

  for (const [popId, entry] of Object.entries(state.pops)) {
    const card = cardFor(popId, entry);
    card.lastReason = entry.ended ? RETRACT_TEXT.call_ended : "";
    renderCard(card);
  }
  updateEmpty();
  loadMe();
  connect();
})();
