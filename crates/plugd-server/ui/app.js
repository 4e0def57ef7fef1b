// plugd dashboard: plain DOM, no framework, no inline code (the page's CSP forbids it).
// Logs in by trading a token for an HttpOnly session cookie, then uses the JSON API.
'use strict';

const main = document.querySelector('[data-testid=main]');
const errorBox = document.querySelector('[data-testid=error]');
const nav = document.querySelector('[data-testid=nav]');
const who = document.querySelector('[data-testid=who]');
const logoutButton = document.querySelector('[data-testid=logout]');
let streams = [];  // EventSources of the current view, closed when it changes

// An element: el('td', {class: 'x', 'data-testid': 'y'}, 'text', child, ...).
function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith('on')) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v === true ? '' : v);
  }
  for (const c of children.flat()) {
    if (c !== undefined && c !== null) node.append(c instanceof Node ? c : String(c));
  }
  return node;
}

function showError(message) {
  errorBox.textContent = message;
  errorBox.hidden = !message;
}

function json(value) { return JSON.stringify(value, null, 2); }
function time(ms) { return ms ? new Date(ms).toISOString().replace('T', ' ').slice(0, 19) : ''; }
function enc(s) { return encodeURIComponent(s); }

// One API request: {ok, status, data}. A 401 outside the log-in sends the user there.
async function api(method, path, body) {
  const init = { method, credentials: 'same-origin', headers: { Accept: 'application/json' } };
  if (body !== undefined) {
    init.headers['Content-Type'] = 'application/json';
    init.body = JSON.stringify(body);
  }
  let response;
  try {
    response = await fetch(path, init);
  } catch (e) {
    return { ok: false, status: 0, data: { error: { code: 'unreachable', message: 'plugd cannot be reached: ' + e.message } } };
  }
  const text = await response.text();
  let data = null;
  try { data = text ? JSON.parse(text) : null; } catch (_) { data = { error: { message: text } }; }
  if (response.status === 401 && path !== '/api/v1/session') {
    loginView('Your session ended; log in again.');
  }
  return { ok: response.ok, status: response.status, data };
}

function message(result) {
  const e = result.data && result.data.error;
  return e ? `${e.message} (${e.code || result.status})` : `HTTP ${result.status}`;
}

function follow(path, name, onData) {
  const source = new EventSource(path);
  source.addEventListener(name, (e) => onData(JSON.parse(e.data), e.lastEventId));
  streams.push(source);
  return source;
}

function view(...children) {
  streams.forEach((s) => s.close());
  streams = [];
  showError('');
  main.replaceChildren(...children.flat().filter((c) => c !== null && c !== undefined));
}

// --- log-in -----------------------------------------------------------------------------------
function loginView(note) {
  nav.hidden = true;
  logoutButton.hidden = true;
  who.textContent = '';
  const input = el('input', { type: 'password', 'data-testid': 'token', autocomplete: 'off', placeholder: 'plugd_...' });
  const form = el('form', { class: 'card login', 'data-testid': 'login-form' },
    el('h2', {}, 'Log in'),
    el('p', {}, 'Paste an API token (', el('code', {}, 'plugd token create --name me --scope admin'), ').'),
    input,
    el('p', {}, el('button', { type: 'submit', 'data-testid': 'login' }, 'Log in')));
  form.addEventListener('submit', async (e) => {
    e.preventDefault();
    const result = await api('POST', '/api/v1/session', { token: input.value.trim() });
    if (!result.ok) return showError(message(result));
    loggedIn(result.data);
  });
  view(form);
  if (note) showError(note);
  input.focus();
}

function loggedIn(whoami) {
  nav.hidden = false;
  logoutButton.hidden = !whoami.auth_required;
  who.textContent = whoami.name ? `${whoami.name} (${whoami.scopes.join(', ')})` : 'no authentication';
  if (!location.hash || location.hash === '#/login') location.hash = '#/plugins';
  else route();
}

logoutButton.addEventListener('click', async () => {
  await api('DELETE', '/api/v1/session');
  location.hash = '#/login';
  loginView();
});

