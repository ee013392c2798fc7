// Enroll: a name, recordings uploaded or recorded from the microphone (level meter, start/stop,
// length), and the enrollment's notes as the CLI prints them.

import { api, seg } from "../api.js";
import { Microphone, concat, wav } from "../audio.js";
import { busy, dropzone, field, h, messages, seconds } from "../dom.js";

/** The lines `speakerdb enroll` prints for ``result`` (notes and warnings on stderr, then the summary). */
export function enrollLines(result, withMetadata = false) {
  const lines = [];
  for (const s of result.skipped) lines.push(`note: skipped ${s.source}: ${s.reason}`);
  for (const w of result.warnings) lines.push(`warning: ${w.source}: ${w.reason}`);
  for (const note of result.notes || []) lines.push(`warning: ${note}`); // "this voice matches alice (0.93) ..."
  const verb = result.created ? "created" : result.added.length || withMetadata ? "updated" : "unchanged";
  lines.push(
    `${verb} ${result.speaker}: ${result.added.length} utterance(s) added, ` +
      `${result.skipped.length} skipped, ${result.n_utterances} in all`,
  );
  return lines;
}

/** POST the clips (File or {name, blob}) as an enrollment of ``name``. */
export async function enrollClips(name, clips, { metadata = null, isNew = false, strict = false, consent = "" } = {}) {
  const form = new FormData();
  for (const c of clips) form.append("files", c.blob || c, c.name);
  if (metadata) form.append("metadata", JSON.stringify(metadata));
  if (isNew) form.append("new", "true");
  if (strict) form.append("strict", "true");
  if (consent) form.append("consent", consent); // enroll --consent: required where the policy says so
  return api("POST", `/v1/speakers/${seg(name)}/enrollments`, { form });
}

/** ``key=value`` lines as an object (the CLI's --meta), or an error naming the bad line. */
function parseMeta(text) {
  const meta = {};
  for (const raw of text.split("\n")) {
    const line = raw.trim();
    if (!line) continue;
    const at = line.indexOf("=");
    if (at <= 0) throw new Error(`metadata must be KEY=VALUE lines, not ${JSON.stringify(line)}`);
    meta[line.slice(0, at).trim()] = line.slice(at + 1).trim();
  }
  return Object.keys(meta).length ? meta : null;
}

