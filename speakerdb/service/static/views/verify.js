// Verify: is this recording spoken by that speaker? The score against the threshold.

import { api, seg } from "../api.js";
import { dropzone, field, h, messages, score } from "../dom.js";
import { callThreshold } from "../threshold.js";
import { scoreBar } from "./identify.js";

export default async function verify(main) {
  const out = messages();
  // The verdict is announced when it comes (out, the messages, is cleared then).
  const result = h("div", { class: "results", "aria-live": "polite" });
  const who = h("select", { required: true });
  const threshold = callThreshold();
  let file = null;
  const chosen = h("p", { class: "hint" }, "No recording chosen.");
  const drop = dropzone("Recording to verify", {
    multiple: false,
    onfiles: (files) => {
      file = files[0];
      chosen.textContent = `Chosen: ${file.name}`;
    },
  });
  const submit = h("button", { type: "submit" }, "Verify");
  // novalidate: an out-of-range threshold is said in the messages, as identify and timeline say it,
  // not in the browser's bubble.
  const form = h("form", { class: "card", novalidate: true }, field("Claimed speaker", who), drop.el, chosen, threshold.el, submit);
  main.append(h("h1", {}, "Verify"), h("p", {}, "Is the recording spoken by the claimed speaker (one to one)?"), form, out.el, result);
  try {
    const [speakers] = await Promise.all([api("GET", "/v1/speakers"), threshold.load()]);
    who.replaceChildren(...speakers.map((s) => h("option", { value: s.name }, s.name)));
    if (!speakers.length) out.error("no speakers are enrolled yet");
  } catch (e) {
    out.error(e);
  }
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    const [wrong, control] = !who.value
      ? ["choose the claimed speaker first", who]
      : !file
        ? ["choose a recording first", drop.input]
        : [threshold.problem(), threshold.input];
    if (wrong) {
      result.replaceChildren();
      out.error(wrong, control);
      return;
    }
    const body = new FormData();
    body.append("file", file, file.name);
    if (threshold.input.value.trim()) body.append("threshold", threshold.input.value.trim());
    out.info(`Verifying ${file.name} against ${who.value}…`);
    result.replaceChildren();
    try {
      const v = await api("POST", `/v1/speakers/${seg(who.value)}/verify`, { form: body });
      const cosine = v.raw_score !== null && v.raw_score !== undefined && v.raw_score !== v.score ? `, cosine ${score(v.raw_score)}` : "";
      const voices = v.voices > 1 ? `; ${v.voices} voices: see the timeline` : ""; // a blend: said as identify says it
      out.clear();
      result.replaceChildren(
        h(
          "article",
          { class: `answer ${v.accepted ? "known" : "unknown"}` },
          h("h2", {}, v.file),
          h(
            "p",
            { class: "verdict" },
            v.accepted
              ? `accepted: ${v.speaker} (score ${score(v.score)} ≥ threshold ${score(v.threshold)}${cosine}${voices})`
              : `rejected: not ${v.speaker} (score ${score(v.score)} < threshold ${score(v.threshold)}${cosine}${voices})`,
          ),
          scoreBar(v.score, v.threshold),
        ),
      );
    } catch (err) {
      out.error(err);
    }
  });
}
