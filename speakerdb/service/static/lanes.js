// One lane per voice: its name, its speech, and a cursor at the time being played or heard.
// Used by the timeline (a finished recording) and the live view (lanes that grow).

import { fill, h, score, seconds, table, uid } from "./dom.js";

/** The name a span shows: the enrolled speaker, or the voice's label (unknown-1, ...). */
export function voiceName(span) {
  return span.speaker || span.label;
}

/**
 * The stretches ``[{start, end}]`` of ``label``'s segments that no other voice's segment
 * overlaps (with a segmentation model two voices may share a stretch): what may be enrolled
 * as that voice alone.
 */
export function aloneSpans(segments, label) {
  const others = segments.filter((s) => s.label !== label);
  const out = [];
  for (const seg of segments.filter((s) => s.label === label)) {
    let parts = [{ start: seg.start, end: seg.end }];
    for (const o of others) {
      parts = parts.flatMap((p) =>
        o.end <= p.start || o.start >= p.end
          ? [p]
          : [
              { start: p.start, end: o.start },
              { start: o.end, end: p.end },
            ].filter((q) => q.end > q.start),
      );
    }
    out.push(...parts);
  }
  return out;
}

/**
 * The lanes as text: a table of every span in time order (from, to, voice, score), for a screen
 * reader or anyone who would rather read than look at bars.
 */
export function spansTable(caption, spans) {
  const rows = [...spans]
    .sort((a, b) => a.start - b.start || a.end - b.end)
    .map((s) => [seconds(s.start), seconds(s.end), voiceName(s), score(s.score)]);
  return table(caption, ["From", "To", "Voice", "Score"], rows);
}

/**
 * Make ``track``'s segment buttons one Tab stop: the arrow keys, Home and End move between them
 * (a long meeting's hundreds of turns would otherwise each take a Tab), and the one focused last
 * is where Tab comes back to.
 */
function roving(track) {
  track.addEventListener("keydown", (e) => {
    const buttons = [...track.querySelectorAll("button.seg")];
    const i = buttons.indexOf(document.activeElement);
    const to = { ArrowRight: i + 1, ArrowDown: i + 1, ArrowLeft: i - 1, ArrowUp: i - 1, Home: 0, End: buttons.length - 1 }[e.key];
    if (i < 0 || to === undefined || e.altKey || e.ctrlKey || e.metaKey) return;
    e.preventDefault();
    const next = buttons[Math.max(0, Math.min(buttons.length - 1, to))];
    rove(track, next);
    next.focus();
  });
  track.addEventListener("focusin", (e) => {
    if (e.target.matches("button.seg")) rove(track, e.target);
  });
}

/** ``current`` (else the first segment) is the track's Tab stop; the others are reached by arrows. */
function rove(track, current) {
  const buttons = [...track.querySelectorAll("button.seg")];
  const stop = current && buttons.includes(current) ? current : buttons[0];
  for (const b of buttons) b.tabIndex = b === stop ? 0 : -1;
}

export class Lanes {
  /**
   * ``caption``: what the lanes show; ``onseek(t)``: a segment was chosen (the player jumps
   * there); ``extra(label)``: a node placed under a lane's name once (e.g. an enroll form).
   */
  constructor({ caption, onseek = null, extra = null }) {
    this.onseek = onseek;
    this.extra = extra;
    this.duration = 1;
    this.lanes = new Map(); // label -> {el, title, meta, track, cursor}
    // A heading of their own: the lanes' names (h3) then sit under an h2, not straight under the h1.
    const heading = h("h2", { id: uid("lanes") }, caption);
    this.el = h("div", { class: "lanes", role: "group", "aria-labelledby": heading.id }, heading);
    this.empty = h("p", { class: "hint" }, "No speech yet.");
    this.keysHint = h("p", { class: "sr-only", id: uid("lanes-keys") }, "Arrow keys move between this voice's segments.");
    if (this.onseek) this.el.append(this.keysHint);
    this.el.append(this.empty);
  }