export default async function enroll(main, { go }) {
  const out = messages();
  const clips = []; // {name, blob, seconds?, url?}
  let recorded = 0;

  const name = h("input", { type: "text", required: true, autocomplete: "off", spellcheck: "false" });
  const meta = h("textarea", { rows: "2", spellcheck: "false" });
  const consent = h("input", { type: "text", autocomplete: "off" });
  const isNew = h("input", { type: "checkbox" });
  const strict = h("input", { type: "checkbox" });
  const list = h("ul", { class: "clips", "aria-label": "Recordings to enroll" });
  const showClips = () => {
    list.replaceChildren(
      ...clips.map((c, i) =>
        h(
          "li",
          {},
          h("span", {}, c.name, c.seconds ? ` (${seconds(c.seconds)})` : ""),
          c.url ? h("audio", { controls: true, src: c.url, preload: "metadata", "aria-label": `Play ${c.name}` }) : null,
          h(
            "button",
            {
              type: "button",
              "aria-label": `Remove ${c.name}`,
              onclick: () => {
                if (c.url) URL.revokeObjectURL(c.url);
                clips.splice(i, 1);
                showClips();
                // The pressed button is gone: the focus goes to the next clip's, or back to the picker.
                const left = list.querySelectorAll("button");
                (left[Math.min(i, left.length - 1)] || drop.input).focus();
              },
            },
            "Remove",
          ),
        ),
      ),
    );
    if (!clips.length) list.append(h("li", { class: "hint" }, "No recordings yet: choose files or record."));
  };
  const drop = dropzone("Audio files", {
    onfiles: (files) => {
      for (const f of files) clips.push({ name: f.name, blob: f });
      drop.input.value = "";
      showClips();
    },
  });

  // The microphone: start/stop, a level meter and the length recorded.
  const level = h("meter", { min: "-60", max: "0", low: "-45", high: "-6", optimum: "-20", value: "-60", id: "enroll-level" });
  const length = h("output", { "aria-live": "off" }, seconds(0));
  const recButton = h("button", { type: "button" }, "Start recording");
  let mic = null;
  let blocks = [];
  recButton.addEventListener("click", async () => {
    if (mic) {
      await stopRecording();
      return;
    }
    blocks = [];
    mic = new Microphone({
      onblock: (b) => {
        blocks.push(b);
        length.value = seconds(mic ? mic.seconds : 0);
      },
      onlevel: (db) => {
        level.value = Math.max(-60, Math.min(0, db));
      },
    });
    try {
      await mic.start();
    } catch (e) {
      mic = null;
      out.error(e);
      return;
    }
    recButton.textContent = "Stop recording";
    recButton.classList.add("recording");
    out.info("Recording… speak for 10 seconds or more, then stop.");
  });
  async function stopRecording() {
    const m = mic;
    mic = null;
    await m.stop();
    recButton.textContent = "Start recording";
    recButton.classList.remove("recording");
    level.value = -60;
    const samples = concat(blocks);
    blocks = [];
    if (samples.length === 0) {
      out.error("nothing was recorded");
      return;
    }
    recorded += 1;
    const blob = wav(samples);
    clips.push({ name: `recording-${recorded}.wav`, blob, seconds: samples.length / 16000, url: URL.createObjectURL(blob) });
    out.info(`Recorded ${seconds(samples.length / 16000)}.`);
    showClips();
  }

  const submit = h("button", { type: "submit" }, "Enroll");
  const form = h(
    "form",
    { class: "card" },
    field("Speaker name", name),
    h(
      "fieldset",
      {},
      h("legend", {}, "Recordings"),
      drop.el,
      h(
        "div",
        { class: "recorder" },
        recButton,
        h("label", { for: "enroll-level" }, "Input level"),
        level,
        h("span", {}, "Length ", length),
      ),
      list,
    ),
    field("Metadata (optional)", meta, "KEY=VALUE, one per line, as `enroll --meta`."),
    field("Consent", consent, "Who consented, how and when, or the signed form's reference (`enroll --consent`); required where the policy says so."),
    h("div", { class: "check" }, isNew, h("label", { for: (isNew.id = "enroll-new") }, "New speaker (--new): refuse if the name exists, and do not warn when the voice matches another's")),
    h("div", { class: "check" }, strict, h("label", { for: (strict.id = "enroll-strict") }, "Strict: refuse doubtful clips instead of warning")),
    submit,
    out.el,
  );
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    if (submit.getAttribute("aria-disabled") === "true") return; // an enrollment is under way
    if (mic) await stopRecording();
    if (!clips.length) {
      out.error("add at least one recording: choose a file or record from the microphone", drop.input);
      return;
    }
    let metadata;
    try {
      metadata = parseMeta(meta.value);
    } catch (err) {
      out.error(err, meta);
      return;
    }
    await busy(submit, async () => {
      out.info(`Enrolling ${name.value.trim()}…`);
      try {
        const result = await enrollClips(name.value.trim(), clips, {
          metadata,
          isNew: isNew.checked,
          strict: strict.checked,
          consent: consent.value.trim(),
        });
        out.lines(enrollLines(result, Boolean(metadata)));
        out.el.append(h("p", {}, h("a", { href: `#/speakers/${seg(result.speaker)}` }, `Show ${result.speaker}`)));
        for (const c of clips) if (c.url) URL.revokeObjectURL(c.url);
        clips.length = 0;
        showClips();
      } catch (err) {
        out.error(err);
      }
    });
  });
  showClips();
  main.append(h("h1", {}, "Enroll"), form);
  void go;
  return async () => {
    if (mic) await mic.stop();
    for (const c of clips) if (c.url) URL.revokeObjectURL(c.url);
  };
}
