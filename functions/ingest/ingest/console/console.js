// The operator console: counts and listings of calls by state, one call's details, Retry
// and Archive. Plain DOM and fetch, no dependency. Everything shown comes from the /v1
// API, polled every POLL_MS while the tab is visible; text from the API is only ever set
// as textContent, never parsed as HTML.
"use strict";

(() => {
  const POLL_MS = 1500;
  const KEY_STORE = "pbx-console-api-key";
  const STATES = ["IN_PROGRESS", "PROCESSING_AI", "COMPLETED", "FAILED", "ARCHIVED"];
  const PAGE_SIZES = ["10", "25", "50", "100"];
  // The app's root, from this script's own URL (.../console/console.js): API calls keep any
  // prefix the page was served under (an API Gateway stage, a proxy's path).
  const ROOT = new URL("../", document.currentScript.src);

  const $ = (id) => document.getElementById(id);

  class KeyNeeded extends Error {}

  // ------------------------------------------------------------------ view (the URL's hash)

  // #state=FAILED&call=c1&limit=25: what is shown, so that a link or a reload shows it again.
  function readHash() {
    const params = new URLSearchParams(location.hash.slice(1));
    const state = STATES.includes(params.get("state")) ? params.get("state") : STATES[0];
    const limit = PAGE_SIZES.includes(params.get("limit")) ? params.get("limit") : "25";
    return { state, limit, call: params.get("call") || null };
  }

  function hashOf(view) {
    const params = new URLSearchParams({ state: view.state, limit: view.limit });
    if (view.call) params.set("call", view.call);
    return "#" + params.toString();
  }

  let view = readHash();
  let cursors = [null]; // the cursor of every page visited in this state; the last one is shown

  function go(patch) {
    location.hash = hashOf({ ...view, ...patch }); // hashchange does the rest
  }

  window.addEventListener("hashchange", () => {
    const next = readHash();
    if (next.state !== view.state || next.limit !== view.limit) cursors = [null];
    if (next.call !== view.call) openCall();
    view = next;
    render();
    tick();
  });

  // ------------------------------------------------------------------ API

  async function api(path, init = {}) {
    const headers = new Headers(init.headers);
    const key = sessionStorage.getItem(KEY_STORE);
    if (key) headers.set("X-API-Key", key);
    const response = await fetch(new URL(path, ROOT), { ...init, headers, cache: "no-store" });
    if (response.status === 401) {
      askForKey(key ? "That key was refused." : "");
      throw new KeyNeeded("an API key is needed");
    }
    return response;
  }

  // An error answer's text, from the API's {"error", "message"} body.
  async function problem(response) {
    const body = await response.json().catch(() => ({}));
    return `${response.status} ${body.error || response.statusText}: ${body.message || ""}`.trim();
  }

  async function getJson(path) {
    const response = await api(path);
    if (!response.ok) throw new Error(await problem(response));
    return response.json();
  }

  const callPath = (id) => `v1/call/${encodeURIComponent(id)}`;

  // ------------------------------------------------------------------ the API key

  let needKey = false;

  function askForKey(message) {
    needKey = true;
    $("key-form").hidden = false;
    $("key-error").textContent = message;
    $("forget-key").hidden = true;
    $("key-input").focus();
  }

  $("key-form").addEventListener("submit", (event) => {
    event.preventDefault();
    sessionStorage.setItem(KEY_STORE, $("key-input").value);
    $("key-input").value = "";
    $("key-form").hidden = true;
    $("forget-key").hidden = false;
    needKey = false;
    recordingFor = null; // a recording refused for want of a key can load now
    tick();
  });

  $("forget-key").addEventListener("click", () => {
    sessionStorage.removeItem(KEY_STORE);
    $("forget-key").hidden = true;
    tick();
  });

  // ------------------------------------------------------------------ polling

  let timer = null;
  let inFlight = false;
  let again = false;

  // One refresh at a time, so that an older answer never paints over a newer one; a tick
  // asked for meanwhile (a click) runs as soon as the current one ends.
  async function tick() {
    clearTimeout(timer);
    if (needKey) return;
    if (inFlight) {
      again = true;
      return;
    }
    inFlight = true;
    try {
      await Promise.all([refreshCounts(), refreshList(), refreshCall()]);
      status(`updated ${new Date().toLocaleTimeString()}`, false);
    } catch (error) {
      if (!(error instanceof KeyNeeded)) status(`update failed: ${error.message}`, true);
    } finally {
      inFlight = false;
    }
    if (again) {
      again = false;
      tick();
    } else if (!needKey && !document.hidden) {
      timer = setTimeout(tick, POLL_MS);
    }
  }

  // A hidden tab costs the API nothing; it catches up as soon as it is shown.
  document.addEventListener("visibilitychange", () => (document.hidden ? clearTimeout(timer) : tick()));

  function status(text, isError) {
    $("status").textContent = text;
    $("status").className = isError ? "error" : "muted";
  }

  // ------------------------------------------------------------------ counts and listing

  function el(tag, props = {}, ...children) {
    const node = Object.assign(document.createElement(tag), props);
    node.append(...children);
    return node;
  }

  function render() {
    for (const link of $("counts").querySelectorAll("a")) {
      link.href = hashOf({ ...view, state: link.dataset.state, call: view.call });
      link.classList.toggle("active", link.dataset.state === view.state);
    }
    $("list-state").textContent = view.state;
    $("page-size").value = view.limit;
  }

  function buildCounts() {
    for (const state of STATES) {
      const link = el("a", {}, el("span", { className: "name", textContent: state }), el("span", { className: "count" }));
      link.dataset.state = state;
      $("counts").append(link);
    }
  }

  async function refreshCounts() {
    const body = await getJson("v1/calls/counts");
    for (const { state, count, more } of body.counts) {
      const link = $("counts").querySelector(`a[data-state="${state}"]`);
      if (link) link.querySelector(".count").textContent = more ? `${count}+` : String(count);
    }
  }

  async function refreshList() {
    const asked = { state: view.state, limit: view.limit, cursor: cursors[cursors.length - 1] };
    const params = new URLSearchParams({ state: asked.state, limit: asked.limit });
    if (asked.cursor) params.set("cursor", asked.cursor);
    const page = await getJson(`v1/calls?${params}`);
    if (asked.state !== view.state || asked.limit !== view.limit) return; // the view changed meanwhile
    const rows = page.calls.map((call) => {
      const link = el("a", { href: hashOf({ ...view, call: call.call_id }), textContent: call.call_id });
      const row = el(
        "tr",
        {},
        el("td", {}, link),
        el("td", { className: "state", textContent: call.state }),
        el("td", { textContent: when(call.created_at) }),
        el("td", { textContent: when(call.updated_at) }),
        el("td", { className: "error", textContent: call.failure_reason || "" }),
      );
      row.dataset.callId = call.call_id;
      row.classList.toggle("selected", call.call_id === view.call);
      return row;
    });
    $("calls").replaceChildren(...rows);
    $("list-empty").hidden = rows.length > 0;
    $("older").disabled = !page.next_cursor;
    $("older").dataset.cursor = page.next_cursor || "";
    $("newer").disabled = $("newest").disabled = cursors.length === 1;
    $("page-number").textContent = `page ${cursors.length}`;
  }

  $("older").addEventListener("click", () => {
    cursors.push($("older").dataset.cursor);
    tick();
  });
  $("newer").addEventListener("click", () => {
    if (cursors.length > 1) cursors.pop();
    tick();
  });
  $("newest").addEventListener("click", () => {
    cursors = [null];
    tick();
  });
  $("page-size").addEventListener("change", () => go({ limit: $("page-size").value }));
  $("open-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const id = $("open-input").value.trim();
    if (id) go({ call: id });
  });

  // ------------------------------------------------------------------ one call

  let recordingFor = null; // the call whose recording the player holds (or is loading)

  // A new call is shown: forget the last one's answer and recording.
  function openCall() {
    $("action-answer").textContent = "";
    $("action-answer").className = "";
    const old = $("player").src;
    $("player").removeAttribute("src");
    $("player").hidden = true;
    if (old.startsWith("blob:")) URL.revokeObjectURL(old);
    recordingFor = null;
  }

  async function refreshCall() {
    const id = view.call;
    $("call").hidden = !id;
    if (!id) return;
    const response = await api(callPath(id));
    if (id !== view.call) return;
    if (!response.ok) {
      showMissing(id, await problem(response));
      return;
    }
    showCall(await response.json());
  }

  function showMissing(id, text) {
    $("call-id").textContent = id;
    $("call-state").textContent = "";
    $("call-failure").hidden = false;
    $("call-failure").textContent = text;
    for (const part of ["timeline", "packets", "attempts"]) $(part).replaceChildren();
    for (const part of ["recording-info", "sentiment", "transcript"]) $(part).textContent = "";
    $("retry").hidden = $("archive").hidden = true;
  }

  function showCall(call) {
    $("call-id").textContent = call.call_id;
    $("call-state").textContent = call.state;
    $("call-state").dataset.state = call.state;
    $("retry").hidden = call.state !== "FAILED";
    $("archive").hidden = !["COMPLETED", "FAILED"].includes(call.state);
    $("call-failure").hidden = !call.failure_reason;
    $("call-failure").textContent = call.failure_reason || "";

    const events = [[call.created_at, "created (first packet)"]];
    for (const a of call.ai.history) {
      events.push([a.started_at, `AI attempt ${a.number} (round ${a.round}) started${a.error ? ": failed" : ""}`]);
    }
    events.push([call.updated_at, `last change: ${call.state}`]);
    events.sort((x, y) => (x[0] < y[0] ? -1 : x[0] > y[0] ? 1 : 0));
    $("timeline").replaceChildren(
      ...events.map(([at, what]) => el("li", {}, el("time", { textContent: when(at) }), " ", what)),
    );

    const p = call.packets;
    const shown = p.missing.slice(0, 20).join(", ") + (p.missing_count > 20 ? ", ..." : "");
    const stats = [
      ["received", p.received],
      ["duplicates", p.duplicates],
      ["out of order", p.out_of_order],
      ["highest sequence", p.highest_sequence ?? "none"],
      ["missing", p.missing_count ? `${p.missing_count} (${shown})` : "0"],
    ];
    $("packets").replaceChildren(
      ...stats.flatMap(([name, value]) => [el("dt", { textContent: name }), el("dd", { textContent: String(value) })]),
    );
    for (const dd of $("packets").querySelectorAll("dd")) dd.dataset.stat = dd.previousSibling.textContent;

    const ai = call.ai;
    $("sentiment").textContent = ai.sentiment
      ? `Sentiment: ${ai.sentiment.label} (${ai.sentiment.score.toFixed(2)})`
      : "Sentiment: none yet";
    $("transcript").textContent =
      ai.transcript === null ? "(none yet)" : ai.transcript + (ai.transcript_truncated ? " [truncated]" : "");
    $("attempts").replaceChildren(
      ...ai.history.map((a) =>
        el(
          "tr",
          {},
          el("td", { textContent: String(a.round) }),
          el("td", { textContent: String(a.number) }),
          el("td", { textContent: when(a.started_at) }),
          el("td", { className: "error", textContent: a.error || "" }),
        ),
      ),
    );

    if (call.recording) {
      $("recording-info").textContent = `${call.recording.duration_s.toFixed(2)} s, ${call.recording.bytes} bytes`;
      if (recordingFor !== call.call_id) loadRecording(call.call_id);
    } else {
      $("recording-info").textContent = "none yet: it is stored when the call's AI processing starts";
    }
  }

  // <audio src> cannot send X-API-Key. On AWS the API answers a presigned S3 URL as JSON
  // (a fetch would follow its 307 with the key to S3, and fail CORS), which plays directly;
  // the local stack answers the WAV itself, which is fetched with the key and played from memory.
  async function loadRecording(id) {
    recordingFor = id; // once per opened call, not once per poll
    try {
      const response = await api(`${callPath(id)}/recording`, {
        headers: { Accept: "application/json, audio/wav;q=0.9" },
      });
      if (!response.ok) throw new Error(await problem(response));
      const presigned = (response.headers.get("Content-Type") || "").startsWith("application/json");
      const url = presigned ? (await response.json()).url : URL.createObjectURL(await response.blob());
      if (recordingFor !== id) {
        if (!presigned) URL.revokeObjectURL(url);
        return;
      }
      $("player").src = url;
      $("player").hidden = false;
    } catch (error) {
      if (recordingFor === id && !(error instanceof KeyNeeded)) {
        $("recording-info").textContent += ` (could not load it: ${error.message})`;
      }
    }
  }

  async function act(action, label) {
    const id = view.call;
    const button = $(action);
    button.disabled = true;
    $("action-answer").textContent = `${label}...`;
    try {
      const response = await api(`${callPath(id)}/${action}`, { method: "POST" });
      const ok = response.ok;
      const text = ok ? `${response.status}, now ${(await response.json()).state}` : await problem(response);
      if (id !== view.call) return;
      $("action-answer").textContent = `${label}: ${text}`;
      $("action-answer").className = ok ? "ok" : "error";
    } catch (error) {
      if (!(error instanceof KeyNeeded)) $("action-answer").textContent = `${label} failed: ${error.message}`;
    } finally {
      button.disabled = false;
    }
    tick();
  }

  $("retry").addEventListener("click", () => act("retry", "Retry"));
  $("archive").addEventListener("click", () => act("archive", "Archive"));

  // "2026-01-01T12:00:00.123456Z" -> "2026-01-01 12:00:00.123Z": UTC, as the API stores it.
  function when(iso) {
    return iso ? iso.replace("T", " ").replace(/(\.\d{3})\d*Z$/, "$1Z") : "";
  }

  buildCounts();
  render();
  if (sessionStorage.getItem(KEY_STORE)) $("forget-key").hidden = false;
  tick();
})();
