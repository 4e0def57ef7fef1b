// @ts-check
/**
 * A small client for a running `plugd serve`: the low-level {@link PlugdClient} and the
 * {@link ScriptManager} over its script API (`/api/v1/scripts`, `/runs`, `/templates`).
 * No dependencies: node 20's global `fetch` and web streams.
 * @module @plugd/client
 */

/** The states a run ends in. */
const ENDED = new Set(['succeeded', 'failed', 'cancelled', 'killed']);

/** An error answer of the server (`{"error": {"code", "message", ...}}`), or a broken stream. */
export class PlugdError extends Error {
  /**
   * @param {{status: number, code: string, message: string, problems?: object[],
   *   details?: string[], violations?: object[]}} fields
   */
  constructor({ status, code, message, problems = [], details = [], violations = [] }) {
    super(message);
    this.name = 'PlugdError';
    /** HTTP status (0 when the error did not come from an HTTP answer). */
    this.status = status;
    /** The server's stable code: `not_found`, `bad_request`, `invalid_script`, ... */
    this.code = code;
    /** A script's static-check findings (`invalid_script`). */
    this.problems = problems;
    /** Further items, one sentence each (a template's missing variables, ...). */
    this.details = details;
    /** Refused params (`bad_params`), each `{pointer, message}`. */
    this.violations = violations;
  }
}

/** The HTTP client: JSON in and out, a bearer token, errors as {@link PlugdError}. */
export class PlugdClient {
  /**
   * @param {{baseUrl: string, token?: string, fetch?: typeof fetch}} options `baseUrl` like
   *   `http://127.0.0.1:8080`; `token` is sent as `Authorization: Bearer`.
   */
  constructor({ baseUrl, token, fetch = globalThis.fetch }) {
    if (!baseUrl) throw new TypeError('PlugdClient needs a baseUrl');
    this.baseUrl = String(baseUrl).replace(/\/+$/, '');
    this.token = token;
    this.#fetch = fetch;
  }

  /** @type {typeof fetch} */
  #fetch;

  /**
   * Sends a request and answers its parsed JSON (`undefined` for 204).
   * @param {string} method `GET`, `POST`, ...
   * @param {string} path From the server root, e.g. `/api/v1/scripts`.
   * @param {unknown} [body] Sent as JSON when not `undefined`.
   * @returns {Promise<any>}
   * @throws {PlugdError} On a non-2xx answer.
   */
  async request(method, path, body) {
    const response = await this.send(method, path, body);
    if (response.status === 204) return undefined;
    const text = await response.text();
    const type = response.headers.get('content-type') ?? '';
    return type.includes('json') && text ? JSON.parse(text) : text;
  }

  /**
   * Like {@link request}, but answers the `Response` (when 2xx), for bodies read as a stream.
   * @param {string} method @param {string} path @param {unknown} [body]
   * @param {{accept?: string, signal?: AbortSignal}} [options]
   * @returns {Promise<Response>}
   */
  async send(method, path, body, { accept = 'application/json', signal } = {}) {
    /** @type {Record<string, string>} */
    const headers = { accept };
    if (this.token) headers.authorization = `Bearer ${this.token}`;
    if (body !== undefined) headers['content-type'] = 'application/json';
    const json = body === undefined ? undefined : JSON.stringify(body);
    const response = await this.#fetch(this.baseUrl + path, { method, headers, body: json, signal });
    if (!response.ok) throw await errorOf(response);
    return response;
  }

  /**
   * Follows a Server-Sent Events route: yields its events until the server ends the stream
   * (or the caller stops iterating, which closes it).
   * @param {string} path
   * @param {{signal?: AbortSignal}} [options]
   * @returns {AsyncGenerator<{event: string, data: string, id?: string}>}
   */
  async *events(path, { signal } = {}) {
    const response = await this.send('GET', path, undefined, { accept: 'text/event-stream', signal });
    if (!response.body) return;
    yield* parseEventStream(response.body);
  }
}

/**
 * The {@link PlugdError} of a non-2xx answer.
 * @param {Response} response
 */
async function errorOf(response) {
  const text = await response.text().catch(() => '');
  let error;
  try { error = JSON.parse(text).error; } catch { /* not JSON: a proxy's page, ... */ }
  if (!error || typeof error !== 'object') {
    error = { code: 'http_error', message: text.trim() || `HTTP ${response.status} ${response.statusText}` };
  }
  return new PlugdError({ status: response.status, ...error });
}