// --- plugins ----------------------------------------------------------------------------------
async function pluginsView() {
  const result = await api('GET', '/api/v1/plugins');
  if (!result.ok) return showError(message(result));
  const rows = result.data.plugins.map((p) => el('tr', { 'data-testid': `plugin-row-${p.name}` },
    el('td', {}, el('a', { href: `#/plugin/${enc(p.name)}`, 'data-testid': `plugin-link-${p.name}` }, p.name)),
    el('td', {}, p.version || ''),
    el('td', { class: `state-${p.state}`, 'data-testid': `plugin-state-${p.name}` }, p.state),
    el('td', {}, p.runtime || ''),
    el('td', {}, p.trust || ''),
    el('td', {}, p.actions.map((a) => a.name).join(', ')),
    el('td', {}, p.reason || p.last_error || '')));
  view(el('h2', {}, 'Plugins'),
    el('table', { 'data-testid': 'plugins' },
      el('tr', {}, ['Name', 'Version', 'State', 'Runtime', 'Trust', 'Actions', 'Why'].map((h) => el('th', {}, h))),
      rows));
}

// A form for an object schema of plain fields, else a JSON text area; `read()` gives the value.
function schemaForm(schema, value, prefix) {
  const props = schema && schema.type === 'object' && schema.properties;
  const simple = props && Object.values(props).every((p) => ['string', 'number', 'integer', 'boolean'].includes(p.type) || Array.isArray(p.enum));
  if (!simple) {
    const area = el('textarea', { 'data-testid': `${prefix}-json` });
    area.value = json(value === undefined ? {} : value);
    return { node: area, read: () => JSON.parse(area.value || '{}'), fields: {} };
  }
  const fields = {};
  const labels = Object.entries(props).map(([key, p]) => {
    const current = value && value[key] !== undefined ? value[key] : p.default;
    let input;
    if (Array.isArray(p.enum)) {
      input = el('select', { 'data-testid': `${prefix}-${key}` }, p.enum.map((o) => el('option', { value: JSON.stringify(o) }, String(o))));
      if (current !== undefined) input.value = JSON.stringify(current);
    } else if (p.type === 'boolean') {
      input = el('input', { type: 'checkbox', 'data-testid': `${prefix}-${key}` });
      input.checked = !!current;
    } else {
      input = el('input', { type: p.type === 'string' ? 'text' : 'number', step: p.type === 'integer' ? '1' : 'any', 'data-testid': `${prefix}-${key}` });
      if (current !== undefined && current !== null) input.value = current;
    }
    const violation = el('span', { class: 'violation', 'data-testid': `${prefix}-violation-${key}` });
    fields[key] = { input, violation, p };
    return el('label', {}, el('span', { title: p.description || '' }, key), input, violation,
      p.description ? el('small', {}, ' ', p.description) : null);
  });
  const read = () => {
    const out = {};
    for (const [key, { input, p }] of Object.entries(fields)) {
      if (Array.isArray(p.enum)) out[key] = JSON.parse(input.value);
      else if (p.type === 'boolean') out[key] = input.checked;
      else if (input.value === '') continue;
      else if (p.type === 'string') out[key] = input.value;
      else out[key] = Number(input.value);
    }
    return out;
  };
  return { node: el('div', {}, labels), read, fields };
}

function renderOutcome(data) {
  const parts = [el('pre', {}, json(data.value))];
  for (const n of data.notifications || []) parts.push(el('p', { class: n.level === 'error' ? 'violation' : 'ok' }, `${n.level || 'info'}: ${n.message || json(n)}`));
  for (const g of data.groups || []) parts.push(el('p', {}, `group ${g.label || g.name || ''}: ${(g.items || []).length} items`));
  return parts;
}

