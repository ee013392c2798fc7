// Live: the microphone streamed to WebSocket /v1/stream (16 kHz f32le frames); lanes grow as
// people talk, names appear provisional and settle when final. An unknown voice can be named
// and enrolled from what the session heard (write scope). The key goes in the socket's first
// message, never in its URL.

import { inGallery, session } from "../api.js";
import { Microphone, RATE } from "../audio.js";
import { busy, field, h, messages, seconds } from "../dom.js";
import { Lanes, spansTable, voiceName } from "../lanes.js";

/** Spans after ``event``: provisional spans it overlaps are replaced by it. */
export function revise(spans, event) {
  const kept = spans.filter((s) => s.final || s.end <= event.start || s.start >= event.end);
  kept.push({ start: event.start, end: event.end, label: event.label, speaker: event.speaker, score: event.score, final: event.final });
  kept.sort((a, b) => a.start - b.start);
  return kept;
}

export default async function live(main) {
  const out = messages();
  const level = h("meter", { min: "-60", max: "0", low: "-45", high: "-6", optimum: "-20", value: "-60", id: "live-level" });
  // An <output> is a live region: "off", or a screen reader reads the length ten times a second.
  const heard = h("output", { "aria-live": "off" }, seconds(0));
  const state = h("p", { class: "hint", role: "status", "aria-live": "polite" }, "Not listening.");
  const button = h("button", { type: "button" }, "Start listening");
  const summary = h("div");
  let spans = [];
  let mic = null;
  let socket = null;
  let fed = 0;

  const lanes = new Lanes({
    caption: "Voices heard",
    extra: (label) => {
      if (!label.startsWith("unknown") || !session.can("write")) return null;
      const name = h("input", { type: "text", required: true, autocomplete: "off", spellcheck: "false" });
      const f = h("form", { class: "inline enroll-voice" }, field(`Name ${label}`, name), h("button", { type: "submit" }, `Enroll ${label}`));
      f.addEventListener("submit", (e) => {
        e.preventDefault();
        if (!socket || socket.readyState !== WebSocket.OPEN) {
          out.error("enrolling needs the session running: start listening first");
          return;
        }
        socket.send(JSON.stringify({ type: "enroll", label, name: name.value.trim() }));
        out.info(`Enrolling ${label} as ${name.value.trim()}…`);
      });
      return f;
    },
  });
  const redraw = () => {
    const end = Math.max(fed, 20, ...spans.map((s) => s.end));
    lanes.update(spans, end);
    lanes.cursorAt(fed);
  };

  // The status (a polite live region) says who speaks when that changes, not every stretch of
  // speech: "Speech at 12.3 s" on each one was read over and over and never said who.
  let said = null;
  const say = (text) => {
    if (text !== said) state.textContent = said = text;
  };
  const onEvent = (ev) => {
    if (typeof ev.at === "number") fed = Math.max(fed, ev.at);
    switch (ev.type) {
      case "speech":
        if (said === "Listening…") say("Hearing speech…");
        break;
      case "voice":
        spans = revise(spans, ev);
        // Only the latest speech's voice: a region settled later may name who spoke before.
        if (ev.end >= Math.max(...spans.map((s) => s.end))) say(`${voiceName(ev)} speaking.`);
        redraw();
        break;
      case "enrolled":
        lanes.rename(ev.label, ev.name);
        for (const s of spans) if (s.label === ev.label) s.speaker = ev.name;
        out.info(`Enrolled ${ev.label} as ${ev.name}.`);
        redraw();
        break;
      case "error":
        out.error(`${ev.message}`);
        break;
      case "timeline": {
        spans = (ev.segments || []).map((s) => ({ ...s, final: true }));
        fed = Math.max(fed, ev.duration || 0);
        redraw();
        const voices = ev.voices || [];
        summary.replaceChildren(
          h("h2", {}, "Session"),
          h("p", {}, `${seconds(ev.duration || fed)} heard, ${voices.length} voice${voices.length === 1 ? "" : "s"}: ${voices.map((v) => v.speaker || v.label).join(", ") || "none"}.`),
          spans.length ? spansTable("Who spoke when", spans) : null,
        );
        break;
      }
      default:
        break;
    }
  };

  async function start() {
    out.clear();
    summary.replaceChildren();
    spans = [];
    fed = 0;
    redraw();
    const scheme = location.protocol === "https:" ? "wss" : "ws";
    const q = new URLSearchParams({ sample_rate: String(RATE), encoding: "f32le" });
    socket = new WebSocket(`${scheme}://${location.host}${inGallery("/v1/stream")}?${q}`);
    socket.binaryType = "arraybuffer";
    const ws = socket;
    ws.addEventListener("message", (e) => {
      if (typeof e.data !== "string") return;
      try {
        onEvent(JSON.parse(e.data));
      } catch {
        out.error("the service sent a message this page cannot read");
      }
    });
    ws.addEventListener("close", (e) => {
      if (socket === ws) {
        if (e.code !== 1000 && e.code !== 1005) out.error(e.reason || `the stream was closed (code ${e.code})`);
        stop(false);
      }
    });
    await new Promise((resolve, reject) => {
      ws.addEventListener("open", resolve, { once: true });
      ws.addEventListener("error", () => reject(new Error("the service's stream cannot be reached")), { once: true });
    });
    if (session.key) ws.send(JSON.stringify({ type: "auth", key: session.key }));
    mic = new Microphone({
      onblock: (block) => {
        if (ws.readyState === WebSocket.OPEN) ws.send(block.buffer);
        heard.value = seconds(mic ? mic.seconds : 0);
      },
      onlevel: (db) => {
        level.value = Math.max(-60, Math.min(0, db));
      },
    });
    await mic.start();
    button.textContent = "Stop listening";
    button.classList.add("recording");
    say("Listening…");
  }

  /** Stop the microphone; with ``finish``, ask the service for the session's timeline first. */
  async function stop(finish = true) {
    const m = mic;
    mic = null;
    if (m) await m.stop();
    level.value = -60;
    button.textContent = "Start listening";
    button.classList.remove("recording");
    const ws = socket;
    if (finish && ws && ws.readyState === WebSocket.OPEN) {
      say("Finishing the session…");
      ws.send(JSON.stringify({ type: "end" }));
      await new Promise((resolve) => {
        ws.addEventListener("close", resolve, { once: true });
        setTimeout(resolve, 30000);
      });
    }
    socket = null;
    if (ws && ws.readyState <= WebSocket.OPEN) ws.close(1000);
    say("Not listening.");
  }

  button.addEventListener("click", () =>
    busy(button, async () => {
      try {
        if (mic || socket) await stop(true);
        else await start();
      } catch (e) {
        out.error(e);
        await stop(false);
      }
    }),
  );

  main.append(
    h("h1", {}, "Live"),
    h("p", {}, "Names appear as people talk (dashed while provisional); nothing is recorded."),
    h("div", { class: "card recorder" }, button, h("label", { for: "live-level" }, "Input level"), level, h("span", {}, "Heard ", heard)),
    state,
    out.el,
    lanes.el,
    summary,
  );
  redraw();
  return async () => {
    await stop(false);
  };
}
