// Settings (admin): the threshold, normalisation (on with an uploaded cohort, or off), API keys (created: shown once;
// revoked) and the audit log.

import { api, seg } from "../api.js";
import { confirmDialog, field, h, messages, table, when } from "../dom.js";
import { limit, problem } from "../threshold.js";

export default async function settings(main, { session }) {
  main.append(h("h1", {}, "Settings"));
  await Promise.all([thresholdSection(main), keysSection(main, session), auditSection(main)]);
}

async function thresholdSection(main) {
  const out = messages();
  const value = h("input", { type: "number", step: "any", required: true, inputmode: "decimal" });
  limit(value, "cosine"); // until /v1/info says the scale
  // novalidate: an out-of-range threshold is said in the messages (its limits), not in the browser's bubble.
  const form = h("form", { class: "inline", novalidate: true }, field("Decision threshold", value), h("button", { type: "submit" }, "Save threshold"));
  const norm = h("p", { id: "norm-state", tabindex: "-1" });
  // AS-norm on: recordings of people who are not enrolled (a cohort), embedded by the service.
  const cohort = h("input", { type: "file", multiple: true, accept: "audio/*,video/*,.wav,.flac,.mp3,.ogg,.m4a,.opus,.webm" });
  const topN = h("input", { type: "number", min: "1", step: "1", inputmode: "numeric", placeholder: "100" });
  const on = h(
    "form",
    { class: "inline" },
    field("Cohort recordings", cohort, "At least 10 recordings of people who are not enrolled; only their embeddings are kept."),
    field("Top N", topN),
    h("button", { type: "submit" }, "Turn normalisation on"),
  );
  const off = h("button", { type: "button", class: "danger" }, "Turn normalisation off");
  const section = h(
    "section",
    { class: "card", "aria-labelledby": "set-threshold" },
    h("h2", { id: "set-threshold" }, "Threshold and normalisation"),
    form,
    norm,
    on,
    off,
    out.el,
  );
  main.append(section);
  const load = async () => {
    const info = await api("GET", "/v1/info");
    value.value = info.threshold;
    limit(value, info.threshold_scale); // the service's range for the scale: cosine 0..1, AS-norm -20..100
    norm.replaceChildren(
      info.norm
        ? `Scores are normalised: ${info.norm.method} against a cohort of ${info.norm.count} voices, top ${info.norm.top_n}; the threshold is on the ${info.threshold_scale} scale.`
        : "Scores are raw cosine scores (no normalisation).",
    );
    off.hidden = !info.norm;
  };
  const changed = async (doc, what) => {
    const lines = [what];
    for (const a of doc.set_aside) lines.push(`set aside: ${a.source} scores ${a.score.toFixed(2)} against enrolled speaker ${a.speaker}`);
    if (doc.recalibrate) lines.push(`The threshold was reset to ${doc.threshold} on the ${doc.threshold_scale} scale: calibrate it again (speakerdb calibrate DATA_DIR --apply).`);
    out.lines(lines);
    await load();
    main.dispatchEvent(new Event("audited"));
  };
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    const wrong = value.value.trim() || value.validity.badInput ? problem(value) : "give a threshold";
    if (wrong) {
      out.error(wrong, value);
      return;
    }
    try {
      const doc = await api("PUT", "/v1/threshold", { json: { threshold: Number(value.value) } });
      out.info(`Threshold is now ${doc.threshold}.`);
      await load();
      main.dispatchEvent(new Event("audited"));
    } catch (err) {
      out.error(err, value);
    }
  });
  on.addEventListener("submit", async (e) => {
    e.preventDefault();
    const body = new FormData();
    for (const f of cohort.files) body.append("files", f, f.name);
    if (topN.value) body.append("top_n", topN.value);
    out.info(`Embedding ${cohort.files.length} cohort recordings...`);
    try {
      const doc = await api("POST", "/v1/norm", { form: body });
      cohort.value = "";
      await changed(doc, `Normalisation is on: AS-norm, top ${doc.norm.top_n} of ${doc.norm.count} cohort recordings.`);
    } catch (err) {
      out.error(err, cohort);
    }
  });
  off.addEventListener("click", async () => {
    const yes = await confirmDialog(
      "Turn normalisation off?",
      "Scores return to raw cosine scores and the cohort's embeddings are deleted; the threshold is reset if its scale changes.",
      "Turn normalisation off",
    );
    if (!yes) return;
    try {
      await changed(await api("DELETE", "/v1/norm"), "Normalisation is off: raw cosine scores.");
      norm.focus(); // the button is hidden now: the focus goes to the state it changed
    } catch (err) {
      out.error(err);
    }
  });
  try {
    await load();
  } catch (e) {
    out.error(e);
  }
}

