// Vigil status page. Everything shown comes from the coordinator's REST API, asked with
// the token the engineer gives (kept in localStorage; `#token=…` in the address works
// too and is removed from it at once). The live feed reads `GET /api/v1/events`
// (Server-Sent Events) with fetch(), because EventSource cannot send the Authorization
// header, and resumes with Last-Event-ID after a lost connection. Data only ever reaches
// the DOM as text (textContent, attributes), never as markup.
'use strict';

(function () {
  const TOKEN_KEY = 'vigil.token';
  const HOSTS_EVERY_MS = 10000;
  const POLICIES_EVERY_MS = 30000;
  const STREAM_SILENCE_MS = 45000; // the server sends a keep-alive every 15 s
  const FEED_MAX = 300;
  const BACKFILL = 20;

  let token = null;
  let refused = false; // the token was refused: ask for another before asking again
  let lastEventId = null;
  let streamGeneration = 0;
  let streamAbort = null;
  let lastByteAt = 0;
  let refreshTimer = null;
  const feedItems = new Map(); // key → {li, sortMs}

  const $ = (id) => document.getElementById(id);

  // ---- DOM helpers: text only ----

  function el(tag, opts, ...children) {
    const node = document.createElement(tag);
    if (opts) {
      if (opts.cls) node.className = opts.cls;
      if (opts.text !== undefined && opts.text !== null) node.textContent = String(opts.text);
      if (opts.title) node.title = String(opts.title);
      if (opts.data) {
        for (const [k, v] of Object.entries(opts.data)) {
          if (v !== undefined && v !== null) node.dataset[k] = String(v);
        }
      }
    }
    for (const child of children) {
      if (child === null || child === undefined || child === false) continue;
      node.append(typeof child === 'string' ? document.createTextNode(child) : child);
    }
    return node;
  }

  function clear(node) {
    while (node.firstChild) node.removeChild(node.firstChild);
  }

  function badge(text, tone, title) {
    return el('span', { cls: 'badge ' + (tone || ''), text, title });
  }

  function str(value, fallback) {
    return value === undefined || value === null || value === '' ? (fallback || '') : String(value);
  }

  // ---- time ----

  function parseMs(iso) {
    const ms = Date.parse(iso);
    return Number.isFinite(ms) ? ms : null;
  }

  function ago(iso) {
    const ms = parseMs(iso);
    if (ms === null) return '—';
    const s = Math.max(0, Math.round((Date.now() - ms) / 1000));
    if (s < 60) return s + ' s ago';
    if (s < 3600) return Math.floor(s / 60) + ' min ago';
    if (s < 86400) return Math.floor(s / 3600) + ' h ago';
    return Math.floor(s / 86400) + ' d ago';
  }

  function agoSpan(iso) {
    return el('span', { cls: 'ago', text: ago(iso), title: str(iso), data: { at: str(iso) } });
  }

  function clock(iso) {
    const ms = parseMs(iso);
    if (ms === null) return '—';
    return new Date(ms).toLocaleTimeString([], { hour12: false });
  }

  function tickAgo() {
    for (const span of document.querySelectorAll('.ago')) {
      span.textContent = ago(span.dataset.at);
    }
  }

  // ---- token ----

  function loadToken() {
    try {
      return localStorage.getItem(TOKEN_KEY);
    } catch (e) {
      return null;
    }
  }

  function saveToken(value) {
    token = value || null;
    try {
      if (token) localStorage.setItem(TOKEN_KEY, token);
      else localStorage.removeItem(TOKEN_KEY);
    } catch (e) {
      // Storage disabled: the token lives as long as the page.
    }
    $('token-input').value = '';
    $('token-input').placeholder = token ? 'token set (stored in this browser)' : 'vigil_…';
  }

  // `#token=…` in the address: take it, then remove it from the address bar (and history).
  function tokenFromFragment() {
    const hash = location.hash.replace(/^#/, '');
    if (!hash) return;
    const params = new URLSearchParams(hash);
    if (!params.has('token')) return;
    const value = (params.get('token') || '').trim();
    params.delete('token');
    const rest = params.toString();
    history.replaceState(null, '', location.pathname + location.search + (rest ? '#' + rest : ''));
    if (value) saveToken(value);
  }

  function notice(text) {
    const p = $('notice');
    p.textContent = text || '';
    p.hidden = !text;
  }

  class Refused extends Error {}

  // Stops polling with a token the coordinator refuses (failed attempts are rate-limited).
  function tokenRefused(status, message) {
    refused = true;
    notice('The token was refused (' + status + '): ' + message + '. Enter another one.');
  }

  async function errorText(response) {
    try {
      const body = await response.json();
      return str(body && body.error, response.statusText);
    } catch (e) {
      return response.statusText;
    }
  }

  async function api(path) {
    if (!token || refused) throw new Refused('no usable token');
    const response = await fetch(path, {
      headers: { Authorization: 'Bearer ' + token, Accept: 'application/json' },
      cache: 'no-store',
    });
    if (response.status === 401 || response.status === 403) {
      const message = await errorText(response);
      tokenRefused(response.status, message);
      throw new Refused(message);
    }
    if (!response.ok) {
      throw new Error(path + ': ' + response.status + ' ' + (await errorText(response)));
    }
    return response.json();
  }

  // ---- hosts ----

  const STATE_TONE = { online: 'ok', silent: 'bad', stale: 'warn', offline: 'bad' };

  function labelChips(labels) {
    const cell = el('td');
    const entries = Object.entries(labels || {}).sort(([a], [b]) => a.localeCompare(b));
    if (!entries.length) cell.append(el('span', { cls: 'sub', text: 'none' }));
    for (const [k, v] of entries) cell.append(el('span', { cls: 'chip', text: k + '=' + str(v) }));
    return cell;
  }

  function renderHosts(body) {
    const hosts = Array.isArray(body && body.hosts) ? body.hosts.slice() : [];
    hosts.sort((a, b) => str(a.host).localeCompare(str(b.host)));
    const tbody = $('hosts').tBodies[0];
    clear(tbody);
    const counts = { online: 0, silent: 0, stale: 0, offline: 0 };
    for (const h of hosts) {
      const state = str(h.state, h.online ? 'online' : 'offline');
      counts[state] = (counts[state] || 0) + 1;
      const name = el('td', null, el('strong', { text: str(h.host) }));
      if (h.detail) name.append(el('span', { cls: 'sub', text: str(h.detail) }));
      const stateCell = el('td', null, badge(state, STATE_TONE[state] || ''));
      if (h.remediation_paused) {
        stateCell.append(' ', badge('remediation paused', 'warn', 'kill switch on'));
      }
      const bundles = el('td');
      for (const b of Array.isArray(h.bundles) ? h.bundles : []) {
        bundles.append(el('span', {
          cls: 'chip',
          text: str(b.group) + ' v' + str(b.version),
          title: 'hash ' + str(b.hash),
        }));
      }
      if (!bundles.childNodes.length) bundles.append(el('span', { cls: 'sub', text: 'none' }));
      if (h.bundle_error) bundles.append(el('span', { cls: 'err', text: str(h.bundle_error) }));
      const agent = el('td', { text: str(h.agent_version, '—') });
      if (h.source && h.source !== 'mqtt') agent.append(el('span', { cls: 'sub', text: 'via ' + h.source }));
      tbody.append(el('tr', { data: { host: str(h.host), state } },
        name,
        stateCell,
        labelChips(h.labels),
        bundles,
        el('td', null, agoSpan(h.last_seen)),
        agent,
      ));
    }
    $('hosts-empty').hidden = hosts.length > 0;
    const parts = [hosts.length + (hosts.length === 1 ? ' host' : ' hosts'), counts.online + ' online'];
    if (counts.silent) parts.push(counts.silent + ' silent');
    if (counts.stale) parts.push(counts.stale + ' stale');
    if (counts.offline) parts.push(counts.offline + ' offline');
    $('summary').textContent = parts.join(' · ');
    $('summary').dataset.tone = counts.silent || counts.stale || counts.offline ? 'warn' : hosts.length ? 'ok' : '';
  }

  // ---- drift ----

  function renderDrift(body) {
    const hosts = Array.isArray(body && body.hosts) ? body.hosts.slice() : [];
    hosts.sort((a, b) => str(a.host).localeCompare(str(b.host)));
    const tbody = $('drift').tBodies[0];
    clear(tbody);
    let rows = 0;
    let drifting = 0;
    for (const h of hosts) {
      const groups = Array.isArray(h.groups) ? h.groups : [];
      const checks = Array.isArray(h.failing_checks) ? h.failing_checks : [];
      for (const g of groups) {
        rows += 1;
        if (!g.in_sync) drifting += 1;
        tbody.append(el('tr', { data: { host: str(h.host), group: str(g.group) } },
          el('td', { text: str(h.host) }),
          el('td', { text: str(g.group) }),
          el('td', { text: g.desired_version === null || g.desired_version === undefined ? 'none' : 'v' + g.desired_version }),
          el('td', { text: g.applied_version === null || g.applied_version === undefined ? 'not applied' : 'v' + g.applied_version }),
          el('td', null, g.in_sync ? badge('in sync', 'ok') : badge('drift', 'bad')),
        ));
      }
      if (h.bundle_error || checks.length) {
        rows += 1;
        const cell = el('td', { cls: 'err' });
        cell.colSpan = 4;
        if (h.bundle_error) cell.append(el('span', { text: 'bundle refused: ' + str(h.bundle_error) }));
        for (const c of checks) {
          cell.append(el('span', {
            text: 'failing: ' + str(c.policy) + ' on ' + str(c.target) + ' (' + str(c.kind) + ') ' + str(c.summary),
          }));
        }
        tbody.append(el('tr', null, el('td', { text: str(h.host) }), cell));
      }
    }
    $('drift-empty').hidden = rows > 0;
    $('drift-summary').textContent = rows ? (drifting ? drifting + ' group(s) drifting' : 'all in sync') : '';
  }

  // ---- policies ----

  const SEVERITY_TONE = { critical: 'bad', warning: 'warn', info: 'info' };

  function renderPolicies(body) {
    const policies = Object.values((body && body.policies) || {});
    policies.sort((a, b) => str(a.name).localeCompare(str(b.name)));
    const tbody = $('policies').tBodies[0];
    clear(tbody);
    for (const p of policies) {
      const condition = p.condition && p.condition.type ? String(p.condition.type) : '';
      tbody.append(el('tr', { data: { policy: str(p.name) } },
        el('td', { title: str(p.description) }, el('strong', { text: str(p.name) }),
          condition ? el('span', { cls: 'sub', text: condition }) : null),
        el('td', null, badge(str(p.severity, '—'), SEVERITY_TONE[p.severity] || '')),
        el('td', { cls: 'mono', text: str(p.target, '*') }),
        el('td', null, p.enabled === false ? badge('disabled', '') : badge('enabled', 'ok')),
        el('td', { text: p.auto_remediate ? 'yes' : 'no' }),
        el('td', { text: str(p.source), title: str(p.file) }),
      ));
    }
    $('policies-empty').hidden = policies.length > 0;
    $('policies-summary').textContent = body && body.total !== undefined
      ? str(body.enabled_count, '0') + ' of ' + str(body.total) + ' enabled' : '';
  }

  // ---- refresh ----

  async function refresh(what, path, render) {
    try {
      render(await api(path));
      return true;
    } catch (e) {
      if (!(e instanceof Refused)) {
        $('hosts-updated').textContent = what + ' update failed: ' + e.message;
      }
      return false;
    }
  }

  async function refreshHosts() {
    const ok = await refresh('hosts', '/api/v1/hosts', renderHosts);
    if (ok) {
      notice('');
      $('hosts-updated').textContent = 'updated ' + new Date().toLocaleTimeString([], { hour12: false });
    }
    await refresh('drift', '/api/v1/drift', renderDrift);
  }

  function refreshPolicies() {
    return refresh('policies', '/api/v1/policies', renderPolicies);
  }

  // A host or bundle event: refresh soon (several in a row make one refresh).
  function refreshHostsSoon() {
    if (refreshTimer) return;
    refreshTimer = setTimeout(() => {
      refreshTimer = null;
      refreshHosts();
    }, 300);
  }

  // ---- the live feed ----

  const ACTION_TONE = {
    completed: 'ok', resolved: 'ok', running: 'info', pending: '',
    failed: 'bad', dead_letter: 'bad', not_resolved: 'bad', cancelled: 'warn',
  };
  const VIOLATION_TONE = { fired: 'bad', act: 'bad', escalated: 'bad', deferred: 'warn', verified: 'ok', resolved: 'ok' };

  function place(key, li, sortMs, fresh) {
    const old = feedItems.get(key);
    if (old) old.li.remove();
    feedItems.set(key, { li, sortMs });
    li.dataset.key = key;
    if (fresh) li.classList.add('fresh');
    // Newest first: before the first item that is older.
    const feed = $('feed');
    let before = null;
    for (const other of feed.children) {
      const item = feedItems.get(other.dataset.key);
      if (item && item.sortMs <= sortMs) {
        before = other;
        break;
      }
    }
    feed.insertBefore(li, before);
    while (feed.children.length > FEED_MAX) {
      const last = feed.lastElementChild;
      feedItems.delete(last.dataset.key);
      last.remove();
    }
    $('feed-empty').hidden = true;
  }

  // One row per action, showing its latest state and the states it went through.
  function showAction(a, host, at, seq, earlier) {
    const key = 'action:' + str(a.id);
    const previous = feedItems.get(key);
    if (earlier && previous) return; // a live update already shows it
    const trail = previous ? previous.trail || [] : [];
    const state = str(a.state);
    if (Array.isArray(a.transitions)) {
      for (const t of a.transitions) trail.push(str(t.state));
    } else if (state && trail[trail.length - 1] !== state) {
      trail.push(state);
    }
    const what = el('div', { cls: 'what' },
      el('strong', { text: str(a.action) + ' ' + str(a.target) }),
      ' ',
      badge(state, ACTION_TONE[state] || ''),
      a.dry_run ? badge('dry run', 'info') : null,
      a.max_attempts > 1 ? el('span', { cls: 'sub', text: 'attempt ' + a.attempt + ' of ' + a.max_attempts }) : null,
      a.detail ? el('span', { cls: 'sub', text: str(a.detail) }) : null,
      el('span', { cls: 'trail', text: trail.join(' → ') + ' · ' + (a.policy ? 'policy ' + a.policy : 'manual') + ' · ' }),
      el('span', { cls: 'trail mono', text: str(a.id) }),
    );
    const li = el('li', {
      cls: earlier ? 'earlier' : '',
      data: { kind: 'action', seq, actionId: str(a.id), state, host: str(host) },
    },
    el('span', { cls: 'when', text: clock(at), title: str(at) }),
    el('span', null, badge('action', 'info'), el('span', { cls: 'sub', text: str(host, '—') })),
    what);
    place(key, li, parseMs(at) || Date.now(), !earlier);
    feedItems.get(key).trail = trail;
  }

  function showViolation(v, host, at, seq, earlier) {
    const key = 'violation:' + str(v.id, 'seq' + seq);
    if (feedItems.has(key)) return;
    const kind = str(v.kind);
    const what = el('div', { cls: 'what' },
      el('strong', { text: str(v.policy) + ' on ' + str(v.target) }),
      ' ',
      badge(kind, VIOLATION_TONE[kind] || ''),
      v.severity ? badge(str(v.severity), SEVERITY_TONE[v.severity] || '') : null,
      v.summary ? el('span', { cls: 'sub', text: str(v.summary) }) : null,
      v.action ? el('span', { cls: 'trail', text: 'action: ' + str(v.action) + (v.dry_run ? ' (dry run)' : '') }) : null,
      v.detail ? el('span', { cls: 'sub', text: str(v.detail) }) : null,
    );
    place(key, el('li', { cls: earlier ? 'earlier' : '', data: { kind: 'violation', seq, host: str(host) } },
      el('span', { cls: 'when', text: clock(at), title: str(at) }),
      el('span', null, badge('violation', VIOLATION_TONE[kind] || 'warn'), el('span', { cls: 'sub', text: str(host, '—') })),
      what), parseMs(at) || Date.now(), !earlier);
  }

  function showOther(entry) {
    const d = entry.data || {};
    let text;
    let tone = '';
    if (entry.kind === 'host') {
      const why = d.reason === 'connection_lost' ? ', connection lost' : '';
      text = 'agent ' + str(d.state) + why + (d.agent_version ? ' (' + d.agent_version + ')' : '');
      tone = d.state === 'online' ? 'ok' : 'bad';
    } else if (entry.kind === 'bundle') {
      text = 'applied bundle ' + str(d.group) + ' v' + str(d.bundle_version);
    } else if (entry.kind === 'drift') {
      const version = (v) => (v === null || v === undefined ? 'none' : 'v' + v);
      text = 'bundle ' + str(d.group) + (d.in_sync ? ' back in sync' : ' drifting') +
        ' (published ' + version(d.desired_version) + ', applied ' + version(d.applied_version) + ')';
      tone = d.in_sync ? 'ok' : 'bad';
    } else {
      text = str(entry.kind) + ' event';
    }
    place('seq:' + entry.seq, el('li', { data: { kind: str(entry.kind), seq: entry.seq, host: str(entry.host) } },
      el('span', { cls: 'when', text: clock(entry.timestamp), title: str(entry.timestamp) }),
      el('span', null, badge(str(entry.kind), tone), el('span', { cls: 'sub', text: str(entry.host) })),
      el('div', { cls: 'what', text })), parseMs(entry.timestamp) || Date.now(), true);
  }

  function onEvent(id, type, data) {
    let entry;
    try {
      entry = JSON.parse(data);
    } catch (e) {
      return;
    }
    if (!entry || typeof entry !== 'object') return;
    const kind = str(entry.kind, type);
    const d = entry.data || {};
    if (kind === 'action') showAction(d, entry.host, entry.timestamp, id, false);
    else if (kind === 'violation') showViolation(d, entry.host, entry.timestamp, id, false);
    else if (kind === 'host' || kind === 'bundle' || kind === 'drift') {
      showOther(entry);
      refreshHostsSoon(); // the host table and drift
    } else {
      showOther(entry);
    }
  }

  // What happened shortly before the page opened, dimmed, below what happens live.
  async function backfill() {
    try {
      const [actions, violations] = await Promise.all([
        api('/api/v1/actions?limit=' + BACKFILL),
        api('/api/v1/violations?limit=' + BACKFILL),
      ]);
      for (const a of (actions && actions.actions) || []) {
        const transitions = Array.isArray(a.transitions) ? a.transitions : [];
        const latest = transitions[transitions.length - 1];
        const at = (latest && latest.at) || a.finished_at || a.started_at || a.created_at;
        showAction({ ...a, state: a.status, detail: a.details, attempt: a.attempts }, a.host, at, '', true);
      }
      for (const v of (violations && violations.events) || []) {
        showViolation(v, v.host, v.timestamp, '', true);
      }
    } catch (e) {
      // The live feed works without it.
    }
  }

  function setStream(state, text) {
    const pill = $('stream-status');
    pill.dataset.state = state;
    pill.textContent = 'feed: ' + text;
  }

  // Reads Server-Sent Events from `body` until it ends.
  async function readEvents(body, generation) {
    const reader = body.getReader();
    const decoder = new TextDecoder();
    let buffer = '';
    let id = null;
    let type = '';
    let data = [];
    try {
      for (;;) {
        const { value, done } = await reader.read();
        if (done || generation !== streamGeneration) return;
        lastByteAt = Date.now();
        buffer += decoder.decode(value, { stream: true });
        const lines = buffer.split('\n');
        buffer = lines.pop();
        for (let line of lines) {
          if (line.endsWith('\r')) line = line.slice(0, -1);
          if (line === '') {
            if (id !== null) {
              lastEventId = id;
              $('stream-status').dataset.lastEventId = id;
            }
            if (data.length) onEvent(id === null ? lastEventId : id, type || 'message', data.join('\n'));
            id = null;
            type = '';
            data = [];
            continue;
          }
          if (line.startsWith(':')) continue; // keep-alive
          const colon = line.indexOf(':');
          const field = colon < 0 ? line : line.slice(0, colon);
          let value = colon < 0 ? '' : line.slice(colon + 1);
          if (value.startsWith(' ')) value = value.slice(1);
          if (field === 'id') id = value;
          else if (field === 'event') type = value;
          else if (field === 'data') data.push(value);
        }
      }
    } finally {
      reader.cancel().catch(() => {});
    }
  }

  const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

  // Keeps the stream open: connects, reads, and reconnects with Last-Event-ID (backing
  // off up to 15 s) until the token is refused or replaced.
  async function runStream() {
    const generation = ++streamGeneration;
    if (streamAbort) streamAbort.abort();
    let retryMs = 1000;
    while (generation === streamGeneration) {
      if (!token) {
        setStream('off', 'no token');
        return;
      }
      const controller = new AbortController();
      streamAbort = controller;
      const headers = { Authorization: 'Bearer ' + token, Accept: 'text/event-stream' };
      if (lastEventId !== null) headers['Last-Event-ID'] = lastEventId;
      setStream('connecting', lastEventId === null ? 'connecting…' : 'resuming after ' + lastEventId + '…');
      try {
        const response = await fetch('/api/v1/events', { headers, signal: controller.signal, cache: 'no-store' });
        if (response.status === 401 || response.status === 403) {
          tokenRefused(response.status, await errorText(response));
          setStream('off', 'token refused');
          return;
        }
        if (!response.ok || !response.body) throw new Error('HTTP ' + response.status);
        lastByteAt = Date.now();
        retryMs = 1000;
        setStream('live', 'live');
        await readEvents(response.body, generation);
      } catch (e) {
        // Network error, abort or a server gone: reconnect below.
      }
      if (generation !== streamGeneration) return;
      setStream('reconnecting', 'reconnecting in ' + Math.round(retryMs / 1000) + ' s');
      await sleep(retryMs);
      retryMs = Math.min(retryMs * 2, 15000);
    }
  }

  // A connection that went silent (no keep-alive) is dead: drop it, so it reconnects.
  function watchStream() {
    const pill = $('stream-status');
    if (pill.dataset.state === 'live' && Date.now() - lastByteAt > STREAM_SILENCE_MS && streamAbort) {
      streamAbort.abort();
    }
  }

  // ---- start ----

  function startAll() {
    refused = false;
    notice('');
    if (!token) {
      notice('Enter an API token (any role; viewer is enough) to see the fleet.');
      setStream('off', 'no token');
      $('token-input').focus();
      return;
    }
    runStream();
    refreshHosts();
    refreshPolicies();
    backfill();
  }

  async function showVersion() {
    try {
      const response = await fetch('/health', { cache: 'no-store' });
      const body = await response.json();
      $('version').textContent = 'coordinator ' + str(body && body.version);
    } catch (e) {
      $('version').textContent = '';
    }
  }

  function init() {
    token = loadToken();
    tokenFromFragment();
    saveToken(token);
    $('token-form').addEventListener('submit', (event) => {
      event.preventDefault();
      const value = $('token-input').value.trim();
      if (!value) return;
      saveToken(value);
      startAll();
    });
    $('token-forget').addEventListener('click', () => {
      saveToken(null);
      streamGeneration += 1;
      if (streamAbort) streamAbort.abort();
      // What the forgotten token showed goes too.
      for (const id of ['hosts', 'drift', 'policies']) clear($(id).tBodies[0]);
      clear($('feed'));
      feedItems.clear();
      lastEventId = null;
      $('feed-empty').hidden = false;
      for (const id of ['summary', 'hosts-updated', 'drift-summary', 'policies-summary']) $(id).textContent = '';
      startAll();
    });
    window.addEventListener('hashchange', () => {
      const before = token;
      tokenFromFragment();
      if (token !== before) startAll();
    });
    setInterval(() => { if (token && !refused) refreshHosts(); }, HOSTS_EVERY_MS);
    setInterval(() => { if (token && !refused) refreshPolicies(); }, POLICIES_EVERY_MS);
    setInterval(tickAgo, 1000);
    setInterval(watchStream, 5000);
    showVersion();
    startAll();
  }

  init();
})();
