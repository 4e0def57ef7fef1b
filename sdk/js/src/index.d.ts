// Type declarations of @plugd/client (src/index.js).

/** A JSON value. */
export type Json = null | boolean | number | string | Json[] | { [key: string]: Json };

/** One static-check finding, at a 1-based line and column. */
export interface Problem {
  kind: 'syntax' | 'import' | 'dynamic_import' | 'path' | (string & {});
  severity: 'error' | 'warning';
  line: number;
  column: number;
  message: string;
}

/** An error answer of the server (`{"error": {"code", "message", ...}}`), or a broken stream. */
export class PlugdError extends Error {
  constructor(fields: {
    status: number;
    code: string;
    message: string;
    problems?: Problem[];
    details?: string[];
    violations?: { pointer: string; message: string }[];
  });
  /** HTTP status (0 when the error did not come from an HTTP answer). */
  status: number;
  /** The server's stable code: `not_found`, `bad_request`, `invalid_script`, `unauthorized`, ... */
  code: string;
  /** A script's static-check findings (`invalid_script`); empty otherwise. */
  problems: Problem[];
  /** Further items, one sentence each (a template's missing variables, ...); empty otherwise. */
  details: string[];
  /** Refused params (`bad_params`); empty otherwise. */
  violations: { pointer: string; message: string }[];
}

export interface PlugdClientOptions {
  /** The server, e.g. `http://127.0.0.1:8080`. */
  baseUrl: string;
  /** An API token, sent as `Authorization: Bearer TOKEN`. */
  token?: string;
  /** A `fetch` to use instead of the global one. */
  fetch?: typeof fetch;
}

/** One Server-Sent Event; `data` is its text (JSON for plugd's events). */
export interface ServerEvent {
  event: string;
  data: string;
  id?: string;
}

/** The HTTP client: JSON in and out, a bearer token, errors as {@link PlugdError}. */
export class PlugdClient {
  constructor(options: PlugdClientOptions);
  readonly baseUrl: string;
  token?: string;
  /** Sends `body` as JSON; answers the parsed JSON (`undefined` for 204). Throws {@link PlugdError} on non-2xx. */
  request<T = any>(method: string, path: string, body?: unknown): Promise<T>;
  /** Answers the raw `Response` when 2xx. Throws {@link PlugdError} otherwise. */
  send(method: string, path: string, body?: unknown, options?: { accept?: string; signal?: AbortSignal }): Promise<Response>;
  /** Follows a `text/event-stream` route; stopping the iteration closes it. */
  events(path: string, options?: { signal?: AbortSignal }): AsyncGenerator<ServerEvent>;
}

/** Parses a `text/event-stream` body into its events. */
export function parseEventStream(body: ReadableStream<Uint8Array>): AsyncGenerator<ServerEvent>;

/** Limits of a run: sizes like `"256MiB"` (a number: bytes), durations like `"30s"` (a number: ms). */
export interface Limits {
  memory?: string | number;
  /** CPU time. */
  cpu?: string | number;
  /** Wall-clock time. */
  wall?: string | number;
  /** Output kept (stdout and stderr). */
  output?: string | number;
  /** Processes and threads. */
  processes?: number;
}

/** What a script may do (overrides of its `[tool.plugd]` table). */
export interface Permissions {
  /** Top-level modules it may import (`plugd` always). */
  allowedImports?: string[];
  /** Paths it may read or write besides the system's. */
  allowedPaths?: { read?: string[]; write?: string[] };
  /** `false`, or the `host:port` it may reach. */
  network?: false | string[];
  filesystem?: boolean;
  limits?: Limits;
}

/** Metadata overrides: descriptive fields and {@link Permissions}. */
export interface ScriptMeta extends Permissions {
  name?: string;
  description?: string;
  author?: string;
  category?: string;
  tags?: string[];
}

/** The server's `overrides` object (snake_case), as {@link toOverrides} makes it. */
export interface Overrides {
  name?: string;
  description?: string;
  author?: string;
  category?: string;
  tags?: string[];
  allowed_imports?: string[];
  read?: string[];
  write?: string[];
  network?: false | string[];
  filesystem?: boolean;
  limits?: { memory?: string; cpu?: string; wall?: string; output?: string; processes?: number };
}

/** Converts {@link ScriptMeta} to the server's `overrides`, without undefined keys. */
export function toOverrides(meta?: ScriptMeta): Overrides;

/** A script's metadata as the server resolved it. */
export interface ResolvedMeta {
  name?: string;
  description?: string;
  author?: string;
  category?: string;
  tags: string[];
  /** PEP 723 `dependencies`. */
  dependencies: unknown[];
  permissions: {
    /** Absent: any import. */
    allowed_imports?: string[];
    read: string[];
    write: string[];
    network: string[];
    filesystem: boolean;
  };
  limits: { memory: number; cpu_ms: number; wall_ms: number; output: number; processes: number };
  [key: string]: unknown;
}

export interface ScriptInfo {
  id: string;
  /** The version runs use. */
  current: number;
  latest: number;
  digest: string;
  meta: ResolvedMeta;
  created_at_ms: number;
  updated_at_ms: number;
}

/** {@link ScriptInfo} with its current version's source and lock. */
export interface ScriptDetail extends ScriptInfo {
  source: string;
  lock: unknown;
}

/** The answer of a change: the script, the version made current, warnings. */
export interface Added {
  script: ScriptInfo;
  version: number;
  /** `false`: an earlier version had this content and is current again. */
  created: boolean;
  warnings: Problem[];
}

export interface VersionInfo {
  script_id: string;
  version: number;
  current: boolean;
  digest: string;
  meta: ResolvedMeta;
  locked_packages: number;
  created_at_ms: number;
}