async function keysSection(main, session) {
  const out = messages();
  const list = h("div");
  const name = h("input", { type: "text", required: true, autocomplete: "off", spellcheck: "false" });
  const scope = h("select", {}, ["read", "write", "admin"].map((s) => h("option", { value: s }, s)));
  const created = h("div");
  const createButton = h("button", { type: "submit" }, "Create key");
  const form = h("form", { class: "inline" }, field("Key name", name), field("Scope", scope), createButton);
  // The secret and its buttons go: the focus returns to the button that made it, not to <body>.
  const hide = () => {
    created.replaceChildren();
    createButton.focus();
  };
  main.append(h("section", { class: "card", "aria-labelledby": "set-keys" }, h("h2", { id: "set-keys" }, "API keys"), list, h("h3", {}, "New key"), form, created, out.el));
  const load = async () => {
    const keys = await api("GET", "/v1/keys");
    list.replaceChildren(
      table(
        "Keys",
        ["Name", "Scope", "Created", "State", h("span", { class: "sr-only" }, "Action")],
        keys.map((k) => [
          k.name,
          k.scope,
          when(k.created_at),
          k.active ? "active" : `revoked ${when(k.revoked_at)}`,
          k.active
            ? h("button", { type: "button", class: "danger", "aria-label": `Revoke key ${k.name}`, onclick: () => revoke(k) }, "Revoke")
            : "",
        ]),
      ),
    );
  };
  const revoke = async (k) => {
    const own = k.name === session.name;
    const yes = await confirmDialog(
      `Revoke key ${k.name}?`,
      `Every request with the key ${k.name} (${k.scope}) is refused from the next one on.${own ? " This is the key you are signed in with." : ""}`,
      `Revoke ${k.name}`,
    );
    if (!yes) return;
    try {
      await api("DELETE", `/v1/keys/${seg(k.name)}`);
      out.info(`Revoked ${k.name}.`);
      await load();
      // Its Revoke button is gone with the old table: the focus goes to the new one, not to <body>.
      list.querySelector(".table-wrap")?.focus();
      main.dispatchEvent(new Event("audited"));
    } catch (err) {
      out.error(err);
    }
  };
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    try {
      const doc = await api("POST", "/v1/keys", { json: { name: name.value.trim(), scope: scope.value } });
      const secret = h("input", { type: "text", readonly: true, value: doc.key, class: "secret", spellcheck: "false" });
      const copy = h("button", { type: "button" }, "Copy");
      copy.addEventListener("click", async () => {
        secret.select();
        try {
          await navigator.clipboard.writeText(doc.key);
          copy.textContent = "Copied";
        } catch {
          copy.textContent = "Select and copy it";
        }
      });
      created.replaceChildren(
        h(
          "div",
          { class: "shown-once", role: "status" },
          h("p", {}, `Key ${doc.name} (${doc.scope}) created. It is shown this once: copy it now.`),
          field(`Secret of ${doc.name}`, secret),
          copy,
          h("button", { type: "button", onclick: hide }, "Done, hide it"),
        ),
      );
      name.value = "";
      out.clear();
      await load();
      main.dispatchEvent(new Event("audited"));
    } catch (err) {
      out.error(err, name);
    }
  });
  try {
    await load();
  } catch (e) {
    out.error(e);
  }
}

async function auditSection(main) {
  const out = messages();
  const list = h("div");
  const speaker = h("input", { type: "search", autocomplete: "off" });
  const limit = h("input", { type: "number", min: "1", max: "100000", value: "100" });
  const form = h("form", { class: "inline" }, field("Speaker (optional)", speaker), field("Newest entries", limit), h("button", { type: "submit" }, "Show"));
  main.append(h("section", { class: "card", "aria-labelledby": "set-audit" }, h("h2", { id: "set-audit" }, "Audit log"), form, list, out.el));
  const load = async () => {
    const q = new URLSearchParams({ limit: limit.value || "100" });
    if (speaker.value.trim()) q.set("speaker", speaker.value.trim());
    const entries = await api("GET", `/v1/audit?${q}`);
    list.replaceChildren(
      entries.length
        ? table(
            "Audit entries",
            ["Time", "Key", "Operation", "Speaker", "Detail"],
            entries.map((e) => [when(e.time), e.key_name || "–", e.operation, e.speaker || "–", e.detail ? JSON.stringify(e.detail) : "–"]),
          )
        : h("p", {}, "No entries."),
    );
  };
  const reload = async () => {
    try {
      await load();
    } catch (err) {
      out.error(err);
    }
  };
  form.addEventListener("submit", (e) => {
    e.preventDefault();
    reload();
  });
  main.addEventListener("audited", reload); // a change made above is in the log now
  try {
    await load();
  } catch (e) {
    out.error(e);
  }
}
