// The management HTTP API, the UI's only source: basic auth from
// sessionStorage on every call, as RabbitMQ's UI does.

const KEY = 'leveret.auth';

export class ApiError extends Error {
  constructor(status, error, reason) {
    super(typeof reason === 'string' ? reason : JSON.stringify(reason));
    this.status = status;
    this.error = error;
  }
}

// Base64 of UTF-8 "user:password" (btoa alone takes only Latin-1).
function basic(user, password) {
  const bytes = new TextEncoder().encode(`${user}:${password}`);
  return btoa(Array.from(bytes, (b) => String.fromCharCode(b)).join(''));
}

export function saveLogin(user, password) {
  sessionStorage.setItem(KEY, basic(user, password));
}

export function clearLogin() {
  sessionStorage.removeItem(KEY);
}

export function loggedIn() {
  return sessionStorage.getItem(KEY) !== null;
}

// Called when a request is refused for its credentials (set by app.js).
let onUnauthorised = () => {};
export function whenUnauthorised(f) {
  onUnauthorised = f;
}

// One path segment: vhost and object names may hold anything, "/" included.
export const seg = encodeURIComponent;

// `GET|PUT|POST|DELETE path` with an optional JSON body; the parsed JSON
// answer, null when empty; an ApiError with RabbitMQ's reason otherwise.
// `credentials: 'omit'` keeps the browser from answering a 401 with its
// own login dialog: the page has its own form.
export async function api(path, { method = 'GET', body, auth, extraHeaders = {} } = {}) {
  const headers = { ...extraHeaders, Authorization: `Basic ${auth ?? sessionStorage.getItem(KEY) ?? ''}` };
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  let response;
  try {
    response = await fetch(`/api${path}`, {
      method,
      headers,
      credentials: 'omit',
      cache: 'no-store',
      body: body === undefined ? undefined : JSON.stringify(body),
    });
  } catch (e) {
    throw new ApiError(0, 'network', `The broker cannot be reached (${e.message})`);
  }
  const text = await response.text();
  let json = null;
  if (text) {
    try {
      json = JSON.parse(text);
    } catch {
      json = null;
    }
  }
  if (!response.ok) {
    const reason = json?.reason ?? (response.status === 401 ? 'Login failed' : response.statusText);
    const error = new ApiError(response.status, json?.error ?? String(response.status), reason);
    if (response.status === 401 && auth === undefined && reason === 'Login failed') onUnauthorised();
    throw error;
  }
  return json;
}

// Logs in: whoami with these credentials, kept only if the API lets the
// user in (it refuses users without a management tag itself).
export async function login(user, password) {
  const me = await api('/whoami', { auth: basic(user, password) });
  saveLogin(user, password);
  return me;
}