/**
 * Parses a `text/event-stream` body (the WHATWG framing: `event:`, `data:`, `id:` fields,
 * `:` comments, a blank line ends an event; CRLF, LF or CR line ends).
 * @param {ReadableStream<Uint8Array>} body
 * @returns {AsyncGenerator<{event: string, data: string, id?: string}>}
 */
export async function* parseEventStream(body) {
  let buffer = '';
  let event = '';
  /** @type {string | undefined} */
  let id;
  /** @type {string[]} */
  let data = [];
  /** @param {string} line @returns {{event: string, data: string, id?: string} | undefined} */
  const take = (line) => {
    if (line === '') {
      const ready = data.length
        ? { event: event || 'message', data: data.join('\n'), ...(id === undefined ? {} : { id }) }
        : undefined;
      event = '';
      data = [];
      return ready;
    }
    if (line.startsWith(':')) return undefined;
    const colon = line.indexOf(':');
    const field = colon < 0 ? line : line.slice(0, colon);
    const value = colon < 0 ? '' : line.slice(colon + 1).replace(/^ /, '');
    if (field === 'event') event = value;
    else if (field === 'data') data.push(value);
    else if (field === 'id') id = value;
    return undefined;
  };
  const decoder = new TextDecoder();
  const reader = body.getReader();
  try {
    for (;;) {
      const { done, value } = await reader.read();
      if (done) break;
      buffer += decoder.decode(value, { stream: true });
      // A trailing CR waits: the LF of a CRLF may come in the next chunk.
      const held = buffer.endsWith('\r') ? '\r' : '';
      const lines = (held ? buffer.slice(0, -1) : buffer).split(/\r\n|\r|\n/);
      buffer = (lines.pop() ?? '') + held;
      for (const line of lines) {
        const ready = take(line);
        if (ready) yield ready;
      }
    }
  } finally {
    // Also when the caller stops early: closes the connection.
    await reader.cancel().catch(() => {});
  }
  // A last line ended by a lone CR (a last event not ended by a blank line is dropped).
  const last = buffer.endsWith('\r') ? take(buffer.slice(0, -1)) : undefined;
  if (last) yield last;
}

/** @param {string | number} id An id as a path segment. */
const enc = (id) => encodeURIComponent(String(id));

/**
 * `?k=v&...` of the defined values, or `''`.
 * @param {Record<string, unknown>} params
 */
function query(params) {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) if (v !== undefined && v !== null) q.set(k, String(v));
  const s = q.toString();
  return s ? `?${s}` : '';
}

/**
 * A copy without the `undefined` values.
 * @template {Record<string, unknown>} T
 * @param {T} obj
 * @returns {Partial<T>}
 */
function compact(obj) {
  return /** @type {Partial<T>} */ (Object.fromEntries(Object.entries(obj).filter(([, v]) => v !== undefined)));
}

/** @param {string | number | undefined} v A size limit; a number is bytes. */
const size = (v) => (typeof v === 'number' ? String(v) : v);
/** @param {string | number | undefined} v A duration limit; a number is milliseconds. */
const duration = (v) => (typeof v === 'number' ? `${v}ms` : v);

/**
 * The server's `overrides` object of the client's camelCase metadata.
 * @param {import('./index.js').ScriptMeta} [meta]
 */
export function toOverrides(meta = {}) {
  const { allowedPaths = {}, limits } = meta;
  return compact({
    name: meta.name,
    description: meta.description,
    author: meta.author,
    category: meta.category,
    tags: meta.tags,
    allowed_imports: meta.allowedImports,
    read: allowedPaths.read,
    write: allowedPaths.write,
    network: meta.network,
    filesystem: meta.filesystem,
    limits: limits && compact({
      memory: size(limits.memory),
      cpu: duration(limits.cpu),
      wall: duration(limits.wall),
      output: size(limits.output),
      processes: limits.processes,
    }),
  });
}

/**
 * The script manager: register, check, version, run and follow scripts and templates.
 */
