// End-to-end tests of @plugd/client against a real `plugd serve` (run as root: scripts run in
// a kernel sandbox). PLUGD_BIN overrides the binary (default: the checkout's target/debug/plugd).
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync, spawn } from 'node:child_process';
import { mkdir, mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';

import { PlugdClient, PlugdError, ScriptManager, parseEventStream } from '../src/index.js';

const BIN = process.env.PLUGD_BIN ?? fileURLToPath(new URL('../../../target/debug/plugd', import.meta.url));

const COUNT = `# /// script
# [tool.plugd]
# id = "count"
# name = "Count"
# tags = ["demo"]
# allowed_imports = ["time"]
# ///
import time
from plugd import script
args = script.args()
n = args.get("n", 3)
for i in range(n):
    script.progress((i + 1) / n, f"step {i + 1}")
    print(f"line {i + 1}", flush=True)
    time.sleep(0.3)
script.result({"counted": n})
`;

const SLEEP = `import time
print("start", flush=True)
time.sleep(30)
`;

let dir;
let server;
let baseUrl;
let token;
/** @type {ScriptManager} */
let scripts;

/** Starts `plugd serve` and answers its URL once it printed `plugd listening on URL`. */
function serve() {
  server = spawn(BIN, [
    'serve', '--plugins', join(dir, 'plugins'), '--state-dir', join(dir, 'state'), '--listen', '127.0.0.1:0',
  ], { stdio: ['ignore', 'pipe', 'pipe'] });
  let log = '';
  server.stderr.on('data', (chunk) => { log = (log + chunk).slice(-4000); });
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`plugd did not listen within 30 s:\n${log}`)), 30_000);
    server.once('error', reject);
    server.once('exit', (code) => reject(new Error(`plugd exited (${code}) before listening:\n${log}`)));
    createInterface({ input: server.stdout }).on('line', (line) => {
      const m = /^plugd listening on (http:\/\/\S+)/.exec(line);
      if (m) { clearTimeout(timer); resolve(m[1]); }
    });
  });
}

before(async () => {
  dir = await mkdtemp(join(tmpdir(), 'plugd-js-'));
  await mkdir(join(dir, 'plugins'));
  // A token turns auth on (`--auth auto`), so every call below goes through the bearer path.
  token = execFileSync(BIN, ['token', 'create', '--name', 'sdk-js', '--scope', 'admin', '--state-dir', join(dir, 'state')], { encoding: 'utf8' }).trim();
  baseUrl = await serve();
  scripts = new ScriptManager(new PlugdClient({ baseUrl, token }));
});

after(async () => {
  if (server && server.exitCode === null) {
    const exited = new Promise((resolve) => server.once('exit', resolve));
    server.kill('SIGTERM');
    const timer = setTimeout(() => server.kill('SIGKILL'), 10_000);
    await exited;
    clearTimeout(timer);
  }
  if (dir) await rm(dir, { recursive: true, force: true });
});

test('registerScript reads the PEP 723 metadata', async () => {
  const added = await scripts.registerScript({ source: COUNT, description: 'Counts', limits: { memory: '128MiB', wall: '30s' } });
  assert.equal(added.created, true);
  assert.equal(added.version, 1);
  assert.equal(added.script.id, 'count');
  assert.equal(added.script.meta.name, 'Count');
  assert.equal(added.script.meta.description, 'Counts');
  assert.deepEqual(added.script.meta.tags, ['demo']);
  assert.deepEqual(added.script.meta.permissions.allowed_imports, ['time']);
  assert.equal(added.script.meta.limits.memory, 128 * 1024 * 1024);
  assert.equal(added.script.meta.limits.wall_ms, 30_000);
  const shown = await scripts.getScript('count');
  assert.equal(shown.source, COUNT);
});

test('listScripts filters by tag, category and search', async () => {
  await scripts.registerScript({ id: 'other', source: 'print("other")\n', tags: ['misc'], category: 'tools' });
  const ids = (list) => list.map((s) => s.id).sort();
  assert.deepEqual(ids(await scripts.listScripts()), ['count', 'other']);
  assert.deepEqual(ids(await scripts.listScripts({ tag: 'demo' })), ['count']);
  assert.deepEqual(ids(await scripts.listScripts({ category: 'tools' })), ['other']);
  assert.deepEqual(ids(await scripts.listScripts({ search: 'Count' })), ['count']);
  assert.deepEqual(await scripts.listScripts({ tag: 'nothing' }), []);
});

