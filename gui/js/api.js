// The JSON API: relative URLs only (the page may live under a proxy's
// sub-path). Failures become ApiError with the server's own message; callers
// show them in the page (never on the console).

export class ApiError extends Error {
  constructor(message, status) {
    super(message);
    this.status = status;
  }
}

function query(params) {
  if (!params) return '';
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) {
    if (v === undefined || v === null || v === '') continue;
    q.set(k, Array.isArray(v) ? v.join(',') : String(v));
  }
  const s = q.toString();
  return s ? `?${s}` : '';
}

/**
 * api('api/tasks', {params: {status: 'failure'}})
 * api('api/tasks/ID/cancel', {method: 'POST'})   // body {} by default
 */
export async function api(path, { method = 'GET', params, body } = {}) {
  const init = { method, credentials: 'same-origin', cache: 'no-store', headers: { Accept: 'application/json' } };
  if (method !== 'GET' && method !== 'HEAD') {
    init.headers['Content-Type'] = 'application/json';
    init.body = JSON.stringify(body ?? {});
  }
  let res;
  try {
    res = await fetch(path + query(params), init);
  } catch {
    throw new ApiError('cannot reach the control plane', 0);
  }
  if (res.status === 401) {
    // A token is set and the cookie is missing or stale: to the login page.
    location.assign('login');
    throw new ApiError('signed out: a token is needed', 401);
  }
  let data = null;
  const text = await res.text().catch(() => '');
  if (text) {
    try { data = JSON.parse(text); } catch { data = null; }
  }
  if (!res.ok) {
    const msg = data && typeof data.error === 'string' ? data.error : `${res.status} ${res.statusText || 'error'}`;
    throw new ApiError(msg, res.status);
  }
  if (data === null) throw new ApiError('the control plane sent an answer that is not JSON', res.status);
  return data;
}

export const get = (path, params) => api(path, { params });
export const post = (path, body) => api(path, { method: 'POST', body });
export const del = (path) => api(path, { method: 'DELETE' });

/** `api/tasks/export?format=…&filters` as a link (a download, not a fetch). */
export function exportUrl(format, filters) {
  return `api/tasks/export${query({ format, ...filters })}`;
}

export const taskPath = (id) => `api/tasks/${encodeURIComponent(id)}`;