export class ScriptManager {
  /** @param {PlugdClient} client */
  constructor(client) {
    this.client = client;
    /** @type {Set<(info: import('./index.js').ProgressInfo) => void>} */
    this.listeners = new Set();
  }

  /**
   * Registers a script; its metadata comes from its PEP 723 block, then from `meta`.
   * @param {import('./index.js').ScriptMeta & {id?: string, source: string}} spec
   */
  registerScript({ id, source, ...meta }) {
    return this.client.request('POST', '/api/v1/scripts', compact({ id, source, overrides: toOverrides(meta) }));
  }

  /** @param {string} id A script with its current version's source and lock. */
  getScript(id) {
    return this.client.request('GET', `/api/v1/scripts/${enc(id)}`);
  }

  /**
   * Registered scripts, filtered.
   * @param {{tag?: string, category?: string, search?: string}} [filter]
   */
  async listScripts({ tag, category, search } = {}) {
    return (await this.client.request('GET', `/api/v1/scripts${query({ tag, category, search })}`)).scripts;
  }

  /**
   * Adds a version with a new source (and metadata overrides).
   * @param {string} id
   * @param {string} source
   * @param {import('./index.js').ScriptMeta} [meta]
   */
  updateScript(id, source, meta) {
    return this.client.request('PUT', `/api/v1/scripts/${enc(id)}`, { source, overrides: toOverrides(meta) });
  }

  /** @param {string} id Removes a script and its versions (its runs stay). */
  async deleteScript(id) {
    await this.client.request('DELETE', `/api/v1/scripts/${enc(id)}`);
  }

  /** @param {string} id Every version, oldest first. */
  async versions(id) {
    return (await this.client.request('GET', `/api/v1/scripts/${enc(id)}/versions`)).versions;
  }

  /**
   * Makes `version` the one runs use.
   * @param {string} id
   * @param {number} version
   */
  rollback(id, version) {
    return this.client.request('POST', `/api/v1/scripts/${enc(id)}/rollback`, { version });
  }

  /**
   * Adds a version with changed permissions or limits.
   * @param {string} id
   * @param {import('./index.js').Permissions} permissions
   */
  setScriptPermissions(id, permissions) {
    return this.client.request('PUT', `/api/v1/scripts/${enc(id)}/permissions`, toOverrides(permissions));
  }

  /**
   * Checks a source statically (syntax, imports, literal paths); stores and runs nothing.
   * @param {string} source
   * @param {import('./index.js').ScriptMeta} [meta]
   */
  validateScript(source, meta) {
    return this.client.request('POST', '/api/v1/scripts/check', { source, overrides: toOverrides(meta) });
  }

  /**
   * Runs a registered script and follows it to its end.
   * @param {string} id
   * @param {import('./index.js').ExecuteOptions} [options]
   */
  async executeScript(id, { args = {}, version, onQueued, ...follow } = {}) {
    const run = await this.client.request('POST', `/api/v1/scripts/${enc(id)}/runs`, compact({ args, version }));
    onQueued?.(run);
    return this.follow(run.id, follow);
  }

  /**
   * Runs a source without registering it (still checked, confined and recorded).
   * @param {string} source
   * @param {import('./index.js').ExecuteFileOptions} [options]
   */
  async executeFile(source, { name, args = {}, onQueued, onProgress, onOutput, onEvent, signal, ...meta } = {}) {
    const body = compact({ name, source, overrides: toOverrides(meta), args });
    const run = await this.client.request('POST', '/api/v1/runs', body);
    onQueued?.(run);
    return this.follow(run.id, { onProgress, onOutput, onEvent, signal });
  }