test('validateScript reports syntax errors and forbidden imports with positions', async () => {
  const syntax = await scripts.validateScript('x = 1\ndef f(:\n    pass\n');
  assert.equal(syntax.ok, false);
  assert.equal(syntax.problems.length, 1);
  assert.deepEqual(
    { kind: syntax.problems[0].kind, severity: syntax.problems[0].severity, line: syntax.problems[0].line, column: syntax.problems[0].column },
    { kind: 'syntax', severity: 'error', line: 2, column: 7 },
  );
  const imports = await scripts.validateScript('import time\nimport socket\n', { allowedImports: ['time'] });
  assert.equal(imports.ok, false);
  assert.deepEqual(imports.problems.map((p) => [p.kind, p.line, p.column]), [['import', 2, 8]]);
  assert.match(imports.problems[0].message, /socket/);
  const fine = await scripts.validateScript('import time\n', { allowedImports: ['time'], limits: { wall: 1500 } });
  assert.equal(fine.ok, true);
  assert.equal(fine.meta.limits.wall_ms, 1500);
});

test('registerScript refuses a script that fails its checks', async () => {
  const error = await scripts.registerScript({ id: 'bad', source: 'import socket\n', allowedImports: [] }).catch((e) => e);
  assert.ok(error instanceof PlugdError);
  assert.equal(error.status, 400);
  assert.equal(error.code, 'invalid_script');
  assert.equal(error.problems[0].kind, 'import');
});

test('executeScript follows progress, samples, output and result', async () => {
  const progress = [];
  const global = [];
  const output = [];
  const events = [];
  const unsubscribe = scripts.onExecutionProgress((info) => global.push(info));
  let queued;
  const run = await scripts.executeScript('count', {
    args: { n: 4 },
    onQueued: (r) => { queued = r; },
    onProgress: (info) => progress.push(info),
    onOutput: (chunk) => output.push(chunk),
    onEvent: (event) => events.push(event),
  });
  unsubscribe();

  assert.ok(['queued', 'running'].includes(queued.state), queued.state); // 202: accepted, maybe started
  assert.equal(queued.id, run.id);
  assert.equal(run.state, 'succeeded');
  assert.equal(run.exit_code, 0);
  assert.deepEqual(run.result, { counted: 4 });
  assert.deepEqual(run.args, { n: 4 });
  assert.equal(run.output, 'line 1\nline 2\nline 3\nline 4\n');
  assert.ok(run.peak_rss > 0 && run.duration_ms >= 1000);

  assert.deepEqual(global, progress, 'the manager-wide listener sees what onProgress sees');
  assert.ok(progress.every((p) => p.runId === run.id));
  const fractions = progress.filter((p) => p.kind === 'progress').map((p) => p.progress);
  assert.ok(fractions.length >= 3, `fractions: ${fractions}`);
  assert.ok(fractions.every((f, i) => i === 0 || f > fractions[i - 1]), `increasing: ${fractions}`);
  assert.equal(fractions.at(-1), 1);
  assert.equal(progress.filter((p) => p.kind === 'progress').at(-1).message, 'step 4');
  const samples = progress.filter((p) => p.kind === 'sample');
  assert.ok(samples.some((s) => s.memory > 0 && s.peakMemory >= s.memory), 'a sample with memory');
  assert.ok(samples.every((s) => typeof s.elapsedMs === 'number' && typeof s.cpuMs === 'number'));

  assert.equal(output.map((c) => c.text).join(''), run.output);
  assert.ok(output.every((c) => c.stream === 'stdout' && c.runId === run.id));
  assert.equal(events.at(-1), 'ended');

  // Unsubscribed: the listener hears nothing more.
  const before = global.length;
  await scripts.executeScript('count', { args: { n: 1 } });
  assert.equal(global.length, before);
});

test('executeFile runs a source without registering it', async () => {
  const out = [];
  const run = await scripts.executeFile('from plugd import script\nprint("hi")\nscript.result(script.args())\n', {
    name: 'adhoc.py',
    args: { a: [1, 2] },
    limits: { wall: '10s' },
    onOutput: (c) => out.push(c.text),
  });
  assert.equal(run.state, 'succeeded');
  assert.equal(run.script_id, null);
  assert.deepEqual(run.result, { a: [1, 2] });
  assert.equal(out.join(''), 'hi\n');
});

