// Identify: drop recordings; each gets its speaker (or unknown) with its score against the threshold.

import { api } from "../api.js";
import { dropzone, field, h, messages, score } from "../dom.js";
import { callThreshold } from "../threshold.js";

/** A score against the threshold: a bar with the threshold marked, and the words. */
export function scoreBar(value, threshold) {
  const pct = (x) => `${Math.max(0, Math.min(100, 100 * x))}%`;
  const passed = value !== null && value !== undefined && value >= threshold;
  return h(
    "div",
    { class: `scorebar ${passed ? "pass" : "fail"}`, "aria-hidden": "true" },
    h("div", { class: "fill", style: { width: pct(value || 0) } }),
    h("div", { class: "mark", style: { left: pct(threshold) } }),
  );
}

/** How many answers' verdicts the status reads out; the rest are only listed. */
const ANNOUNCED = 3;

export default async function identify(main) {
  const out = messages();
  const results = h("div", { class: "results" });
  const threshold = callThreshold();
  const topK = h("input", { type: "number", min: "1", max: "50", value: "3" });
  let stored = null;
  try {
    stored = (await threshold.load()).threshold;
  } catch (e) {
    out.error(e);
  }
  const run = async (files) => {
    const wrong = threshold.problem();
    if (wrong) {
      results.replaceChildren();
      out.error(wrong, threshold.input);
      return;
    }
    const form = new FormData();
    for (const f of files) form.append("files", f, f.name);
    form.append("top_k", topK.value || "3");
    const override = threshold.input.value.trim();
    if (override) form.append("threshold", override);
    out.info(`Identifying ${files.length} file${files.length === 1 ? "" : "s"}…`);
    results.replaceChildren();
    try {
      const answers = await api("POST", "/v1/identify", { form });
      const cut = override ? Number(override) : stored;
      // What each answer is, counted, then the first few verdicts themselves: a screen reader
      // hears who was found without walking the results.
      const named = answers.filter((a) => !a.error && a.speaker).length;
      const failed = answers.filter((a) => a.error).length;
      const counts = `${named} named, ${answers.length - named - failed} unknown${failed ? `, ${failed} failed` : ""}`;
      const said = answers.slice(0, ANNOUNCED).map((a) => `${a.file}: ${verdict(a, cut)}.`);
      if (answers.length > ANNOUNCED) said.push(`${answers.length - ANNOUNCED} more below.`);
      out.info([`${answers.length} answer${answers.length === 1 ? "" : "s"} (${counts}), threshold ${score(cut)}.`, ...said].join(" "));
      results.replaceChildren(...answers.map((a) => answer(a, cut)));
    } catch (e) {
      out.error(e);
    }
  };
  const drop = dropzone("Recordings to identify", { onfiles: (files) => run(files).then(() => (drop.input.value = "")) });
  main.append(
    h("h1", {}, "Identify"),
    h("p", {}, "Who speaks in each recording? The best candidate is named when its score reaches the threshold."),
    h("div", { class: "card" }, h("div", { class: "row" }, threshold.el, field("Candidates", topK)), drop.el),
    out.el,
    results,
  );
}

/** One answer's verdict in words: the speaker or unknown, the score against the threshold. */
function verdict(a, cut) {
  if (a.error) return `failed, ${a.error}`;
  const notes = (a.raw_score !== null && a.raw_score !== undefined && a.raw_score !== a.score ? `, cosine ${score(a.raw_score)}` : "") +
    (a.voices > 1 ? `; ${a.voices} voices: see the timeline` : "");
  return a.speaker
    ? `${a.speaker} (score ${score(a.score)} ≥ threshold ${score(cut)}${notes})`
    : `unknown (best score ${score(a.score)} < threshold ${score(cut)}${notes})`;
}

function answer(a, cut) {
  if (a.error) return h("article", { class: "answer failed" }, h("h2", {}, a.file), h("p", { class: "error" }, a.error));
  return h(
    "article",
    { class: `answer ${a.speaker ? "known" : "unknown"}` },
    h("h2", {}, a.file),
    h("p", { class: "verdict" }, verdict(a, cut)),
    scoreBar(a.score, cut),
    a.candidates.length
      ? h("ol", { class: "candidates", "aria-label": `Candidates for ${a.file}` }, a.candidates.map((c) => h("li", {}, `${c.speaker} ${score(c.score)}`)))
      : null,
  );
}