async function pluginView(name) {
  const [plugin, params, logs] = await Promise.all([
    api('GET', `/api/v1/plugins/${enc(name)}`),
    api('GET', `/api/v1/plugins/${enc(name)}/params`),
    api('GET', `/api/v1/plugins/${enc(name)}/logs?limit=200`),
  ]);
  if (!plugin.ok) return showError(message(plugin));
  const p = plugin.data;
  const ops = ['load', 'unload', 'reload', 'restart'].map((op) => el('button', {
    class: 'plain', 'data-testid': `op-${op}`,
    onclick: async () => {
      const r = await api('POST', `/api/v1/plugins/${enc(name)}/${op}`);
      if (!r.ok) return showError(message(r));
      pluginView(name);
    },
  }, op));
  const actions = p.actions.map((a) => {
    const form = schemaForm(a.input, undefined, `action-${a.name}`);
    const out = el('div', { 'data-testid': `result-${a.name}` });
    return el('div', { class: 'card' },
      el('h3', {}, a.name), el('p', {}, a.description || ''), form.node,
      el('button', {
        'data-testid': `call-${a.name}`,
        onclick: async () => {
          let payload;
          try { payload = form.read(); } catch (e) { return out.replaceChildren(el('p', { class: 'violation' }, 'Not JSON: ' + e.message)); }
          const r = await api('POST', `/api/v1/plugins/${enc(name)}/actions/${enc(a.name)}`, payload);
          out.replaceChildren(...(r.ok ? renderOutcome(r.data) : [el('p', { class: 'violation' }, message(r))]));
        },
      }, 'Call'), out);
  });
  const paramsCard = el('div', { class: 'card' }, el('h3', {}, 'Params'));
  if (params.ok && params.data.schema) {
    const form = schemaForm(params.data.schema, params.data.params, 'param');
    const status = el('span', { 'data-testid': 'params-status' });
    paramsCard.append(form.node, el('div', { class: 'row' }, el('button', {
      'data-testid': 'params-save',
      onclick: async () => {
        Object.values(form.fields).forEach((f) => { f.violation.textContent = ''; });
        status.textContent = '';
        let value;
        try { value = form.read(); } catch (e) { status.textContent = 'Not JSON: ' + e.message; return; }
        const r = await api('PUT', `/api/v1/plugins/${enc(name)}/params`, value);
        if (r.ok) { status.textContent = 'Saved'; status.className = 'ok'; return; }
        status.className = 'violation';
        status.textContent = message(r);
        for (const v of (r.data.error && r.data.error.violations) || []) {
          const key = (v.pointer || '').split('/')[1];
          if (form.fields[key]) form.fields[key].violation.textContent = v.message;
        }
      },
    }, 'Save'), status));
  } else {
    paramsCard.append(el('p', {}, 'This plugin declares no params.'));
  }
  const logBox = el('pre', { 'data-testid': 'logs' });
  let last = 0;
  const addLine = (l) => {
    last = Math.max(last, l.seq);
    logBox.append(`${time(l.at_ms)} ${l.level.padEnd(5)} ${l.source.padEnd(7)} ${l.message}\n`);
    logBox.scrollTop = logBox.scrollHeight;
  };
  if (logs.ok) logs.data.lines.forEach(addLine);
  const s = p.supervision || {};
  view(
    el('h2', {}, `${p.name} ${p.version || ''}`),
    el('div', { class: 'card' },
      el('p', {}, 'State: ', el('b', { class: `state-${p.state}`, 'data-testid': 'plugin-state' }, p.state),
        ` · runtime ${p.runtime || '-'} · trust ${p.trust || '-'} · calls ${p.metrics.calls} · errors ${p.metrics.errors}`,
        ` · faults ${(s.faults || []).length}`),
      p.reason ? el('p', { class: 'violation' }, p.reason) : null,
      el('p', {}, 'Sandbox: ', json(p.details && p.details.sandbox ? p.details.sandbox : p.limits || {})),
      el('div', { class: 'row' }, ops)),
    el('h3', {}, 'Actions'), actions, paramsCard,
    el('h3', {}, 'Logs (live)'), logBox);
  follow(`/api/v1/plugins/${enc(name)}/logs/stream?after=${last}`, 'log', addLine);
}