test('a failing script ends failed with its exit code', async () => {
  await scripts.registerScript({
    id: 'fail', source: 'import sys\nprint("oops", file=sys.stderr)\nsys.exit(3)\n', allowedImports: ['sys'],
  });
  const stderr = [];
  const run = await scripts.executeScript('fail', { onOutput: (c) => c.stream === 'stderr' && stderr.push(c.text) });
  assert.equal(run.state, 'failed');
  assert.equal(run.exit_code, 3);
  assert.match(run.reason, /status 3/);
  assert.equal(stderr.join(''), 'oops\n');
});

test('a run past its wall-clock limit is killed', async () => {
  await scripts.registerScript({ id: 'slow', source: SLEEP, allowedImports: ['time'] });
  const changed = await scripts.setScriptPermissions('slow', { limits: { wall: '1s' } });
  assert.equal(changed.version, 2);
  assert.equal(changed.script.meta.limits.wall_ms, 1000);
  const run = await scripts.executeScript('slow');
  assert.equal(run.state, 'killed');
  assert.equal(run.exit_code, null);
  assert.match(run.reason, /wall-clock/);
  assert.ok(run.duration_ms < 10_000);
});

test('cancel stops a running script', async () => {
  await scripts.registerScript({ id: 'sleeper', source: SLEEP, allowedImports: ['time'] });
  let cancelled;
  const run = await scripts.executeScript('sleeper', {
    onOutput: (c) => { cancelled ??= scripts.cancel(c.runId); },
  });
  assert.deepEqual(await cancelled, { id: run.id, cancelling: true });
  assert.equal(run.state, 'cancelled');
  assert.ok(run.duration_ms < 10_000);
  assert.equal((await scripts.getRun(run.id)).state, 'cancelled');

  const again = await scripts.cancel(run.id).catch((e) => e);
  assert.ok(again instanceof PlugdError);
  assert.equal(again.status, 409);
  assert.equal(again.code, 'conflict');

  const mine = await scripts.runs({ scriptId: 'sleeper' });
  assert.deepEqual(mine.map((r) => r.id), [run.id]);
  const latest = await scripts.runs({ limit: 1 });
  assert.equal(latest.length, 1);
  assert.equal(latest[0].id, run.id);
  // A stream of an ended run gives its record at once.
  assert.equal((await scripts.follow(run.id)).state, 'cancelled');
});

test('an aborted follow leaves the run going; follow re-attaches', async () => {
  const controller = new AbortController();
  let runId;
  const error = await scripts.executeScript('sleeper', {
    signal: controller.signal,
    onQueued: (run) => { runId = run.id; },
    onOutput: () => controller.abort(),
  }).catch((e) => e);
  assert.equal(error.name, 'AbortError');
  assert.equal((await scripts.getRun(runId)).state, 'running');
  const [run] = await Promise.all([scripts.follow(runId), scripts.cancel(runId)]);
  assert.equal(run.state, 'cancelled');
});

test('updateScript adds versions; rollback makes an earlier one current', async () => {
  const v1 = 'print("one")\n';
  await scripts.registerScript({ id: 'versioned', source: v1, tags: ['v'] });
  const updated = await scripts.updateScript('versioned', 'print("two")\n', { tags: ['v', 'two'] });
  assert.equal(updated.version, 2);
  assert.deepEqual(updated.script.meta.tags, ['two', 'v']); // the server sorts them
  assert.equal((await scripts.executeScript('versioned')).output, 'two\n');

  let versions = await scripts.versions('versioned');
  assert.deepEqual(versions.map((v) => [v.version, v.current]), [[1, false], [2, true]]);

  const rolled = await scripts.rollback('versioned', 1);
  assert.equal(rolled.current, 1);
  assert.equal(rolled.latest, 2);
  versions = await scripts.versions('versioned');
  assert.deepEqual(versions.map((v) => [v.version, v.current]), [[1, true], [2, false]]);
  assert.equal((await scripts.getScript('versioned')).source, v1);
  assert.equal((await scripts.executeScript('versioned')).output, 'one\n');
  // An explicit version runs that version, whichever is current.
  assert.equal((await scripts.executeScript('versioned', { version: 2 })).output, 'two\n');
});

