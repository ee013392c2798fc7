// Speakers: the list with a search, and one speaker's utterances, metadata, rename and remove.

import { api, seg } from "../api.js";
import { confirmDialog, field, h, messages, seconds, table, when } from "../dom.js";

export async function speakers(main, { session }) {
  const out = messages();
  const search = h("input", { type: "search", autocomplete: "off" });
  const count = h("p", { class: "hint", role: "status", "aria-live": "polite" });
  const list = h("div");
  main.append(h("h1", {}, "Speakers"), field("Search speakers", search), count, list, out.el);
  let all = [];
  try {
    all = await api("GET", "/v1/speakers");
  } catch (e) {
    out.error(e);
    return;
  }
  const show = () => {
    const q = search.value.trim().toLowerCase();
    const shown = all.filter((s) => s.name.toLowerCase().includes(q) || JSON.stringify(s.metadata || {}).toLowerCase().includes(q));
    count.textContent = `${shown.length} of ${all.length} speaker${all.length === 1 ? "" : "s"}`;
    if (!all.length) {
      list.replaceChildren(
        h("p", {}, "No speakers enrolled yet.", session.can("write") ? [" ", h("a", { href: "#/enroll" }, "Enroll one")] : []),
      );
      return;
    }
    list.replaceChildren(
      table(
        "Enrolled speakers",
        ["Name", "Utterances", "Speech", "Metadata", "Updated"],
        shown.map((s) => [
          h("a", { href: `#/speakers/${seg(s.name)}` }, s.name),
          String(s.n_utterances),
          seconds(s.total_duration_s),
          metadataText(s.metadata),
          when(s.updated_at),
        ]),
      ),
    );
  };
  search.addEventListener("input", show);
  show();
}

function metadataText(meta) {
  const entries = Object.entries(meta || {});
  return entries.length ? entries.map(([k, v]) => `${k}=${typeof v === "string" ? v : JSON.stringify(v)}`).join(", ") : "–";
}

export async function speaker(main, { param: name, go, session }) {
  const out = messages();
  main.append(h("p", {}, h("a", { href: "#/speakers" }, h("span", { "aria-hidden": "true" }, "← "), "All speakers")), h("h1", {}, name), out.el);
  let info;
  try {
    info = await api("GET", `/v1/speakers/${seg(name)}`);
  } catch (e) {
    out.error(e);
    return;
  }
  main.append(
    h(
      "dl",
      { class: "facts" },
      h("dt", {}, "Utterances"),
      h("dd", {}, String(info.n_utterances)),
      h("dt", {}, "Speech"),
      h("dd", {}, seconds(info.total_duration_s)),
      h("dt", {}, "Enrolled"),
      h("dd", {}, when(info.created_at)),
      h("dt", {}, "Updated"),
      h("dd", {}, when(info.updated_at)),
      h("dt", {}, "Metadata"),
      h("dd", {}, Object.keys(info.metadata || {}).length ? h("pre", {}, JSON.stringify(info.metadata, null, 2)) : "none"),
    ),
    h("h2", {}, "Utterances"),
    table(
      `Utterances of ${name}`,
      ["Source", "Length", "Added", "Audio SHA-256"],
      info.utterances.map((u) => [u.source || "–", seconds(u.duration_s), when(u.created_at), h("code", {}, (u.audio_sha256 || "").slice(0, 12))]),
    ),
  );
  if (!session.can("write")) return;

  const newName = h("input", { type: "text", value: name, required: true, autocomplete: "off" });
  const rename = h("form", { class: "inline" }, field("New name", newName), h("button", { type: "submit" }, "Rename"));
  rename.addEventListener("submit", async (e) => {
    e.preventDefault();
    const to = newName.value.trim();
    if (!to || to === name) return;
    try {
      await api("PATCH", `/v1/speakers/${seg(name)}`, { json: { name: to } });
      go(`#/speakers/${seg(to)}`, `Renamed ${name} to ${to}.`);
    } catch (err) {
      out.error(err, newName);
    }
  });
  const remove = h("button", { type: "button", class: "danger" }, `Remove ${name}…`);
  remove.addEventListener("click", async () => {
    const n = info.n_utterances;
    const yes = await confirmDialog(
      `Remove ${name}?`,
      `The speaker ${name}, ${n} utterance${n === 1 ? "" : "s"} and the voiceprint are deleted from the database. This cannot be undone.`,
      `Remove ${name}`,
    );
    if (!yes) {
      remove.focus();
      return;
    }
    try {
      const done = await api("DELETE", `/v1/speakers/${seg(name)}`);
      go("#/speakers", `Removed ${name} (${done.utterances} utterance${done.utterances === 1 ? "" : "s"}).`);
    } catch (err) {
      out.error(err);
    }
  });
  main.append(h("h2", {}, "Change"), rename, h("p", {}, remove));
}
