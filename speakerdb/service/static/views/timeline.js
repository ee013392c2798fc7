// Timeline: who speaks when in an uploaded recording. One lane per voice, a player whose
// cursor moves over the lanes, and an unknown voice named and enrolled from its own segments
// (cut from the recording here, in the browser, and sent as one WAV: the service keeps no
// uploaded audio to enroll from).

import { api } from "../api.js";
import { cut, decode, wav } from "../audio.js";
import { busy, dropzone, field, h, messages, seconds } from "../dom.js";
import { aloneSpans, Lanes, spansTable } from "../lanes.js";
import { callThreshold } from "../threshold.js";
import { enrollClips, enrollLines } from "./enroll.js";

export default async function timeline(main, { session }) {
  const out = messages();
  const view = h("div", { class: "timeline" });
  let url = null;
  let frame = null;
  let decoded = null; // the recording at 16 kHz, decoded on the first enrollment
  const threshold = callThreshold("Voices scoring below it against every enrolled speaker are unknown.");

  const clear = () => {
    if (frame) cancelAnimationFrame(frame);
    frame = null;
    if (url) URL.revokeObjectURL(url);
    url = null;
    decoded = null;
    view.replaceChildren();
  };

  const show = async (file) => {
    clear();
    const wrong = threshold.problem();
    if (wrong) {
      out.error(wrong, threshold.input);
      return;
    }
    const form = new FormData();
    form.append("files", file, file.name);
    if (threshold.input.value.trim()) form.append("threshold", threshold.input.value.trim());
    out.info(`Finding who speaks when in ${file.name}…`);
    let doc;
    try {
      [doc] = await api("POST", "/v1/timeline", { form });
    } catch (e) {
      out.error(e);
      return;
    }
    if (doc.error) {
      out.error(`${doc.file}: ${doc.error}`);
      return;
    }
    const voices = doc.voices.length;
    out.info(`${doc.file}: ${seconds(doc.duration)}, ${voices} voice${voices === 1 ? "" : "s"}.`);
    url = URL.createObjectURL(file);
    const player = h("audio", { controls: true, src: url, preload: "auto", "aria-label": `Play ${doc.file}` });
    const enrollForm = (label) => {
      if (!label.startsWith("unknown") || !session.can("write")) return null;
      const name = h("input", { type: "text", required: true, autocomplete: "off", spellcheck: "false" });
      const notes = messages();
      const button = h("button", { type: "submit" }, `Enroll ${label}`);
      const f = h("form", { class: "inline enroll-voice" }, field(`Name ${label}`, name), button, notes.el);
      f.addEventListener("submit", async (e) => {
        e.preventDefault();
        const who = name.value.trim();
        if (!who || button.disabled) return;
        await busy(button, async () => {
          notes.info(`Enrolling ${label} as ${who}…`);
          try {
            const spans = aloneSpans(doc.segments, label);
            if (!spans.length) throw new Error(`${label} is heard only over another voice: nothing to enroll`);
            decoded = decoded || (await decode(file));
            const clip = wav(cut(decoded, spans));
            const result = await enrollClips(who, [{ name: `${doc.file} ${label}.wav`, blob: clip }]);
            notes.lines(enrollLines(result));
            for (const s of doc.segments) if (s.label === label) s.speaker = who;
            showTable();
            // The button is disabled for good: the focus goes to the lane's heading, now the new name,
            // rather than to <body>.
            lanes.rename(label, who)?.focus();
            button.disabled = true;
          } catch (err) {
            notes.error(err);
          }
        });
      });
      return f;
    };
    const lanes = new Lanes({
      caption: `Voices in ${doc.file}`,
      onseek: (t) => {
        player.currentTime = t;
        lanes.cursorAt(t);
        player.play().catch(() => {});
      },
      extra: enrollForm,
    });
    // Lanes in the order of the voices' speaking time, as the service lists them.
    const order = new Map(doc.voices.map((v, i) => [v.label, i]));
    const segments = [...doc.segments].sort((a, b) => (order.get(a.label) ?? 99) - (order.get(b.label) ?? 99) || a.start - b.start);
    lanes.update(segments, doc.duration);
    lanes.cursorAt(0);
    const follow = () => {
      lanes.cursorAt(player.currentTime);
      frame = player.paused ? null : requestAnimationFrame(follow);
    };
    player.addEventListener("play", () => {
      if (!frame) frame = requestAnimationFrame(follow);
    });
    player.addEventListener("timeupdate", () => lanes.cursorAt(player.currentTime));
    player.addEventListener("seeked", () => lanes.cursorAt(player.currentTime));
    const text = h("div");
    const showTable = () => text.replaceChildren(spansTable(`Who speaks when in ${doc.file}`, doc.segments));
    showTable();
    view.append(player, lanes.el, h("h2", {}, "Who speaks when"), text);
    if (doc.notes && doc.notes.length) view.append(h("ul", { class: "notes" }, doc.notes.map((n) => h("li", {}, String(n)))));
  };

  const drop = dropzone("Recording", { multiple: false, onfiles: (files) => show(files[0]).then(() => (drop.input.value = "")) });
  main.append(
    h("h1", {}, "Timeline"),
    h("p", {}, "Upload a recording to see who speaks when. Choose a segment to play it."),
    h("div", { class: "card" }, threshold.el, drop.el),
    out.el,
    view,
  );
  threshold.load().catch((e) => out.error(e));
  return clear;
}