// --- tasks ------------------------------------------------------------------------------------
function taskRow(t) {
  const live = t.state === 'queued' || t.state === 'running';
  return el('tr', { 'data-testid': `task-${t.id}` },
    el('td', {}, t.id), el('td', {}, t.plugin), el('td', {}, t.task),
    el('td', { 'data-testid': `task-state-${t.id}` }, t.state),
    el('td', {}, el('progress', { max: '1', value: t.progress == null ? (t.state === 'succeeded' ? 1 : 0) : t.progress, 'data-testid': `task-progress-${t.id}` }),
      ' ', t.message || ''),
    el('td', {}, t.error || (t.result !== undefined && t.result !== null ? JSON.stringify(t.result) : '')),
    el('td', {}, live ? el('button', {
      class: 'plain', 'data-testid': `task-cancel-${t.id}`,
      onclick: async () => {
        const r = await api('POST', `/api/v1/tasks/${t.id}/cancel`);
        if (!r.ok) showError(message(r));
      },
    }, 'Cancel') : ''));
}

async function tasksView() {
  const result = await api('GET', '/api/v1/tasks?limit=50');
  if (!result.ok) return showError(message(result));
  const table = el('table', { 'data-testid': 'tasks' },
    el('tr', {}, ['Id', 'Plugin', 'Task', 'State', 'Progress', 'Result', ''].map((h) => el('th', {}, h))));
  const rows = new Map();
  const put = (t) => {
    const row = taskRow(t);
    if (rows.has(t.id)) rows.get(t.id).replaceWith(row);
    else table.children[0].after(row);
    rows.set(t.id, row);
  };
  result.data.tasks.slice().reverse().forEach(put);
  view(el('h2', {}, 'Tasks'), table);
  follow('/api/v1/tasks/stream', 'task', put);
}

// --- events -----------------------------------------------------------------------------------
function eventRow(e) {
  return el('tr', { 'data-testid': `event-${e.seq}` },
    el('td', {}, e.seq), el('td', {}, time(e.at_ms)), el('td', {}, e.topic), el('td', {}, e.source || 'app'),
    el('td', {}, el('code', {}, JSON.stringify(e.payload))));
}

async function eventsView() {
  const [events, dead] = await Promise.all([
    api('GET', '/api/v1/events?limit=100'),
    api('GET', '/api/v1/events/dead?limit=100'),
  ]);
  if (!events.ok) return showError(message(events));
  const table = el('table', { 'data-testid': 'events' },
    el('tr', {}, ['Seq', 'At', 'Topic', 'Source', 'Payload'].map((h) => el('th', {}, h))));
  let last = 0;
  const add = (e) => { last = Math.max(last, e.seq); table.children[0].after(eventRow(e)); };
  events.data.events.forEach(add);
  const deadRows = (dead.ok ? dead.data.dead_letters : []).map((d) => el('tr', { 'data-testid': `dead-${d.plugin}-${d.event.seq}` },
    el('td', {}, d.plugin), el('td', {}, d.event.seq), el('td', {}, d.event.topic), el('td', {}, d.attempts),
    el('td', {}, d.error || ''),
    el('td', {}, el('button', {
      class: 'plain', 'data-testid': `replay-${d.plugin}-${d.event.seq}`,
      onclick: async (ev) => {
        const r = await api('POST', `/api/v1/events/dead/${enc(d.plugin)}/${d.event.seq}/replay`);
        if (!r.ok) return showError(message(r));
        ev.target.replaceWith(`replayed as ${r.data.replayed}`);
      },
    }, 'Replay'))));
  view(el('h2', {}, 'Events (live)'), table,
    el('h3', {}, 'Dead letters'),
    deadRows.length ? el('table', { 'data-testid': 'dead-letters' },
      el('tr', {}, ['Plugin', 'Seq', 'Topic', 'Attempts', 'Error', ''].map((h) => el('th', {}, h))), deadRows)
      : el('p', { 'data-testid': 'dead-letters' }, 'None.'));
  follow(`/api/v1/events/stream?after=${last}`, 'event', add);
}

// --- routing ----------------------------------------------------------------------------------
function route() {
  const hash = location.hash.slice(1) || '/plugins';
  const [, page, arg] = hash.split('/');
  if (page === 'login') return loginView();
  if (page === 'plugin' && arg) return pluginView(decodeURIComponent(arg));
  if (page === 'tasks') return tasksView();
  if (page === 'events') return eventsView();
  return pluginsView();
}

window.addEventListener('hashchange', () => { if (!nav.hidden) route(); });

(async function boot() {
  const result = await api('GET', '/api/v1/session');
  if (result.ok) loggedIn(result.data);
  else loginView();
})();