test('templates: create, list, instantiate, and every missing value listed', async () => {
  const created = await scripts.createTemplate({
    name: 'greeter',
    description: 'Greets',
    source: '# /// script\n# [tool.plugd]\n# tags = ["greeting"]\n# ///\nfor _ in range({{ times }}):\n    print("{{ greeting }}, {{ who }}")\n',
    variables: [
      { name: 'who', type: 'string', required: true, description: 'Whom' },
      { name: 'times', type: 'int', default: 1 },
      { name: 'greeting', type: 'enum', choices: ['Hello', 'Hi'], default: 'Hello' },
    ],
  });
  assert.equal(created.name, 'greeter');
  assert.deepEqual(created.vars[2], { name: 'greeting', type: 'enum', choices: ['Hello', 'Hi'], required: false, default: 'Hello' });
  assert.deepEqual((await scripts.listTemplates()).map((t) => t.name), ['greeter']);

  const added = await scripts.instantiateTemplate('greeter', 'greet-ada', { who: 'Ada', times: 2 }, { category: 'demo' });
  assert.equal(added.script.id, 'greet-ada');
  assert.equal(added.script.meta.category, 'demo');
  assert.deepEqual(added.script.meta.tags, ['greeting']);
  assert.equal((await scripts.executeScript('greet-ada')).output, 'Hello, Ada\nHello, Ada\n');

  const error = await scripts.instantiateTemplate('greeter', 'greet-none', { times: 'many', greeting: 'Yo' }).catch((e) => e);
  assert.ok(error instanceof PlugdError);
  assert.equal(error.status, 400);
  assert.equal(error.code, 'bad_request');
  assert.equal(error.details.length, 3);
  assert.ok(error.details.some((d) => d.includes('`who`') && d.includes('required')), error.details.join('\n'));
  assert.ok(error.details.some((d) => d.includes('`times`')));
  assert.ok(error.details.some((d) => d.includes('`greeting`')));

  const taken = await scripts.createTemplate({ name: 'greeter', source: 'print(1)\n' }).catch((e) => e);
  assert.equal(taken.code, 'conflict');
  assert.equal((await scripts.createTemplate({ name: 'greeter', source: 'print(1)\n', replace: true })).vars.length, 0);
});

test('errors: unknown script, deleted script, missing token', async () => {
  const missing = await scripts.getScript('no-such-script').catch((e) => e);
  assert.ok(missing instanceof PlugdError);
  assert.equal(missing.status, 404);
  assert.equal(missing.code, 'not_found');
  assert.match(missing.message, /no-such-script/);
  assert.equal((await scripts.executeScript('no-such-script').catch((e) => e)).status, 404);

  await scripts.registerScript({ id: 'gone', source: 'print(1)\n' });
  assert.equal(await scripts.deleteScript('gone'), undefined);
  assert.equal((await scripts.getScript('gone').catch((e) => e)).code, 'not_found');
  // Ids are URL-encoded: a slash cannot reach another route.
  assert.equal((await scripts.getScript('a/versions').catch((e) => e)).code, 'not_found');

  const anonymous = new ScriptManager(new PlugdClient({ baseUrl }));
  const refused = await anonymous.listScripts().catch((e) => e);
  assert.ok(refused instanceof PlugdError);
  assert.equal(refused.status, 401);
  assert.equal(refused.code, 'unauthorized');
});

test('parseEventStream handles split chunks, CRLF, comments and multi-line data', async () => {
  const text = ': keep-alive\r\n\r\nevent: a\r\ndata: {"x":\r\ndata: 1}\r\n\r\nid: 7\ndata:plain\n\nevent: b\rdata: last\r\r';
  const bytes = new TextEncoder().encode(text);
  const body = new ReadableStream({
    start(controller) {
      for (let i = 0; i < bytes.length; i += 3) controller.enqueue(bytes.slice(i, i + 3));
      controller.close();
    },
  });
  const events = [];
  for await (const e of parseEventStream(body)) events.push(e);
  assert.deepEqual(events, [
    { event: 'a', data: '{"x":\n1}' },
    { event: 'message', data: 'plain', id: '7' },
    { event: 'b', data: 'last', id: '7' },
  ]);
});