export interface CheckResult {
  /** No errors (warnings allowed). */
  ok: boolean;
  meta: ResolvedMeta;
  problems: Problem[];
}

export type RunState = 'queued' | 'running' | 'succeeded' | 'failed' | 'cancelled' | 'killed';

/** A resource sample of a running run (every 250 ms). */
export interface Sample {
  elapsed_ms: number;
  cpu_percent: number;
  cpu_ms: number;
  memory: number;
  peak_memory: number;
}

export interface RunRecord {
  id: number;
  script_id: string | null;
  version: number | null;
  digest: string;
  label: string;
  args: Record<string, Json>;
  who: string;
  state: RunState;
  queued_at_ms: number;
  started_at_ms: number | null;
  ended_at_ms: number | null;
  duration_ms: number | null;
  exit_code: number | null;
  /** Why it ended so: `exited with status 3`, `wall-clock limit of 1 s exceeded`, `cancelled`. */
  reason: string | null;
  peak_rss: number | null;
  cpu_ms: number | null;
  /** An excerpt of stdout and stderr (filled in once it ended). */
  output: string;
  output_bytes: number;
  /** What `script.result(...)` set. */
  result: Json;
  /** While it runs: its latest progress (`[fraction, message]`) and sample. */
  live?: { state: RunState; progress: [number, string | null] | null; sample: Sample | null };
}

/** What progress listeners get on each `progress` and `sample` event. */
export interface ProgressInfo {
  runId: number;
  /** Which event this is; the other fields keep their latest values. */
  kind: 'progress' | 'sample';
  /** From 0 to 1; `null` before the script reported any. */
  progress: number | null;
  message: string | null;
  /** Memory in use now, bytes (`null` before the first sample). */
  memory: number | null;
  peakMemory: number | null;
  cpuPercent: number | null;
  cpuMs: number | null;
  elapsedMs: number | null;
}

export interface OutputChunk {
  runId: number;
  stream: 'stdout' | 'stderr' | (string & {});
  text: string;
}

export interface FollowOptions {
  onProgress?: (info: ProgressInfo) => void;
  onOutput?: (chunk: OutputChunk) => void;
  /** Every event of the stream (`snapshot`, `started`, `output`, `progress`, `sample`, `lagged`, `ended`), its data parsed. */
  onEvent?: (event: string, data: any) => void;
  /** Stops following (the run goes on; {@link ScriptManager.cancel} stops it). */
  signal?: AbortSignal;
}

/** Options of the calls that start a run and follow it. */
export interface StartOptions extends FollowOptions {
  /** Called with the run as accepted (`{id, state: "queued" or already "running", ...}`) before following it: its id, for {@link ScriptManager.cancel}. */
  onQueued?: (run: RunRecord) => void;
}

export interface ExecuteOptions extends StartOptions {
  /** `script.args()`. */
  args?: Record<string, Json>;
  /** The version to run (default: the current one). */
  version?: number;
}

export interface ExecuteFileOptions extends StartOptions, ScriptMeta {
  /** The file name, for the record (default `script.py`). */
  name?: string;
  args?: Record<string, Json>;
}

export interface TemplateVariable {
  name: string;
  type: 'string' | 'int' | 'float' | 'bool' | 'enum';
  /** For `enum` only. */
  choices?: string[];
  required?: boolean;
  default?: Json;
  description?: string;
}

export interface TemplateSpec {
  name: string;
  /** Text with `{{ variable }}` placeholders (minijinja); values are inserted as they are. */
  source: string;
  description?: string;
  variables?: TemplateVariable[];
  /** Overwrite a template of that name. */
  replace?: boolean;
}

export interface TemplateInfo {
  name: string;
  description: string;
  vars: (Omit<TemplateVariable, 'required'> & { required: boolean })[];
  source: string;
  created_at_ms: number;
  updated_at_ms: number;
}

/** The script manager: register, check, version, run and follow scripts and templates. */
export class ScriptManager {
  constructor(client: PlugdClient);
  readonly client: PlugdClient;

  registerScript(spec: ScriptMeta & { id?: string; source: string }): Promise<Added>;
  getScript(id: string): Promise<ScriptDetail>;
  listScripts(filter?: { tag?: string; category?: string; search?: string }): Promise<ScriptInfo[]>;
  updateScript(id: string, source: string, meta?: ScriptMeta): Promise<Added>;
  deleteScript(id: string): Promise<void>;
  versions(id: string): Promise<VersionInfo[]>;
  rollback(id: string, version: number): Promise<ScriptInfo>;
  setScriptPermissions(id: string, permissions: Permissions): Promise<Added>;
  validateScript(source: string, meta?: ScriptMeta): Promise<CheckResult>;

  /** Runs a registered script and resolves with its final record, whatever its state. */
  executeScript(id: string, options?: ExecuteOptions): Promise<RunRecord>;
  /** Runs a source without registering it and resolves with its final record. */
  executeFile(source: string, options?: ExecuteFileOptions): Promise<RunRecord>;
  /** Follows a run (started elsewhere, too) to its end. */
  follow(runId: number, options?: FollowOptions): Promise<RunRecord>;
  /** Calls `listener` on each `progress` and `sample` event of every run this manager follows. */
  onExecutionProgress(listener: (info: ProgressInfo) => void): () => void;

  cancel(runId: number): Promise<{ id: number; cancelling: true }>;
  getRun(runId: number): Promise<RunRecord>;
  runs(filter?: { scriptId?: string; limit?: number; before?: number }): Promise<RunRecord[]>;

  createTemplate(spec: TemplateSpec): Promise<TemplateInfo>;
  listTemplates(): Promise<TemplateInfo[]>;
  instantiateTemplate(name: string, id: string, values?: Record<string, Json>, meta?: ScriptMeta): Promise<Added>;
}
