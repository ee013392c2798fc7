// The page's shell: sign-in, the views' URLs (#/speakers, #/enroll, ...: the back button
// works) and what the signed-in key's scope offers. Each view lives in views/*.js.

import { hooks, session, signIn } from "./api.js";
import { fill, h } from "./dom.js";
import enroll from "./views/enroll.js";
import identify from "./views/identify.js";
import live from "./views/live.js";
import settings from "./views/settings.js";
import signin from "./views/signin.js";
import { speaker, speakers } from "./views/speakers.js";
import timeline from "./views/timeline.js";
import verify from "./views/verify.js";

/** Route -> [view, the scope it needs, its title]. Parameters follow the route's name. */
const ROUTES = {
  speakers: [speakers, "read", "Speakers"],
  speaker: [speaker, "read", "Speaker"],
  enroll: [enroll, "write", "Enroll"],
  identify: [identify, "read", "Identify"],
  verify: [verify, "read", "Verify"],
  timeline: [timeline, "read", "Timeline"],
  live: [live, "read", "Live"],
  settings: [settings, "admin", "Settings"],
};

const main = document.getElementById("main");
let cleanup = null; // what the view on screen must stop when it is left (microphone, sockets, URLs)
let notice = null; // a message for the next view (e.g. "signed out", "removed alice")
// Which route is the latest: one left while it still loads must not take the focus, the
// cleanup or the page of the view that replaced it.
let turn = 0;

/** Go to a view; ``message`` is shown at its top. */
export function go(hash, message = null) {
  notice = message;
  if (location.hash === hash) route();
  else location.hash = hash;
}

function parse() {
  const parts = location.hash.replace(/^#\/?/, "").split("/").map(decodeURIComponent);
  if (parts[0] === "speakers" && parts.length > 1 && parts[1]) return ["speaker", parts.slice(1).join("/")];
  return [parts[0] || "speakers", null];
}

/** Show ``render(root)``'s view in a container of its own; its cleanup is kept while it is the latest. */
async function show(mine, render) {
  // A view that is left while it loads goes on writing into its own container, now detached.
  const root = h("div", { class: "view" });
  fill(main, root);
  let stop = null;
  try {
    stop = (await render(root)) || null;
  } catch (e) {
    root.append(h("p", { class: "error", role: "alert" }, e.message || String(e)));
  }
  if (mine !== turn) {
    if (stop) await stop();
    return;
  }
  cleanup = stop;
  focusHeading();
}

async function route() {
  if (!location.hash.startsWith("#/") && location.hash !== "") return; // "#main" and the like
  turn += 1;
  const mine = turn;
  if (cleanup) {
    const stop = cleanup;
    cleanup = null;
    await stop();
  }
  if (mine !== turn) return;
  const message = notice;
  notice = null;
  const [name, param] = parse();
  showChrome();
  if (name === "signin" || session.scope === null) {
    document.title = "Sign in · speakerdb";
    await show(mine, (root) => signin(root, { message, next: name === "signin" ? "#/speakers" : location.hash, go }));
    return;
  }
  const entry = ROUTES[name];
  markCurrent(name === "speaker" ? "speakers" : name);
  if (!entry) {
    document.title = "Not found · speakerdb";
    fill(main, h("h1", {}, "Not found"), h("p", {}, "There is no view at this address. ", h("a", { href: "#/speakers" }, "Speakers")));
    focusHeading();
    return;
  }
  const [view, scope, title] = entry;
  document.title = `${param || title} · speakerdb`;
  if (!session.can(scope)) {
    fill(
      main,
      h("h1", {}, title),
      h("p", { class: "error", role: "alert" }, `This view needs a key with scope ${scope}; yours has ${session.scope}.`),
    );
    focusHeading();
    return;
  }
  await show(mine, (root) => {
    if (message) root.append(h("p", { class: "info", role: "status", id: "notice" }, message));
    return view(root, { param, go, session });
  });
}

function focusHeading() {
  const heading = main.querySelector("h1");
  if (heading) {
    // A status inserted with the view is seldom read out: the heading, which takes the focus,
    // is described by it ("Removed alice (2 utterances).").
    if (document.getElementById("notice")) heading.setAttribute("aria-describedby", "notice");
    heading.tabIndex = -1;
    heading.focus({ preventScroll: false });
  }
}

function markCurrent(name) {
  for (const a of document.querySelectorAll("#nav a")) {
    if (a.getAttribute("href") === `#/${name}`) a.setAttribute("aria-current", "page");
    else a.removeAttribute("aria-current");
  }
}

function showChrome() {
  const signedIn = session.scope !== null;
  document.getElementById("nav").hidden = !signedIn;
  document.getElementById("who").hidden = !signedIn;
  document.getElementById("signout").hidden = !session.keysRequired;
  for (const a of document.querySelectorAll("#nav a")) a.parentElement.hidden = !session.can(a.dataset.scope);
  fill(
    document.getElementById("who-text"),
    !signedIn ? "" : session.name ? `Key ${session.name} (${session.scope})` : `No key needed (${session.scope})`,
    signedIn && session.gallery !== "default" ? `, gallery ${session.gallery}` : "",
  );
}

/** Forget the key and show the sign-in page with ``message``. */
export function signOut(message) {
  session.forget();
  go("#/signin", message);
}

async function start() {
  document.getElementById("signout").addEventListener("click", () => signOut("Signed out: the key is forgotten."));
  document.getElementById("skip").addEventListener("click", (e) => {
    e.preventDefault();
    main.focus();
  });
  hooks.unauthorized = (e) => {
    if (session.key) signOut(e.message);
  };
  window.addEventListener("hashchange", route);
  try {
    // With the key this tab kept, or none: a loopback service on a database that never had a
    // key needs none.
    await signIn(session.key);
  } catch (e) {
    if (session.key) {
      session.forget();
      notice = e.message;
    }
  }
  if (!location.hash || location.hash === "#/") history.replaceState(null, "", "#/speakers");
  await route();
}

start();
