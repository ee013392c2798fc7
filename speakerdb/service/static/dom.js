// Small DOM helpers: elements are built with h(), never from HTML strings, so names and
// messages from the service are always text.

/** An element: h("button", {type: "button", onclick: f}, "text", child, ...). */
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (name.startsWith("on") && typeof value === "function") el.addEventListener(name.slice(2), value);
    else if (name === "class") el.className = value;
    else if (name === "dataset") Object.assign(el.dataset, value);
    else if (name === "style" && typeof value === "object") Object.assign(el.style, value);
    else if (value === true) el.setAttribute(name, "");
    else el.setAttribute(name, String(value));
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const child of children.flat(Infinity)) {
    if (child === undefined || child === null || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
}

/**
 * Run ``work()`` with ``button`` marked busy: further presses are ignored until it ends. The
 * button is aria-disabled rather than disabled, since a disabled button drops the keyboard
 * focus to <body> and the user must Tab back from the top of the page.
 */
export async function busy(button, work) {
  if (button.getAttribute("aria-disabled") === "true") return undefined;
  button.setAttribute("aria-disabled", "true");
  try {
    return await work();
  } finally {
    button.removeAttribute("aria-disabled");
  }
}

/** Replace the children of ``el``. */
export function fill(el, ...children) {
  el.replaceChildren();
  append(el, children);
  return el;
}

let ids = 0;
/** A unique id for label/aria pairs. */
export function uid(prefix = "f") {
  ids += 1;
  return `${prefix}-${ids}`;
}

/** A labelled control: a <label> and the control, joined by id. */
export function field(label, control, hint) {
  control.id = control.id || uid();
  const parts = [h("label", { for: control.id }, label), control];
  if (hint) {
    const hintEl = h("small", { id: uid("hint"), class: "hint" }, hint);
    control.setAttribute("aria-describedby", hintEl.id);
    parts.push(hintEl);
  }
  return h("div", { class: "field" }, parts);
}

/**
 * A region that announces what it is given: role=status for news, role=alert for errors.
 * ``error(err, control)`` also ties the error to the control it is about: aria-invalid, the
 * message in its description, and the focus, until the control changes or the next message.
 */
export function messages() {
  const box = h("div", { class: "messages", role: "status", "aria-live": "polite" });
  let marked = null; // [control, the error's id]
  const unmark = () => {
    if (!marked) return;
    const [control, id] = marked;
    marked = null;
    control.removeAttribute("aria-invalid");
    const rest = (control.getAttribute("aria-describedby") || "").split(" ").filter((x) => x && x !== id);
    if (rest.length) control.setAttribute("aria-describedby", rest.join(" "));
    else control.removeAttribute("aria-describedby");
  };
  return {
    el: box,
    clear() {
      unmark();
      box.replaceChildren();
    },
    info(...text) {
      unmark();
      fill(box, h("p", { class: "info" }, ...text));
    },
    error(err, control = null) {
      unmark();
      const text = err instanceof Error ? err.message : String(err);
      const p = h("p", { class: "error", role: "alert", id: uid("err") }, text);
      fill(box, p);
      if (control) {
        marked = [control, p.id];
        control.setAttribute("aria-invalid", "true");
        control.setAttribute("aria-describedby", `${control.getAttribute("aria-describedby") || ""} ${p.id}`.trim());
        for (const ev of ["input", "change"]) control.addEventListener(ev, unmark, { once: true });
        control.focus();
      }
    },
    lines(lines, cls = "notes") {
      unmark();
      fill(box, h("pre", { class: cls }, lines.join("\n")));
    },
  };
}

/** A table with header cells and rows of cells (strings or nodes), wrapped so it scrolls on a phone. */
export function table(caption, headers, rows) {
  return h(
    "div",
    { class: "table-wrap", tabindex: "0", role: "region", "aria-label": caption },
    h(
      "table",
      {},
      h("caption", { class: "sr-only" }, caption),
      h("thead", {}, h("tr", {}, headers.map((t) => h("th", { scope: "col" }, t)))),
      h("tbody", {}, rows.map((cells) => h("tr", {}, cells.map((c) => h("td", {}, c))))),
    ),
  );
}

/**
 * A file picker that also takes files dropped on it. ``onfiles(files)`` is called with an
 * array of File each time files are chosen or dropped.
 */
export function dropzone(label, { multiple = true, onfiles }) {
  const input = h("input", { type: "file", accept: "audio/*,video/*,.wav,.flac,.mp3,.ogg,.m4a,.opus,.webm", multiple });
  const zone = h("div", { class: "dropzone" }, field(label, input, "Choose files or drop them here."));
  input.addEventListener("change", () => {
    if (input.files.length) onfiles(Array.from(input.files));
  });
  zone.addEventListener("dragover", (e) => {
    e.preventDefault();
    zone.classList.add("over");
  });
  zone.addEventListener("dragleave", () => zone.classList.remove("over"));
  zone.addEventListener("drop", (e) => {
    e.preventDefault();
    zone.classList.remove("over");
    const files = Array.from(e.dataTransfer.files || []);
    if (files.length) onfiles(multiple ? files : files.slice(0, 1));
  });
  return { el: zone, input };
}

/**
 * Ask before something that cannot be undone, in a modal <dialog>. Resolves true when
 * confirmed. ``action`` is the confirming button's text (it names what is removed).
 */
export function confirmDialog(title, text, action) {
  return new Promise((resolve) => {
    const titleId = uid("dlg");
    const textId = uid("dlg");
    const cancel = h("button", { type: "button", value: "cancel" }, "Cancel");
    const ok = h("button", { type: "button", class: "danger", value: "ok" }, action);
    // Described by its text: a screen reader says what is lost, not only the title, on opening.
    const dialog = h(
      "dialog",
      { "aria-labelledby": titleId, "aria-describedby": textId, class: "confirm" },
      h("h2", { id: titleId }, title),
      h("p", { id: textId }, text),
      h("div", { class: "actions" }, cancel, ok),
    );
    const done = (answer) => {
      dialog.close();
      dialog.remove();
      resolve(answer);
    };
    cancel.addEventListener("click", () => done(false));
    ok.addEventListener("click", () => done(true));
    dialog.addEventListener("cancel", (e) => {
      e.preventDefault();
      done(false);
    });
    document.body.append(dialog);
    dialog.showModal();
    cancel.focus(); // the safe choice has the focus
  });
}

/** Seconds as "12.3 s" or "1:02.5". */
export function seconds(s) {
  if (s === null || s === undefined || Number.isNaN(s)) return "–";
  if (s < 60) return `${s.toFixed(1)} s`;
  const m = Math.floor(s / 60);
  return `${m}:${(s - 60 * m).toFixed(1).padStart(4, "0")}`;
}

/** A score with three decimals, or "–" for none (the CLI's score_text). */
export function score(x) {
  return x === null || x === undefined ? "–" : Number(x).toFixed(3);
}

/** An ISO time as the reader's local date and time. */
export function when(iso) {
  if (!iso) return "–";
  const d = new Date(iso);
  return Number.isNaN(d.getTime()) ? String(iso) : d.toLocaleString();
}