  lane(label) {
    let lane = this.lanes.get(label);
    if (lane) return lane;
    const title = h("h3", { class: "lane-name" }, label);
    const meta = h("span", { class: "lane-meta" });
    const track = h("div", { class: "track" });
    if (this.onseek) roving(track);
    const cursor = h("div", { class: "cursor", "aria-hidden": "true" });
    track.append(cursor);
    const head = h("div", { class: "lane-head" }, title, meta);
    // A group, not a <section> with a name: that made every voice a landmark region.
    const el = h("div", { class: `lane c${this.lanes.size % 8}`, role: "group", dataset: { label } }, head, track);
    if (this.onseek) el.setAttribute("aria-describedby", this.keysHint.id);
    if (this.extra) {
      const extra = this.extra(label);
      if (extra) el.append(h("div", { class: "lane-extra" }, extra));
    }
    lane = { el, title, meta, track, cursor, label };
    this.lanes.set(label, lane);
    this.empty.remove();
    this.el.append(el);
    return lane;
  }

  /**
   * Show ``spans`` ({start, end, label, speaker, score, final}) over ``duration`` seconds.
   * Lanes are kept (and with them whatever is typed into their forms); their segments redrawn.
   */
  update(spans, duration) {
    this.duration = Math.max(duration || 0, 1e-3);
    const byLabel = new Map();
    for (const s of spans) {
      if (!byLabel.has(s.label)) byLabel.set(s.label, []);
      byLabel.get(s.label).push(s);
    }
    for (const [label, list] of byLabel) {
      const lane = this.lane(label);
      const last = list[list.length - 1];
      const name = voiceName(list.find((s) => s.speaker) || last);
      const talked = list.reduce((a, s) => a + (s.end - s.start), 0);
      const settled = list.every((s) => s.final !== false);
      fill(lane.title, name);
      lane.el.setAttribute("aria-label", `Voice ${name}`);
      lane.el.classList.toggle("known", Boolean(list.some((s) => s.speaker)));
      fill(
        lane.meta,
        `${seconds(talked)} of speech`,
        last.score !== undefined && last.score !== null ? `, score ${score(last.score)}` : "",
        settled ? "" : " (provisional)",
      );
      lane.track.replaceChildren(lane.cursor);
      for (const s of list) lane.track.append(this.segment(s, name));
      if (this.onseek) rove(lane.track, null);
    }
    // A voice whose provisional spans were all revised into others' is gone: so is its lane.
    for (const [label, lane] of [...this.lanes]) {
      if (!byLabel.has(label)) {
        lane.el.remove();
        this.lanes.delete(label);
      }
    }
    if (!this.lanes.size) this.el.append(this.empty);
  }

  segment(s, name) {
    const style = {
      left: `${(100 * s.start) / this.duration}%`,
      width: `${Math.max((100 * (s.end - s.start)) / this.duration, 0.4)}%`,
    };
    const text = `${name}, ${seconds(s.start)} to ${seconds(s.end)}${s.final === false ? ", provisional" : ""}`;
    const cls = `seg${s.final === false ? " provisional" : ""}`;
    if (!this.onseek) return h("span", { class: cls, style, title: text, role: "img", "aria-label": text });
    return h("button", { type: "button", class: cls, style, title: text, "aria-label": `Play ${text}`, onclick: () => this.onseek(s.start) });
  }

  /** Where the cursor stands, in seconds (null hides it). */
  cursorAt(t) {
    for (const lane of this.lanes.values()) {
      lane.cursor.hidden = t === null;
      if (t !== null) lane.cursor.style.left = `${Math.min(100, (100 * t) / this.duration)}%`;
    }
  }

  /** Rename a lane's voice (after it was enrolled); returns the lane's heading (focusable), or null. */
  rename(label, name) {
    const lane = this.lanes.get(label);
    if (!lane) return null;
    fill(lane.title, name);
    lane.el.setAttribute("aria-label", `Voice ${name}`);
    lane.el.classList.add("known");
    lane.title.tabIndex = -1;
    return lane.title;
  }
}
