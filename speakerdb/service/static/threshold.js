// Threshold inputs (one call's in identify, verify and timeline; the stored one in settings)
// state the limits the service holds a threshold to on the database's scale, and a value
// outside them is refused here, with the limits, before anything is uploaded. The service
// checks again: what it refuses (a page loaded before the scale changed) is shown as its message.

import { api } from "./api.js";
import { field, h } from "./dom.js";

/**
 * What the service takes, by scale: speakerdb/scoring/thresholds.py's check_threshold (a raw
 * cosine in [0, 1]: a negative one would accept nearly every voice) and norm.AS_NORM_RANGE.
 */
export const LIMITS = {
  cosine: { min: 0, max: 1, words: "a cosine score" },
  "as-norm": { min: -20, max: 100, words: "an AS-norm score" },
};

/** Give ``input`` the limits of ``scale``; returns them in words ("a cosine score from 0 to 1"). */
export function limit(input, scale) {
  const l = LIMITS[scale] || LIMITS.cosine;
  input.min = String(l.min);
  input.max = String(l.max);
  input.dataset.words = l.words;
  return `${l.words} from ${l.min} to ${l.max}`;
}

/** Why ``input``'s value is not a threshold within the limits it states, or null (empty included). */
export function problem(input) {
  const text = input.value.trim();
  if (input.validity.badInput) return "the threshold must be a number";
  if (!text) return null;
  if (input.validity.rangeUnderflow || input.validity.rangeOverflow) {
    return `threshold ${text} is not ${input.dataset.words} from ${input.min} to ${input.max}: the service takes no other`;
  }
  return null;
}

/**
 * An optional threshold for one call: ``el`` (labelled "Threshold (optional)"), its ``input``,
 * ``load()`` (reads the stored threshold and its scale from GET /v1/info, sets the limits and
 * says them in the hint; resolves with the info) and ``problem()`` (see above).
 */
export function callThreshold(more = "") {
  const input = h("input", { type: "number", step: "any", inputmode: "decimal" });
  const el = field("Threshold (optional)", input, `Empty: the stored threshold. ${more}`.trim());
  const hint = el.querySelector(".hint");
  return {
    el,
    input,
    async load() {
      const info = await api("GET", "/v1/info");
      const words = limit(input, info.threshold_scale);
      input.placeholder = `${info.threshold} (stored)`;
      hint.textContent = `${words[0].toUpperCase()}${words.slice(1)}; empty: the stored ${info.threshold}. ${more}`.trim();
      return info;
    },
    problem: () => problem(input),
  };
}
