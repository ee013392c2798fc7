// The service's REST API as the page calls it. The key lives in sessionStorage (gone when the
// tab closes) and travels only in the Authorization header, never in a URL.

const KEY = "speakerdb.key";
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
  name: null,
  scope: null,
  keysRequired: true,
  /** Whether the signed-in key's scope includes ``scope``. */
  can(scope) {
    return this.scope !== null && SCOPES.indexOf(this.scope) >= SCOPES.indexOf(scope);
  },
  remember(key) {
    this.key = key;
    sessionStorage.setItem(KEY, key);
  },
  forget() {
    this.key = null;
    this.name = null;
    this.scope = null;
    sessionStorage.removeItem(KEY);
  },
};

/** Called when the service refuses the key (401): set by the app to show the sign-in page. */
export const hooks = { unauthorized: (_err) => {} };

/**
 * One request. ``json`` is sent as a JSON body, ``form`` as multipart (FormData). Resolves
 * with the parsed answer; rejects with a ServiceError carrying the service's message.
 */
export async function api(method, path, { json, form, key, signal } = {}) {
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
    response = await fetch(path, { method, headers, body, signal, credentials: "omit", cache: "no-store" });
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

/** Ask the service who ``key`` is (GET /v1/whoami); fills ``session`` on success. */
export async function signIn(key) {
  const who = await api("GET", "/v1/whoami", { key: key || null });
  if (key) session.remember(key);
  session.name = who.key;
  session.scope = who.scope;
  session.keysRequired = who.keys_required;
  return who;
}

/** A path segment for a speaker or key name. */
export function seg(name) {
  return encodeURIComponent(name);
}
