// Sign in with an API key: checked against GET /v1/whoami, then kept in sessionStorage.

import { signIn } from "../api.js";
import { field, h, messages } from "../dom.js";

export default async function signin(main, { message, next, go }) {
  const key = h("input", { type: "password", name: "key", autocomplete: "off", spellcheck: "false", required: true });
  const gallery = h("input", { type: "text", name: "gallery", autocomplete: "off", spellcheck: "false", placeholder: "default" });
  const out = messages();
  const form = h(
    "form",
    { class: "card narrow" },
    field("API key", key, "From `speakerdb keys create NAME --scope read|write|admin`. Kept in this tab only."),
    field("Gallery (optional)", gallery, "The gallery (tenant) the key belongs to; empty for the default one."),
    h("button", { type: "submit" }, "Sign in"),
    out.el,
  );
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    out.info("Checking the key…");
    try {
      await signIn(key.value.trim(), gallery.value);
      go(next && next !== "#/signin" ? next : "#/speakers");
    } catch (err) {
      out.error(err, key);
      key.select();
    }
  });
  main.replaceChildren(h("h1", {}, "Sign in"), form);
  if (message) {
    out.el.id = "notice"; // the heading is described by it (app.js): "Signed out: ..."
    out.info(message);
  }
}
