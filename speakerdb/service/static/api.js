// The service's REST API as the page calls it. The key lives in sessionStorage (gone when the
// tab closes) and travels only in the Authorization header, never in a URL.

const KEY = "speakerdb.key";
const GALLERY = "speakerdb.gallery";
const DEFAULT_GALLERY = "default";
const SCOPES = ["read", "write", "admin"];

/** An answer other than success: the service's own code and message. */
export class ServiceError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

/** Who is signed in: the key (or null where the service needs none) and its scope. */
export const session = {
  key: sessionStorage.getItem(KEY),
  gallery: sessionStorage.getItem(GALLERY) || DEFAULT_GALLERY,
  name: null,
  scope: null,
  keysRequired: true,
  /** Whether the signed-in key's scope includes ``scope``. */
  can(scope) {
    return this.scope !== null && SCOPES.indexOf(this.scope) >= SCOPES.indexOf(scope);
  },
  remember(key, gallery) {
    this.key = key;
    this.gallery = gallery;
    sessionStorage.setItem(KEY, key);
    sessionStorage.setItem(GALLERY, gallery);
  },
  forget() {
    this.key = null;
    this.name = null;
    this.scope = null;
    this.gallery = DEFAULT_GALLERY;
    sessionStorage.removeItem(KEY);
    sessionStorage.removeItem(GALLERY);
  },
};

/** ``path`` (``/v1/...``) in ``gallery``: the default gallery's routes are the plain ``/v1/...``,
 * another gallery's ``/v1/galleries/NAME/...``. */
export function inGallery(path, gallery = session.gallery) {
  if (!gallery || gallery === DEFAULT_GALLERY || !path.startsWith("/v1/")) return path;
  return `/v1/galleries/${encodeURIComponent(gallery)}${path.slice(3)}`;
}

/** Called when the service refuses the key (401): set by the app to show the sign-in page. */
export const hooks = { unauthorized: (_err) => {} };

/**
 * One request. ``json`` is sent as a JSON body, ``form`` as multipart (FormData). Resolves
 * with the parsed answer; rejects with a ServiceError carrying the service's message.
 */
export async function api(method, path, { json, form, key, gallery, signal } = {}) {
  const headers = { Accept: "application/json" };
  const useKey = key !== undefined ? key : session.key;
  if (useKey) headers.Authorization = `Bearer ${useKey}`;
  let body;
  if (json !== undefined) {
    headers["Content-Type"] = "application/json";
    body = JSON.stringify(json);
  } else if (form !== undefined) {
    body = form;
  }
  let response;
  try {
    response = await fetch(inGallery(path, gallery), { method, headers, body, signal, credentials: "omit", cache: "no-store" });
  } catch (e) {
    if (e.name === "AbortError") throw e;
    throw new ServiceError(0, "network", `the service did not answer (${e.message})`);
  }
  const text = await response.text();
  let doc = null;
  try {
    doc = text ? JSON.parse(text) : null;
  } catch {
    doc = null;
  }
  if (!response.ok) {
    const err = doc && doc.error;
    const e = new ServiceError(
      response.status,
      err ? err.code : "http_error",
      err ? err.message : `the service answered ${response.status} ${response.statusText}`.trim(),
    );
    if (response.status === 401 && key === undefined) hooks.unauthorized(e);
    throw e;
  }
  return doc;
}

/** Ask the service who ``key`` is in ``gallery`` (GET /v1/whoami); fills ``session`` on success. */
export async function signIn(key, gallery = session.gallery) {
  const name = (gallery || "").trim() || DEFAULT_GALLERY;
  const who = await api("GET", "/v1/whoami", { key: key || null, gallery: name });
  if (key) session.remember(key, name);
  session.name = who.key;
  session.scope = who.scope;
  session.keysRequired = who.keys_required;
  return who;
}

/** A path segment for a speaker or key name. */
export function seg(name) {
  return encodeURIComponent(name);
}
