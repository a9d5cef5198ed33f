// Vigil status page. Everything shown comes from the coordinator's REST API, asked with
// the token the engineer gives (kept in localStorage; `#token=…` in the address works
// too and is removed from it at once). The live feed reads `GET /api/v1/events`
// (Server-Sent Events) with fetch(), because EventSource cannot send the Authorization
// header, and resumes with Last-Event-ID after a lost connection. Data only ever reaches
// the DOM as text (textContent, attributes), never as markup. The charts are inline SVG
// cloned from a <template> in the page and drawn here from `GET /api/v1/metrics/query`.
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
  let chartHosts = []; // host names from the last host list, sorted
  let chartsAt = 0; // when the charts were last asked for (ms)
  let chartsBusy = false;

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
    chartHosts = hosts.map((h) => str(h.host));
    renderRunning(hosts);
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


  // ---- charts: the last hour of a few metrics per host ----

  const CHARTS_EVERY_MS = 15000;
  const CHART_HOSTS_MAX = 12; // hosts charted, first by name
  const CHART_WINDOW_MS = 3600000;
  const CHART_PAGE = 10000; // the API's largest page
  const CHART_PAGES_MAX = 4;
  const CHART_W = 240;
  const CHART_H = 56;
  const CHARTS = [
    { metric: 'cpu_percent', label: 'CPU', unit: ' %', max: 100 },
    { metric: 'memory_percent', label: 'memory', unit: ' %', max: 100 },
    { metric: 'disk_free_percent', label: 'disk free', unit: ' %', max: 100, byMount: true },
    { metric: 'load1', label: 'load', unit: '', max: null },
  ];

  // Every point of `metric` for `host` in [fromMs, toMs], oldest first: a full page is
  // followed by the next one, from the last time seen (its points are not taken twice).
  async function metricHistory(host, metric, fromMs, toMs) {
    const points = [];
    let from = fromMs;
    let seenAtFrom = new Set();
    for (let page = 0; page < CHART_PAGES_MAX; page++) {
      const query = new URLSearchParams({
        name: metric, host, from: String(from), to: String(toMs), limit: String(CHART_PAGE),
      });
      const body = await api('/api/v1/metrics/query?' + query.toString());
      const got = Array.isArray(body && body.points) ? body.points : [];
      let last = from;
      const seenAtLast = new Set();
      for (const p of got) {
        const t = parseMs(p.timestamp);
        const v = Number(p.value);
        if (t === null || !Number.isFinite(v)) continue;
        const key = JSON.stringify(p.tags || {});
        if (t === from && seenAtFrom.has(key)) continue;
        if (t > last) {
          last = t;
          seenAtLast.clear();
        }
        if (t === last) seenAtLast.add(key);
        points.push({ t, v, tags: p.tags || {} });
      }
      if (got.length < CHART_PAGE) break;
      from = last;
      seenAtFrom = seenAtLast;
    }
    return points;
  }

  // A tagged metric (disk per mount): the series of `/`, else of the fullest mount.
  function oneSeries(spec, points) {
    if (!spec.byMount) return { points, mount: null };
    const mounts = new Map();
    for (const p of points) {
      const mount = str(p.tags.mount);
      if (!mounts.has(mount)) mounts.set(mount, []);
      mounts.get(mount).push(p);
    }
    if (!mounts.size) return { points: [], mount: null };
    let mount = mounts.has('/') ? '/' : null;
    if (mount === null) {
      let lowest = Infinity;
      for (const [m, ps] of mounts) {
        const v = ps[ps.length - 1].v;
        if (v < lowest) {
          lowest = v;
          mount = m;
        }
      }
    }
    return { points: mounts.get(mount), mount };
  }

  function fmt(value) {
    return Math.abs(value) >= 100 ? value.toFixed(0) : value.toFixed(1);
  }

  // One chart: a polyline over the window, 0 at the bottom, `spec.max` (or a little above
  // the highest value) at the top.
  function chart(spec, series, fromMs, toMs) {
    const points = series.points;
    const svg = $('chart-template').content.firstElementChild.cloneNode(true);
    let hi = spec.max;
    if (hi === null) {
      hi = 1;
      for (const p of points) hi = Math.max(hi, p.v * 1.25);
    }
    // A history shorter than the window fills the chart's width.
    const start = points.length ? Math.max(fromMs, points[0].t) : fromMs;
    const span = Math.max(1, toMs - start);
    const coords = [];
    for (const p of points) {
      const x = ((p.t - start) / span) * CHART_W;
      const y = CHART_H - (Math.min(Math.max(p.v, 0), hi) / hi) * CHART_H;
      coords.push(x.toFixed(1) + ',' + y.toFixed(1));
    }
    svg.querySelector('polyline').setAttribute('points', coords.join(' '));
    const last = points[points.length - 1];
    const label = spec.label + (series.mount ? ' (' + series.mount + ')' : '');
    svg.setAttribute('aria-label', label + ', last hour');
    svg.dataset.metric = spec.metric;
    svg.dataset.count = String(points.length);
    if (series.mount !== null) svg.dataset.mount = series.mount;
    if (last) {
      svg.dataset.first = String(points[0].t);
      svg.dataset.last = String(last.t);
      svg.dataset.lastValue = String(last.v);
    }
    return el('figure', { cls: 'chart', data: { metric: spec.metric } },
      el('figcaption', null, label + ' ',
        el('strong', { text: last ? fmt(last.v) + spec.unit : '—', title: last ? new Date(last.t).toISOString() : '' }),
        spec.max === null && last ? el('span', { cls: 'sub', text: 'top ' + fmt(hi) }) : null,
        start > fromMs + 60000 ? el('span', { cls: 'sub', text: 'since ' + clock(new Date(start).toISOString()) }) : null),
      svg);
  }

  async function hostCharts(host, fromMs, toMs) {
    const all = await Promise.all(CHARTS.map((spec) => metricHistory(host, spec.metric, fromMs, toMs)));
    const box = el('div', { cls: 'host-charts', data: { host } }, el('strong', { cls: 'name', text: host }));
    CHARTS.forEach((spec, i) => box.append(chart(spec, oneSeries(spec, all[i]), fromMs, toMs)));
    return box;
  }

  async function refreshCharts() {
    if (chartsBusy) return;
    chartsBusy = true;
    chartsAt = Date.now();
    try {
      const toMs = Date.now();
      const fromMs = toMs - CHART_WINDOW_MS;
      const hosts = chartHosts.slice(0, CHART_HOSTS_MAX);
      const boxes = [];
      for (const host of hosts) boxes.push(await hostCharts(host, fromMs, toMs));
      const charts = $('charts');
      clear(charts);
      for (const box of boxes) charts.append(box);
      $('charts-empty').hidden = boxes.length > 0;
      $('charts-summary').textContent = 'CPU %, memory %, disk free % and load1' +
        (chartHosts.length > hosts.length ? ' · the first ' + hosts.length + ' of ' + chartHosts.length + ' hosts' : '') +
        ' · drawn ' + new Date(toMs).toLocaleTimeString([], { hour12: false });
    } catch (e) {
      if (!(e instanceof Refused)) $('charts-summary').textContent = 'charts update failed: ' + e.message;
    } finally {
      chartsBusy = false;
    }
  }

  function refreshChartsIfDue() {
    if (Date.now() - chartsAt >= CHARTS_EVERY_MS) refreshCharts();
  }

  // ---- disruption budgets ----

  function renderBudgets(body) {
    const budgets = Array.isArray(body && body.budgets) ? body.budgets.slice() : [];
    budgets.sort((a, b) => str(a.key).localeCompare(str(b.key)));
    const tbody = $('budgets').tBodies[0];
    clear(tbody);
    let waiting = 0;
    for (const b of budgets) {
      const held = Number(b.held) || 0;
      const max = Number(b.max) || 0;
      const deferred = Number(b.deferred) || 0;
      waiting += deferred;
      const leases = Array.isArray(b.leases) ? b.leases : [];
      const key = str(b.key);
      // Policy and group names hold no '/': what follows the first one is the label group.
      const slash = key.indexOf('/');
      const split = slash >= 0 ? key.slice(slash + 1) : '';
      const source = str(b.source);
      const from = source === 'bundle' ? 'bundle group ' + str(b.group)
        : source === 'bundle_group' ? 'group.yaml of ' + str(b.group) + ' (one pool)'
          : source === 'coordinator' ? 'coordinator policies'
            : 'agent-declared';
      tbody.append(el('tr', { data: { key, policy: str(b.policy), held, max, deferred, source } },
        el('td', null, el('strong', { text: str(b.policy) })),
        el('td', { cls: 'mono', text: split || 'whole fleet' }),
        el('td', { text: from }),
        el('td', { title: leases.map((l) => str(l.host) + ' (' + str(l.policy) + ', ' + str(l.action_id) + ')').join(', ') },
          badge(held + ' / ' + max, held >= max ? 'warn' : 'ok'),
          el('span', { cls: 'sub', text: 'max_concurrent ' + str(b.max_concurrent) })),
        el('td', null, deferred ? badge(String(deferred), 'warn') : el('span', { text: '0' }),
          el('span', { cls: 'sub', text: str(b.deferred_total, '0') + ' since start' })),
        el('td', { text: str(b.granted_last_hour, '0') }),
      ));
    }
    $('budgets-empty').hidden = budgets.length > 0;
    $('budgets-summary').textContent = budgets.length
      ? budgets.length + (budgets.length === 1 ? ' budget' : ' budgets') + (waiting ? ' · ' + waiting + ' deferred' : '')
      : '';
  }

  // ---- policies the agents run ----

  function sourceText(source) {
    const s = str(source);
    return s.startsWith('bundle:') ? 'bundle ' + s.slice('bundle:'.length) : s;
  }

  // One row per policy name and source, with the hosts that run it.
  function renderRunning(hosts) {
    const rows = new Map();
    let reporting = 0;
    let omitted = 0;
    for (const h of hosts) {
      const running = h.running_policies;
      if (!running || !Array.isArray(running.policies)) continue;
      reporting += 1;
      omitted += Math.max(0, (Number(running.total) || 0) - running.policies.length);
      for (const p of running.policies) {
        const key = str(p.name) + '\u0000' + str(p.source);
        if (!rows.has(key)) rows.set(key, { name: str(p.name), source: str(p.source), hosts: [] });
        rows.get(key).hosts.push(str(h.host));
      }
    }
    const sorted = Array.from(rows.values()).sort((a, b) => a.name.localeCompare(b.name) || a.source.localeCompare(b.source));
    const tbody = $('running').tBodies[0];
    clear(tbody);
    for (const r of sorted) {
      const cell = el('td');
      for (const host of r.hosts) cell.append(el('span', { cls: 'chip', text: host }));
      tbody.append(el('tr', { data: { policy: r.name, source: r.source } },
        el('td', null, el('strong', { text: r.name })),
        el('td', null, badge(sourceText(r.source), r.source === 'local' ? '' : 'info')),
        cell,
      ));
    }
    $('running-empty').hidden = sorted.length > 0;
    $('running-summary').textContent = reporting
      ? reporting + (reporting === 1 ? ' agent reports' : ' agents report') + (omitted ? ' · ' + omitted + ' not listed (over the cap)' : '')
      : '';
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
    await refresh('budgets', '/api/v1/budgets', renderBudgets);
    if (ok) refreshChartsIfDue();
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
    chartsAt = 0;
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
      for (const id of ['hosts', 'drift', 'policies', 'running', 'budgets']) clear($(id).tBodies[0]);
      clear($('charts'));
      chartHosts = [];
      clear($('feed'));
      feedItems.clear();
      lastEventId = null;
      $('feed-empty').hidden = false;
      for (const id of ['summary', 'hosts-updated', 'drift-summary', 'policies-summary', 'running-summary', 'budgets-summary']) {
        $(id).textContent = '';
      }
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