  /**
   * Follows a run's event stream until it ends and answers its final record. Progress and
   * samples (the snapshot's too) go to `onProgress` and every {@link onExecutionProgress}
   * listener, output to `onOutput`, every event to `onEvent` (`lagged`: some were missed).
   * A callback that throws stops following; the run goes on.
   * @param {number} runId
   * @param {import('./index.js').FollowOptions} [options]
   */
  async follow(runId, { onProgress, onOutput, onEvent, signal } = {}) {
    /** @type {import('./index.js').ProgressInfo} */
    const info = {
      runId, kind: 'progress', progress: null, message: null,
      memory: null, peakMemory: null, cpuPercent: null, cpuMs: null, elapsedMs: null,
    };
    /** @param {any} p `{fraction, message}`, or `[fraction, message]` as a snapshot has it */
    const setProgress = (p) => {
      const [fraction, message] = Array.isArray(p) ? p : [p.fraction, p.message];
      Object.assign(info, { kind: 'progress', progress: fraction ?? null, message: message ?? null });
    };
    /** @param {any} s */
    const setSample = (s) => Object.assign(info, {
      kind: 'sample', memory: s.memory, peakMemory: s.peak_memory,
      cpuPercent: s.cpu_percent, cpuMs: s.cpu_ms, elapsedMs: s.elapsed_ms,
    });
    const report = () => {
      const copy = { ...info };
      onProgress?.(copy);
      for (const listener of this.listeners) listener(copy);
    };

    for await (const { event, data: raw } of this.client.events(`/api/v1/runs/${enc(runId)}/stream`, { signal })) {
      const data = parseData(raw);
      onEvent?.(event, data);
      if (event === 'snapshot') {
        if (data.progress) { setProgress(data.progress); report(); }
        if (data.sample) { setSample(data.sample); report(); }
      } else if (event === 'progress') {
        setProgress(data); report();
      } else if (event === 'sample') {
        setSample(data); report();
      } else if (event === 'output') {
        onOutput?.({ runId, stream: data.stream, text: data.text });
      } else if (event === 'ended') {
        return data ?? this.getRun(runId);
      } else if (event === 'error') {
        const error = data?.error ?? { code: 'stream_error', message: String(data) };
        throw new PlugdError({ status: 0, ...error });
      }
    }
    // The stream closed without `ended` (the server is shutting down): ask for the record.
    const record = await this.getRun(runId);
    if (ENDED.has(record.state)) return record;
    throw new PlugdError({ status: 0, code: 'stream_closed', message: `The stream of run ${runId} closed while it is ${record.state}` });
  }

  /**
   * Calls `listener` on every `progress` and `sample` event of every run this manager follows.
   * @param {(info: import('./index.js').ProgressInfo) => void} listener
   * @returns {() => void} Unsubscribes it.
   */
  onExecutionProgress(listener) {
    this.listeners.add(listener);
    return () => { this.listeners.delete(listener); };
  }

  /** @param {number} runId Cancels a run: a queued one ends at once, a running one is killed. */
  cancel(runId) {
    return this.client.request('POST', `/api/v1/runs/${enc(runId)}/cancel`);
  }

  /** @param {number} runId A run's record (with `live` while it runs). */
  getRun(runId) {
    return this.client.request('GET', `/api/v1/runs/${enc(runId)}`);
  }

  /**
   * Runs, newest first: one script's, or all.
   * @param {{scriptId?: string, limit?: number, before?: number}} [filter]
   */
  async runs({ scriptId, limit, before } = {}) {
    const path = scriptId === undefined ? '/api/v1/runs' : `/api/v1/scripts/${enc(scriptId)}/runs`;
    return (await this.client.request('GET', path + query({ limit, before }))).runs;
  }

  /**
   * Stores a template: text with `{{ variable }}` placeholders and its typed variables.
   * @param {import('./index.js').TemplateSpec} spec
   */
  createTemplate({ name, source, description, variables = [], replace }) {
    const vars = variables.map(({ name, type, choices, required = false, default: value, description }) =>
      compact({ name, type, choices: type === 'enum' ? choices ?? [] : undefined, required, default: value, description }));
    return this.client.request('POST', '/api/v1/templates', compact({ name, description, source, vars, replace }));
  }

  /** Every stored template. */
  async listTemplates() {
    return (await this.client.request('GET', '/api/v1/templates')).templates;
  }

  /**
   * Renders template `name` with `values` and registers the result as script `id`.
   * @param {string} name
   * @param {string} id
   * @param {Record<string, unknown>} [values]
   * @param {import('./index.js').ScriptMeta} [meta]
   */
  instantiateTemplate(name, id, values = {}, meta) {
    return this.client.request('POST', `/api/v1/templates/${enc(name)}/instantiate`, { id, values, overrides: toOverrides(meta) });
  }
}

/**
 * An event's data as JSON, or as the raw text when it is not JSON.
 * @param {string} raw
 */
function parseData(raw) {
  try { return JSON.parse(raw); } catch { return raw; }
}
