// narun dashboard: plain DOM, no framework, no inline script (CSP). Data is only ever put
// into the page with textContent. The token lives in sessionStorage (this tab only) and
// goes out as `Authorization: Bearer`; no cookie exists, so no request rides on one.
'use strict';
(function () {
  const base = location.pathname.replace(/[^/]*$/, '');
  const KEY = 'narun-dashboard-token';
  let role = null;
  let timer = null;
  let stream = null;

  const $ = (id) => document.getElementById(id);
  function el(tag, attrs, ...kids) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === null || v === undefined || v === false) continue;
      if (k === 'class') e.className = v; else if (k === 'text') e.textContent = v;
      else if (k.startsWith('on')) e.addEventListener(k.slice(2), v);
      else e.setAttribute(k, v === true ? '' : v);
    }
    for (const k of kids) if (k !== null && k !== undefined) e.append(k.nodeType ? k : document.createTextNode(String(k)));
    return e;
  }
  function say(text, error) { const m = $('message'); m.textContent = text || ''; m.className = error ? 'error' : ''; }
  function ago(s) {
    if (s === null || s === undefined) return '-';
    if (s < 90) return s + 's'; if (s < 5400) return Math.round(s / 60) + 'm';
    if (s < 172800) return Math.round(s / 3600) + 'h'; return Math.round(s / 86400) + 'd';
  }
  function bytes(n) {
    if (n === null || n === undefined) return '-';
    const u = ['B', 'KiB', 'MiB', 'GiB']; let i = 0;
    while (n >= 1024 && i < u.length - 1) { n /= 1024; i++; }
    return n.toFixed(i ? 1 : 0) + ' ' + u[i];
  }
  const num = (v) => typeof v === 'number' && isFinite(v);
  function load(n) { return num(n.load1) ? [n.load1, n.load5, n.load15].map((v) => num(v) ? v.toFixed(2) : '-').join(' ') : '-'; }
  // "<free> free of <total>" (memory: MemAvailable; disk: data_dir's file system).
  function room(free, total) { return num(total) ? (num(free) ? bytes(free) + ' free of ' : '') + bytes(total) : '-'; }
  function table(id, heads, rows) {
    return el('div', { class: 'table' }, el('table', { id },
      el('thead', {}, el('tr', {}, ...heads.map((h) => el('th', { scope: 'col', text: h })))),
      el('tbody', {}, ...rows)));
  }
  function status(s) {
    const cls = (s === 'running' || s === 'online') ? 'ok' : (s === 'backoff' || s === 'starting') ? 'warn' : 'bad';
    return el('span', { class: cls, text: s });
  }

  // Heartbeats as narund stores them; ages against narund's clock (`now`).
  function secs(now, ts) {
    const t = Date.parse(String(ts || '').replace(/(\.\d{3})\d+/, '$1'));
    return isNaN(t) ? null : Math.max(0, Math.round((now - t) / 1000));
  }
  function online(d, n) {
    const age = secs(d.now, n.last_seen);
    return n.status === 'running' && age !== null && age <= d.ttl_sec;
  }
  const up = (s) => s === 'running' || s === 'reloading';
  function reason(i) { return i.rolled_back ? 'rolled back from ' + i.rolled_back.tag : (i.reason || ''); }
  // Per node: desired (computed by narund from the spec) and the instances it reports.
  function placement(d, a) {
    const rows = [];
    for (const n of d.nodes) {
      const mine = (n.instances || []).filter((i) => i.app_name === a.name);
      const want = (a.desired || {})[n.node_id] || 0;
      if (!want && !mine.length) continue;
      rows.push({
        node_id: n.node_id, online: online(d, n), desired: want,
        running: mine.filter((i) => up(i.status)).length,
        restarts: mine.reduce((s, i) => s + (i.restarts || 0), 0),
        instances: mine.map((i) => ({ instance_id: i.instance_id, status: i.status, tag: i.tag, pid: i.pid === undefined ? null : i.pid,
          restarts: i.restarts || 0, since_sec: secs(d.now, i.since), reason: reason(i) })),
      });
    }
    return rows;
  }

  async function call(path, opts) {
    const token = sessionStorage.getItem(KEY);
    const o = Object.assign({ headers: {} }, opts || {});
    o.headers.Authorization = 'Bearer ' + token;
    if (o.body !== undefined) o.headers['Content-Type'] = 'application/json';
    const r = await fetch(base + 'api/' + path, o);
    if (r.status === 401) { sessionStorage.removeItem(KEY); showLogin('The token was refused (401).'); throw new Error('unauthorized'); }
    const body = await r.json().catch(() => ({}));
    if (!r.ok) throw new Error(r.status + ': ' + (body.error || r.statusText));
    return body;
  }

  function showLogin(why) {
    stop();
    $('login-view').hidden = false; $('view').replaceChildren(); $('logout').hidden = true;
    $('who').textContent = ''; say(why || '', !!why); $('token').focus();
  }
  async function login(ev) {
    ev.preventDefault();
    sessionStorage.setItem(KEY, $('token').value.trim()); $('token').value = '';
    await start();
  }
  async function start() {
    if (!sessionStorage.getItem(KEY)) { showLogin(); return; }
    try { role = await call('whoami'); } catch (e) { if (e.message !== 'unauthorized') say(e.message, true); return; }
    $('login-view').hidden = true; $('logout').hidden = false;
    $('who').textContent = role === 'admin' ? 'signed in: admin' : 'signed in: read-only';
    if (!location.hash) location.hash = '#/apps'; else route();
  }
  function stop() {
    if (timer) { clearInterval(timer); timer = null; }
    if (stream) { stream.abort(); stream = null; }
  }
  function route() {
    if (!role) return;
    stop(); say('');
    const h = location.hash.replace(/^#\//, '').split('/');
    for (const a of document.querySelectorAll('nav a')) {
      if (a.getAttribute('href') === '#/' + h[0]) a.setAttribute('aria-current', 'page'); else a.removeAttribute('aria-current');
    }
    let show;
    if (h[0] === 'nodes') show = nodes;
    else if (h[0] === 'services') show = services;
    else if (h[0] === 'jobs') show = jobs;
    else if (h[0] === 'apps' && h[1]) { show = () => app(decodeURIComponent(h[1])); logs(decodeURIComponent(h[1])); }
    else show = apps;
    const run = () => show().catch((e) => { if (e.message !== 'unauthorized') say(e.message, true); });
    run(); timer = setInterval(run, 3000);
  }

  async function nodes() {
    const d = await call('nodes');
    const list = d.nodes.slice().sort((a, b) => String(a.node_id).localeCompare(String(b.node_id)));
    const rows = list.map((n) => el('tr', { 'data-node': n.node_id },
      el('td', { text: n.node_id }), el('td', {}, status(online(d, n) ? 'online' : 'offline')),
      el('td', { text: Object.entries(n.labels || {}).map(([k, v]) => k + '=' + v).join(', ') || '-' }),
      el('td', { text: n.os + '/' + n.arch }), el('td', { text: n.version }),
      el('td', { text: ago(secs(d.now, n.start_time)) }), el('td', { text: ago(secs(d.now, n.last_seen)) + ' ago' }),
      el('td', { class: 'load', text: load(n) }),
      el('td', { class: 'mem', text: room(n.mem_available_bytes, n.mem_total_bytes) }),
      el('td', { class: 'disk', text: room(n.disk_free_bytes, n.disk_total_bytes) }),
      el('td', { text: (n.instances || n.managed_instances || []).length }),
      el('td', { text: (n.invalid_specs || []).map((i) => i.app_name).join(', ') || '-' })));
    $('view').replaceChildren(el('h2', { text: 'Nodes' }),
      table('nodes', ['Node', 'State', 'Labels', 'OS/arch', 'narund', 'Uptime', 'Heartbeat', 'Load 1/5/15 min', 'Memory', 'Disk (data_dir)', 'Instances', 'Refused specs'], rows));
  }

  async function apps() {
    const d = await call('apps');
    const rows = d.apps.map((a) => {
      const p = a.error ? [] : placement(d, a);
      const desired = p.reduce((s, n) => s + n.desired, 0), running = p.reduce((s, n) => s + n.running, 0);
      const reasons = [];
      for (const n of p) for (const i of n.instances) if (i.reason) reasons.push(i.instance_id + ': ' + i.reason);
      return el('tr', { 'data-app': a.name },
        el('td', {}, el('a', { href: '#/apps/' + encodeURIComponent(a.name), text: a.name })),
        el('td', { text: a.spec ? a.spec.tag : '-' }),
        el('td', { class: a.error ? 'bad' : (running >= desired ? 'ok' : 'warn'), text: a.error ? 'invalid spec' : running + ' / ' + desired }),
        el('td', { text: p.map((n) => n.node_id + ' ×' + n.desired).join(', ') || '-' }),
        el('td', { text: a.error ? '-' : p.reduce((s, n) => s + n.restarts, 0) }),
        el('td', { text: a.error || reasons.join('; ') || '-' }));
    });
    $('view').replaceChildren(el('h2', { text: 'Apps' }),
      table('apps', ['App', 'Tag', 'Running / desired', 'Nodes', 'Restarts', 'Reasons'], rows));
  }

  function spark(kind, label, values, fmt) {
    const w = 240, h = 40, nums = values.filter((v) => v !== null && v !== undefined);
    const svg = document.createElementNS('http://www.w3.org/2000/svg', 'svg');
    svg.setAttribute('class', 'spark ' + kind);
    svg.setAttribute('viewBox', '0 0 ' + w + ' ' + h); svg.setAttribute('role', 'img');
    const last = nums.length ? nums[nums.length - 1] : null;
    svg.setAttribute('aria-label', label + ': ' + (last === null ? 'no samples' : fmt(last)));
    if (nums.length > 1) {
      const max = Math.max(...nums) || 1, step = w / (values.length - 1);
      const pts = [];
      values.forEach((v, i) => { if (v !== null && v !== undefined) pts.push((i * step).toFixed(1) + ',' + (h - 2 - (v / max) * (h - 4)).toFixed(1)); });
      const p = document.createElementNS('http://www.w3.org/2000/svg', 'polyline');
      p.setAttribute('points', pts.join(' ')); svg.append(p);
    }
    return el('figure', {}, svg, el('figcaption', { text: label + ': ' + (last === null ? '-' : fmt(last)) }));
  }

  async function act(name, verb, body) {
    say(verb + ' ' + name + '…');
    try { const r = await call('apps/' + encodeURIComponent(name) + '/' + verb, { method: 'POST', body: JSON.stringify(body || {}) }); say(r.message); }
    catch (e) { if (e.message !== 'unauthorized') say(verb + ' refused: ' + e.message, true); }
  }

  let shown = null;
  async function app(name) {
    const [d, m] = await Promise.all([call('apps/' + encodeURIComponent(name)), call('apps/' + encodeURIComponent(name) + '/metrics')]);
    const a = d.app;
    if (a.error) throw new Error(a.error);
    a.tag = a.spec.tag; a.nodes = placement(d, a);
    const inst = [];
    for (const n of a.nodes) for (const i of n.instances) {
      inst.push(el('tr', { 'data-instance': i.instance_id },
        el('td', { text: i.instance_id }), el('td', { text: n.node_id }), el('td', {}, status(i.status)),
        el('td', { text: i.tag }), el('td', { text: i.pid === null ? '-' : i.pid }), el('td', { text: i.restarts }),
        el('td', { text: ago(i.since_sec) }), el('td', { text: i.reason || '-' })));
    }
    const desired = a.nodes.reduce((s, n) => s + n.desired, 0);
    const series = m.series || {};
    const sparks = Object.keys(series).sort().map((node) => el('div', { class: 'sparks', 'data-node': node },
      spark('cpu', 'CPU on ' + node + ' (% of a core)', series[node].map((s) => s.cpu_pct), (v) => v.toFixed(1) + ' %'),
      spark('mem', 'Memory on ' + node, series[node].map((s) => s.mem_bytes), bytes)));
    const head = [
      el('h2', { text: name + ':' + a.tag }),
      el('p', { text: 'desired ' + desired + ' on ' + (a.nodes.map((n) => n.node_id).join(', ') || 'no node') + ' · spec revision ' + a.revision }),
      table('instances', ['Instance', 'Node', 'Status', 'Tag', 'PID', 'Restarts', 'Since', 'Reason'], inst),
      ...sparks,
      el('h3', { text: 'Releases' }),
      el('p', { id: 'releases', text: a.releases.map((r) => r.tag + ' (' + r.time + ')').join(', ') || 'none remembered' }),
    ];
    if (shown !== name || !$('actions')) {
      shown = name;
      const replicas = el('input', { id: 'scale-replicas', type: 'number', min: 0, max: 1000, value: desired, 'aria-label': 'replicas' });
      const confirm = el('input', { id: 'delete-confirm', type: 'text', placeholder: 'type ' + name + ' to delete', 'aria-label': 'confirm deletion by typing the app name' });
      const actions = el('div', { class: 'actions', id: 'actions' },
        el('form', { onsubmit: (e) => { e.preventDefault(); act(name, 'scale', { replicas: Number(replicas.value) }); } },
          el('label', { for: 'scale-replicas', text: 'Replicas' }), replicas, el('button', { type: 'submit', id: 'scale-button', text: 'Scale' })),
        el('button', { type: 'button', id: 'restart', onclick: () => act(name, 'restart') , text: 'Restart' }),
        el('button', { type: 'button', id: 'rollback', onclick: () => act(name, 'rollback'), text: 'Roll back' }),
        el('form', { onsubmit: (e) => { e.preventDefault(); act(name, 'delete', { confirm: confirm.value }); } },
          confirm, el('button', { type: 'submit', id: 'delete', class: 'danger', text: 'Delete' })),
        role === 'admin' ? null : el('span', { class: 'warn', text: 'read-only token: actions will be refused' }));
      const log = el('ol', { id: 'log', 'aria-label': 'live log', tabindex: 0 });
      const events = el('ul', { id: 'events' });
      $('view').replaceChildren(el('div', { id: 'head' }), actions,
        el('h3', { text: 'Live log' }), log, el('h3', { text: 'Status events' }), events);
    }
    $('head').replaceChildren(...head);
  }

  // Server-sent events read with fetch (EventSource cannot send the token header).
  function logs(name) {
    shown = null;
    const ctl = new AbortController(); stream = ctl;
    const token = sessionStorage.getItem(KEY);
    fetch(base + 'api/apps/' + encodeURIComponent(name) + '/events', { headers: { Authorization: 'Bearer ' + token }, signal: ctl.signal })
      .then(async (r) => {
        if (!r.ok) throw new Error('log stream: ' + r.status);
        const reader = r.body.getReader(), dec = new TextDecoder();
        let buf = '';
        for (;;) {
          const { value, done } = await reader.read();
          if (done) break;
          buf += dec.decode(value, { stream: true });
          let i;
          while ((i = buf.indexOf('\n\n')) >= 0) { event(buf.slice(0, i)); buf = buf.slice(i + 2); }
        }
      }).catch((e) => { if (e.name !== 'AbortError') say(e.message, true); });
  }
  function event(text) {
    let kind = 'message'; const data = [];
    for (const l of text.split('\n')) {
      if (l.startsWith('event: ')) kind = l.slice(7); else if (l.startsWith('data: ')) data.push(l.slice(6));
    }
    if (!data.length) return;
    let d; try { d = JSON.parse(data.join('\n')); } catch (e) { return; }
    if (kind === 'log' && $('log')) {
      const log = $('log');
      log.append(el('li', {}, el('span', { class: 'meta', text: (d.timestamp || '') + ' ' + d.node_id + ' ' + d.instance_id + ' ' + d.stream + ' ' }), d.message));
      while (log.children.length > 300) log.firstChild.remove();
      log.scrollTop = log.scrollHeight;
    } else if (kind === 'status' && $('events')) {
      const ev = $('events');
      ev.prepend(el('li', { text: (d.time || '') + ' ' + d.node_id + ' ' + d.instance_id + ' → ' + d.status + (d.reason ? ' (' + d.reason + ')' : '') + (d.error ? ': ' + d.error : '') }));
      while (ev.children.length > 50) ev.lastChild.remove();
    }
  }

  async function services() {
    const list = (await call('services')).sort((a, b) => (a.name + a.id).localeCompare(b.name + b.id));
    const rows = [];
    for (const s of list) for (const e of (s.endpoints || [])) {
      rows.push(el('tr', {}, el('td', { text: s.name }), el('td', { text: s.version }), el('td', { text: s.id }),
        el('td', { text: e.name }), el('td', { text: e.subject }), el('td', { text: e.num_requests }),
        el('td', { class: e.num_errors ? 'bad' : '', text: e.num_errors }),
        el('td', { text: ((e.average_processing_time || 0) / 1e6).toFixed(2) + ' ms' })));
    }
    $('view').replaceChildren(el('h2', { text: 'Services' }),
      table('services', ['Service', 'Version', 'ID', 'Endpoint', 'Subject', 'Requests', 'Errors', 'Avg latency'], rows));
  }

  // Async jobs, newest first: id, service, route, state, attempts, times (never the request).
  async function jobs() {
    const d = await call('jobs'), now = d.now;
    const st = (s) => el('span', { class: s === 'done' ? 'ok' : (s === 'failed' || s === 'cancelled') ? 'bad' : 'warn', text: s });
    const rows = d.jobs.map((j) => el('tr', { 'data-job': j.id },
      el('td', { class: 'id', text: j.id }), el('td', { text: j.service }), el('td', { text: j.route }),
      el('td', {}, st(j.state)), el('td', { text: j.attempts + ' / ' + j.max_attempts + (j.retries ? ' (retried ' + j.retries + '×)' : '') }),
      el('td', { text: ago(secs(now, j.created)) + ' ago' }), el('td', { text: ago(secs(now, j.updated)) + ' ago' })));
    const out = (o) => el('span', { class: o === 'succeeded' ? 'ok' : (o === 'failed' || o === 'skipped') ? 'bad' : 'warn', text: o });
    const runs = d.runs.map((r) => el('tr', { 'data-run': r.app + '/' + r.id, 'data-node': r.node },
      el('td', { text: r.app }), el('td', { text: r.node }), el('td', { class: 'id', text: r.id }), el('td', { text: r.trigger }),
      el('td', { text: r.attempt + ' / ' + r.max_attempts }), el('td', {}, out(r.outcome)),
      el('td', { text: r.exit_code === null ? '-' : r.exit_code }), el('td', { text: r.duration_ms === null ? '-' : r.duration_ms < 1000 ? r.duration_ms + ' ms' : (r.duration_ms / 1000).toFixed(1) + ' s' }),
      el('td', { text: ago(secs(now, r.time)) + ' ago' })));
    $('view').replaceChildren(el('h2', { text: 'Jobs' }),
      el('p', { text: rows.length ? 'The newest ' + d.shown + ' async jobs at most, newest first.' : 'No async jobs (no gateway route is async, or none was queued lately).' }),
      table('jobs', ['Job', 'Service', 'Route', 'State', 'Attempts', 'Created', 'Updated'], rows),
      el('h3', { text: 'Scheduled runs' }),
      el('p', { class: d.runs_error ? 'bad' : '', text: d.runs_error || (runs.length ? 'The newest attempts of the job apps (runMode = "job"), newest first.' : 'No scheduled runs lately (or narund\'s [events] stream is off).') }),
      table('runs', ['App', 'Node', 'Run', 'Trigger', 'Attempt', 'Outcome', 'Exit', 'Duration', 'When'], runs));
  }

  document.addEventListener('DOMContentLoaded', () => {
    $('login').addEventListener('submit', login);
    $('logout').addEventListener('click', () => { sessionStorage.removeItem(KEY); role = null; showLogin('Signed out.'); });
    window.addEventListener('hashchange', route);
    start();
  });
})();
