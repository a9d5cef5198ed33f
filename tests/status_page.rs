//! The coordinator's status page, with real parts and a real browser: a real
//! coordinator and agent, and Debian's headless Chromium driven over the Chrome DevTools
//! Protocol (a small Python driver using `python3-websocket`; `.ci/run` installs both).
//! The page is opened with `#token=…`, shows the agent's host online, its last hour of
//! CPU, memory, disk and load as SVG charts (the very points `GET /api/v1/metrics/query`
//! serves), a second agent's disruption budget lease and the policies each agent runs
//! (local and from a bundle), and — without a reload — a manual action created over REST
//! afterwards in its live feed, which it reads from `GET /api/v1/events` with `fetch()`.
//! A screenshot of the whole page is saved in the test's temporary target directory
//! (its path is printed).

use std::io::{BufRead, BufReader, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use vigil_tests::{
    bin, get_json, metric, post_raw, start_agent, start_agent_with, start_coordinator, wait_for,
    Proc, TestDir,
};

const HOST: &str = "status-web-01";
/// The second agent: it runs a local policy whose remediation holds a disruption budget's
/// only lease, and the bundle of group `web`.
const BUDGET_HOST: &str = "status-budget-01";
/// Points of each metric the charts must draw at least.
const MIN_POINTS: u64 = 10;
/// The charted metrics.
const CHARTED: [&str; 4] = [
    "cpu_percent",
    "memory_percent",
    "disk_free_percent",
    "load1",
];
const WAIT: Duration = Duration::from_secs(60);

/// The CDP driver: reads one JSON command a line on stdin, answers one JSON line on
/// stdout (`{"ok":true,…}` or `{"ok":false,"error":…}`).
const DRIVER: &str = r#"
import base64, json, os, sys, time, urllib.request
import websocket

profile = sys.argv[1]
deadline = time.time() + 60
port, target, last = None, None, None
while time.time() < deadline and target is None:
    try:
        if port is None:
            with open(os.path.join(profile, "DevToolsActivePort")) as f:
                port = int(f.readline().strip())
        with urllib.request.urlopen("http://127.0.0.1:%d/json/list" % port, timeout=5) as r:
            pages = [t for t in json.load(r) if t.get("type") == "page" and t.get("webSocketDebuggerUrl")]
        if pages:
            target = pages[0]
    except Exception as e:
        last = e
    if target is None:
        time.sleep(0.2)
if target is None:
    print(json.dumps({"ok": False, "error": "no DevTools page target: %r" % (last,)}), flush=True)
    sys.exit(1)
ws = websocket.create_connection(target["webSocketDebuggerUrl"], timeout=30, suppress_origin=True)
console = []
next_id = 0

def call(method, params=None):
    global next_id
    next_id += 1
    ws.send(json.dumps({"id": next_id, "method": method, "params": params or {}}))
    while True:
        msg = json.loads(ws.recv())
        if msg.get("id") == next_id:
            if "error" in msg:
                raise RuntimeError("%s: %s" % (method, msg["error"]))
            return msg.get("result", {})
        m, p = msg.get("method"), msg.get("params", {})
        if m == "Runtime.consoleAPICalled":
            console.append(p.get("type", "") + ": " + " ".join(str(a.get("value", a.get("description", ""))) for a in p.get("args", [])))
        elif m == "Runtime.exceptionThrown":
            d = p.get("exceptionDetails", {})
            console.append("exception: " + str(d.get("exception", {}).get("description", d.get("text"))))
        elif m == "Log.entryAdded":
            e = p.get("entry", {})
            console.append("%s %s: %s %s" % (e.get("source"), e.get("level"), e.get("text"), e.get("url", "")))

def evaluate(expr):
    result = call("Runtime.evaluate", {"expression": expr, "returnByValue": True, "awaitPromise": True})
    if "exceptionDetails" in result:
        raise RuntimeError("evaluate: %s" % result["exceptionDetails"])
    return result.get("result", {}).get("value")

call("Runtime.enable")
call("Log.enable")
call("Page.enable")
print(json.dumps({"ok": True, "ready": True}), flush=True)
for line in sys.stdin:
    try:
        cmd = json.loads(line)
        if cmd["cmd"] == "navigate":
            call("Page.navigate", {"url": cmd["url"]})
            end = time.time() + 30
            while evaluate("document.readyState") != "complete":
                if time.time() > end:
                    raise RuntimeError("the page did not finish loading")
                time.sleep(0.1)
            answer = {}
        elif cmd["cmd"] == "eval":
            answer = {"value": evaluate(cmd["expr"])}
        elif cmd["cmd"] == "screenshot":
            size = call("Page.getLayoutMetrics").get("cssContentSize", {})
            params = {"format": "png"}
            if size.get("width") and size.get("height"):
                params["captureBeyondViewport"] = True
                params["clip"] = {"x": 0, "y": 0, "width": size["width"], "height": size["height"], "scale": 1}
            data = base64.b64decode(call("Page.captureScreenshot", params)["data"])
            with open(cmd["path"], "wb") as f:
                f.write(data)
            answer = {"bytes": len(data)}
        elif cmd["cmd"] == "console":
            answer = {"messages": console}
        else:
            raise RuntimeError("unknown command %r" % cmd["cmd"])
        answer["ok"] = True
    except Exception as e:
        answer = {"ok": False, "error": str(e)}
    print(json.dumps(answer), flush=True)
"#;

/// Headless Chromium in its own process group (it starts helpers), killed with them on
/// drop.
struct Chromium {
    child: Child,
    profile: PathBuf,
}

impl Chromium {
    fn start(dir: &Path) -> Chromium {
        let program = ["/usr/bin/chromium", "/usr/bin/chromium-browser"]
            .into_iter()
            .map(PathBuf::from)
            .find(|p| p.exists())
            .expect("chromium is not installed: apt-get install chromium (see .ci/run)");
        let profile = dir.join("chromium-profile");
        std::fs::create_dir_all(&profile).expect("chromium profile dir");
        let log = std::fs::File::create(dir.join("chromium.log")).expect("chromium log");
        let child = Command::new(program)
            .args([
                "--headless=new",
                // In a container, as root: no sandbox, no GPU, no small /dev/shm.
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--no-first-run",
                "--no-default-browser-check",
                "--disable-extensions",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--password-store=basic",
                "--use-mock-keychain",
                "--window-size=1366,900",
                "--remote-debugging-address=127.0.0.1",
                "--remote-debugging-port=0",
            ])
            .arg(format!("--user-data-dir={}", profile.display()))
            .arg("about:blank")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log handle"))
            .stderr(log)
            .process_group(0)
            .spawn()
            .expect("chromium starts");
        Chromium { child, profile }
    }
}

impl Drop for Chromium {
    fn drop(&mut self) {
        if let Ok(pid) = i32::try_from(self.child.id()) {
            // SAFETY: kill(2) on the process group this test started.
            unsafe {
                libc::kill(-pid, libc::SIGKILL);
            }
        }
        let _ = self.child.wait();
    }
}

/// The Python CDP driver attached to the browser's page.
struct Driver {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl Driver {
    fn start(dir: &Path, browser: &Chromium) -> Driver {
        let script = dir.join("cdp_driver.py");
        std::fs::write(&script, DRIVER).expect("write the driver");
        let log = std::fs::File::create(dir.join("cdp-driver.log")).expect("driver log");
        let mut child = Command::new("/usr/bin/python3")
            .arg(&script)
            .arg(&browser.profile)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .expect("/usr/bin/python3 runs");
        let stdin = child.stdin.take().expect("driver stdin");
        let stdout = BufReader::new(child.stdout.take().expect("driver stdout"));
        let mut driver = Driver {
            child,
            stdin,
            stdout,
        };
        let ready = driver.read();
        assert_eq!(ready["ready"], true, "CDP driver: {ready}");
        driver
    }

    fn read(&mut self) -> Value {
        let mut line = String::new();
        let n = self
            .stdout
            .read_line(&mut line)
            .expect("read from the driver");
        assert!(n > 0, "the CDP driver exited (see cdp-driver.log)");
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("driver said `{line}`: {e}"))
    }

    fn send(&mut self, command: Value) -> Value {
        writeln!(self.stdin, "{command}").expect("write to the driver");
        self.stdin.flush().expect("flush the driver");
        let answer = self.read();
        assert_eq!(answer["ok"], true, "{command}: {answer}");
        answer
    }

    fn navigate(&mut self, url: &str) {
        self.send(json!({"cmd": "navigate", "url": url}));
    }

    fn eval(&mut self, expr: &str) -> Value {
        self.send(json!({"cmd": "eval", "expr": expr}))["value"].take()
    }

    fn console(&mut self) -> Value {
        self.send(json!({"cmd": "console"}))["messages"].take()
    }

    /// Evaluates `expr` every 200 ms until `done` accepts its value; panics after `WAIT`
    /// with the page's text and console.
    fn wait_until(&mut self, what: &str, expr: &str, done: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + WAIT;
        loop {
            let value = self.eval(expr);
            if done(&value) {
                return value;
            }
            if Instant::now() > deadline {
                let text = self.eval("document.body.innerText");
                let console = self.console();
                panic!(
                    "timed out after {WAIT:?} waiting for {what}; last value {value}\n\
                     page text:\n{}\nconsole: {console:#}",
                    text.as_str().unwrap_or_default()
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The host table's rows: `[{host, state, text}]`.
const HOST_ROWS: &str = r#"JSON.stringify(Array.from(document.querySelectorAll('#hosts tbody tr'))
    .map(r => ({host: r.dataset.host, state: r.dataset.state, text: r.innerText})))"#;

/// The charts of `HOST`: `[{metric, count, points, first, last, lastValue, mount}]`
/// (`points`: the polyline's points as the browser parsed them).
const CHART_STATE: &str = r#"JSON.stringify(Array.from(document.querySelectorAll(
    '#charts .host-charts[data-host="status-web-01"] svg[data-metric]')).map(svg => ({
      metric: svg.dataset.metric, count: Number(svg.dataset.count),
      points: svg.querySelector('polyline').points.numberOfItems,
      first: svg.dataset.first ?? null, last: svg.dataset.last ?? null,
      lastValue: svg.dataset.lastValue === undefined ? null : Number(svg.dataset.lastValue),
      mount: svg.dataset.mount ?? null})))"#;

/// The budget rows: `[{key, policy, held, max, deferred, text}]`.
const BUDGET_ROWS: &str = r#"JSON.stringify(Array.from(document.querySelectorAll('#budgets tbody tr'))
    .map(r => ({key: r.dataset.key, policy: r.dataset.policy, held: Number(r.dataset.held),
      max: Number(r.dataset.max), deferred: Number(r.dataset.deferred), text: r.innerText})))"#;

/// The rows of policies agents run: `[{policy, source, text}]`.
const RUNNING_ROWS: &str = r#"JSON.stringify(Array.from(document.querySelectorAll('#running tbody tr'))
    .map(r => ({policy: r.dataset.policy, source: r.dataset.source, text: r.innerText})))"#;

/// The points of `metric` for `host` the API serves between `from` and `to` (epoch ms,
/// inclusive), of the mount `mount` when given.
async fn api_points(
    http: &str,
    metric: &str,
    from: &str,
    to: &str,
    mount: Option<&str>,
) -> Vec<Value> {
    let (status, body) = get_json(&format!(
        "{http}/api/v1/metrics/query?name={metric}&host={HOST}&from={from}&to={to}&limit=10000"
    ))
    .await;
    assert_eq!(status, 200, "{body}");
    body["points"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .filter(|p| mount.is_none_or(|m| p["tags"]["mount"] == m))
        .collect()
}

/// Writes the budget agent's policy directory, command allowlist, textfile (its `app` at
/// 99 % CPU, so the policy fires at once) and the coordinator's bundle directory.
fn budget_agent_files(dir: &Path) -> (PathBuf, PathBuf, PathBuf, PathBuf) {
    let policies = dir.join("budget-policies");
    let textfiles = dir.join("budget-textfiles");
    let bundles = dir.join("bundles");
    for d in [&policies, &textfiles, &bundles.join("web")] {
        std::fs::create_dir_all(d).expect("mkdir");
    }
    std::fs::write(
        policies.join("hold.yaml"),
        "policies:\n  - name: hold\n    target: app\n    condition: cpu_percent > 90\n    \
         auto_remediate: true\n    verify: 5m\n    action: exec\n    \
         params: {command: long, timeout: 150s}\n    budget: {max_concurrent: 1}\n",
    )
    .expect("write policies");
    std::fs::write(
        textfiles.join("app.prom"),
        "cpu_percent{target=\"app\"} 99\n",
    )
    .expect("write textfile");
    let config = dir.join("budget-agent.toml");
    std::fs::write(
        &config,
        "[allow.commands]\nlong = [\"/bin/sleep\", \"120\"]\n",
    )
    .expect("write config");
    std::fs::write(bundles.join("web/group.yaml"), "selector: {role: web}\n").expect("group");
    std::fs::write(
        bundles.join("web/load.yaml"),
        "policies:\n  - name: bundled-load\n    \
         condition: {type: metric_exceeds, metric: load15, threshold: 100000}\n",
    )
    .expect("bundle policy");
    (policies, textfiles, config, bundles)
}

fn parse(value: &Value) -> Value {
    value
        .as_str()
        .and_then(|text| serde_json::from_str(text).ok())
        .unwrap_or(Value::Null)
}

#[tokio::test(flavor = "multi_thread")]
async fn the_status_page_shows_hosts_and_a_live_action_without_a_reload() {
    let dir = TestDir::new();
    let (budget_policies, textfiles, budget_config, bundles) = budget_agent_files(dir.path());
    let c = start_coordinator(
        &dir,
        None,
        &["--bundles", bundles.to_str().expect("utf-8 path")],
    )
    .await;
    let token = c
        .token
        .clone()
        .expect("the coordinator wrote an admin token");
    let _agent = start_agent(HOST, &c.broker, &["env=status-test"], dir.path());
    let _budget_agent = start_agent_with(
        BUDGET_HOST,
        &c.broker,
        "500ms",
        &[
            "--label",
            "role=web",
            "--policies",
            budget_policies.to_str().expect("utf-8 path"),
            "--config",
            budget_config.to_str().expect("utf-8 path"),
            "--textfile-dir",
            textfiles.to_str().expect("utf-8 path"),
        ],
        dir.path(),
    );

    // The page and its assets are open (they hold no data), typed, and never cached.
    let client = reqwest::Client::new();
    for (path, kind) in [
        ("/", "text/html"),
        ("/assets/status.css", "text/css"),
        ("/assets/status.js", "text/javascript"),
    ] {
        let response = client
            .get(format!("{}{path}", c.http))
            .send()
            .await
            .expect("GET an asset");
        assert_eq!(response.status(), 200, "{path}");
        let header = |name: &str| {
            response
                .headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_string()
        };
        assert!(header("content-type").starts_with(kind), "{path}");
        assert_eq!(header("cache-control"), "no-cache", "{path}");
    }
    // … while the data behind it still needs the token.
    let response = client
        .get(format!("{}/api/v1/hosts", c.http))
        .send()
        .await
        .expect("GET /api/v1/hosts");
    assert_eq!(response.status(), 401);

    // A policy, for the policy table.
    let (code, reply) = post_raw(
        &format!("{}/api/v1/policies", c.http),
        r#"{"name":"high-cpu-alert","description":"CPU above 80%","severity":"warning",
            "target":"status-*","enabled":true,"auto_remediate":false,
            "condition":{"type":"metric_exceeds","metric":"cpu_percent","threshold":80},
            "action":"notify"}"#,
    )
    .await;
    assert_eq!(code, 201, "{reply}");

    // The agent has reported for a while: every charted metric has history.
    for name in CHARTED {
        wait_for(&format!("{MIN_POINTS} points of {name}"), WAIT, || async {
            let (_, body) = get_json(&format!(
                "{}/api/v1/metrics/query?name={name}&host={HOST}&limit=10000",
                c.http
            ))
            .await;
            (body["count"].as_u64().unwrap_or(0) >= MIN_POINTS * 2).then_some(())
        })
        .await;
    }

    let browser = Chromium::start(dir.path());
    let mut page = Driver::start(dir.path(), &browser);
    page.navigate(&format!("{}/#token={token}", c.http));

    // 2. The agent's host shows up online, with its labels.
    let rows = page.wait_until("the host row online", HOST_ROWS, |v| {
        parse(v).as_array().is_some_and(|rows| {
            rows.iter().any(|r| {
                r["host"] == HOST
                    && r["state"] == "online"
                    && r["text"].as_str().is_some_and(|t| t.contains("online"))
            })
        })
    });
    let rows = parse(&rows);
    let row = rows
        .as_array()
        .and_then(|rows| rows.iter().find(|r| r["host"] == HOST))
        .cloned()
        .unwrap_or_default();
    assert!(
        row["text"]
            .as_str()
            .is_some_and(|t| t.contains("env=status-test")),
        "{row}"
    );
    // The charts: one per metric, filled with the history the API serves for the same
    // window, point for point.
    let charts = parse(
        &page.wait_until("the host's charts filled", CHART_STATE, |v| {
            parse(v).as_array().is_some_and(|charts| {
                charts.len() == CHARTED.len()
                    && charts
                        .iter()
                        .all(|c| c["count"].as_u64().unwrap_or(0) >= MIN_POINTS)
            })
        }),
    );
    for chart in charts.as_array().into_iter().flatten() {
        let metric = chart["metric"].as_str().unwrap_or_default();
        let (first, last) = (
            chart["first"].as_str().unwrap_or_default(),
            chart["last"].as_str().unwrap_or_default(),
        );
        let mount = chart["mount"].as_str();
        assert_eq!(
            mount.is_some(),
            metric == "disk_free_percent",
            "only disk is per mount: {chart}"
        );
        let served = api_points(&c.http, metric, first, last, mount).await;
        assert_eq!(
            chart["count"].as_u64(),
            Some(served.len() as u64),
            "{metric}: the chart draws what the API serves: {chart}"
        );
        assert_eq!(chart["points"], chart["count"], "{metric}: {chart}");
        let newest = served.last().cloned().unwrap_or_default();
        assert_eq!(
            chart["lastValue"].as_f64(),
            newest["value"].as_f64(),
            "{metric}: {chart} vs {newest}"
        );
        assert_eq!(
            vigil_shared::time::parse_time(newest["timestamp"].as_str().unwrap_or_default())
                .ok()
                .map(|ms| ms.to_string()),
            Some(last.to_string()),
            "{metric}: {chart} vs {newest}"
        );
    }
    println!("charts drawn from the metric history API: {charts}");

    // The budget agent's remediation holds its budget's only lease: the panel shows what
    // `GET /api/v1/budgets` says.
    let budget_rows = parse(&page.wait_until("the budget row", BUDGET_ROWS, |v| {
        parse(v).as_array().is_some_and(|rows| {
            rows.iter()
                .any(|r| r["key"] == "hold#1" && r["held"] == 1 && r["max"] == 1)
        })
    }));
    let (_, served) = get_json(&format!("{}/api/v1/budgets", c.http)).await;
    let budget = served["budgets"]
        .as_array()
        .and_then(|b| b.iter().find(|b| b["key"] == "hold#1"))
        .cloned()
        .unwrap_or_default();
    let row = budget_rows
        .as_array()
        .and_then(|rows| rows.iter().find(|r| r["key"] == "hold#1"))
        .cloned()
        .unwrap_or_default();
    assert_eq!(
        (&row["held"], &row["max"], &row["deferred"]),
        (&budget["held"], &budget["max"], &budget["deferred"]),
        "{row} vs {budget}"
    );
    assert_eq!(budget["leases"][0]["host"], BUDGET_HOST, "{budget}");
    assert!(
        row["text"].as_str().is_some_and(|t| t.contains("1 / 1")),
        "{row}"
    );
    // A local policy the coordinator does not know: its limits are the agent's.
    assert_eq!(budget["source"], "agent", "{budget}");
    assert!(
        row["text"]
            .as_str()
            .is_some_and(|t| t.contains("agent-declared")),
        "{row}"
    );

    // What the agents run, as they report it: the budget agent its local policy and its
    // bundle's, the other agent nothing; in the host API and in the policies panel.
    let running = wait_for("the budget agent's running policies", WAIT, || async {
        let host = vigil_tests::host_entry(&c.http, BUDGET_HOST).await?;
        let listed = host["running_policies"]["policies"].as_array()?.len();
        (listed == 2).then(|| host["running_policies"].clone())
    })
    .await;
    assert_eq!(running["total"], 2, "{running}");
    assert_eq!(
        running["policies"][0],
        json!({"name": "hold", "source": "local", "group": null, "version": null}),
        "{running}"
    );
    let bundled = &running["policies"][1];
    assert_eq!(
        (&bundled["name"], &bundled["group"]),
        (&json!("bundled-load"), &json!("web")),
        "{running}"
    );
    let version = bundled["version"].as_u64().unwrap_or(0);
    assert!(version >= 1, "{running}");
    assert_eq!(
        bundled["source"],
        format!("bundle:web@{version}"),
        "{running}"
    );
    let plain = vigil_tests::host_entry(&c.http, HOST)
        .await
        .unwrap_or_default();
    assert_eq!(
        plain["running_policies"],
        json!({"policies": [], "total": 0}),
        "{plain}"
    );
    let bundled_source = format!("bundle:web@{version}");
    let rows = parse(
        &page.wait_until("the running policies panel", RUNNING_ROWS, |v| {
            parse(v).as_array().is_some_and(|rows| {
                let row = |policy: &str, source: &str| {
                    rows.iter().any(|r| {
                        r["policy"] == policy
                            && r["source"] == source
                            && r["text"].as_str().is_some_and(|t| t.contains(BUDGET_HOST))
                    })
                };
                row("hold", "local") && row("bundled-load", &bundled_source)
            })
        }),
    );
    assert_eq!(rows.as_array().map(Vec::len), Some(2), "{rows}");

    // The token left the address bar for localStorage.
    let where_token = page
        .eval("JSON.stringify({href: location.href, stored: localStorage.getItem('vigil.token')})");
    let where_token = parse(&where_token);
    assert!(
        where_token["href"]
            .as_str()
            .is_some_and(|h| !h.contains("token")),
        "{where_token}"
    );
    assert_eq!(where_token["stored"], token.as_str());
    // The feed is connected before anything happens (it starts with what happens next).
    page.wait_until(
        "the live feed connected",
        "document.getElementById('stream-status').dataset.state",
        |v| v == "live",
    );
    // A mark that a reload would wipe.
    page.eval("window.__statusPageTest = 'still here'; true");

    // 3. A manual action over REST appears in the live feed, and runs to completion.
    let (code, reply) = post_raw(
        &format!("{}/api/v1/actions", c.http),
        &format!(
            r#"{{"host":"{HOST}","target":"{HOST}","action":"notify","details":"status page check"}}"#
        ),
    )
    .await;
    assert_eq!(code, 201, "{reply}");
    let id = reply["action_id"].as_str().expect("action_id").to_string();
    let feed_row = format!(
        r#"(() => {{
            const li = Array.from(document.querySelectorAll('#feed li[data-kind="action"]'))
                .find(li => li.dataset.actionId === '{id}');
            return li ? JSON.stringify({{state: li.dataset.state, text: li.innerText,
                earlier: li.classList.contains('earlier'), mark: window.__statusPageTest || null}}) : null;
        }})()"#
    );
    let seen = parse(&page.wait_until("the action in the live feed", &feed_row, |v| v.is_string()));
    assert_eq!(seen["mark"], "still here", "the page was reloaded: {seen}");
    assert_eq!(seen["earlier"], false, "{seen}");
    let text = seen["text"].as_str().unwrap_or_default();
    assert!(text.contains(&id) && text.contains(HOST), "{seen}");
    let done = parse(
        &page.wait_until("the action completed in the feed", &feed_row, |v| {
            parse(v)["state"] == "completed"
        }),
    );
    assert_eq!(done["mark"], "still here", "the page was reloaded: {done}");
    let notice = page.eval("document.getElementById('notice').hidden");
    assert_eq!(notice, true, "the page shows an error");
    page.wait_until(
        "the policy table",
        "document.querySelector('#policies tbody tr[data-policy=\"high-cpu-alert\"]')?.innerText ?? null",
        |v| v.as_str().is_some_and(|t| t.contains("warning") && t.contains("status-*")),
    );

    // No script errors, no CSP violations, no failed loads…
    let console = page.console();
    let errors: Vec<&str> = console
        .as_array()
        .map(|messages| {
            messages
                .iter()
                .filter_map(Value::as_str)
                .filter(|m| {
                    m.starts_with("exception") || m.starts_with("error") || m.contains(" error: ")
                })
                .collect()
        })
        .unwrap_or_default();
    assert!(errors.is_empty(), "the page logged errors: {errors:#?}");
    // … and no request without the token (only this test's own one above was refused).
    let missing = metric(
        &c.http,
        r#"vigil_http_auth_failures_total{reason="missing"}"#,
    )
    .await;
    assert_eq!(missing, 1.0, "the page sent a request without its token");

    // 4. A screenshot of the whole page, kept in the test's target directory for people
    // to look at.
    let shot = dir.path().join("status-page.png");
    let answer = page.send(json!({"cmd": "screenshot", "path": shot.display().to_string()}));
    let png = std::fs::read(&shot).expect("screenshot written");
    assert!(
        png.len() > 1000 && png.starts_with(b"\x89PNG\r\n\x1a\n"),
        "not a PNG: {} bytes ({answer})",
        png.len()
    );
    let kept = Path::new(env!("CARGO_TARGET_TMPDIR")).join("status-page.png");
    std::fs::copy(&shot, &kept).expect("copy the screenshot");
    println!("status page screenshot: {}", kept.display());

    // 5. The coordinator restarts: the page reconnects on its own, resuming after the last
    // event it saw (Last-Event-ID), and the feed goes on without a reload.
    let resume_from =
        page.eval("document.getElementById('stream-status').dataset.lastEventId ?? null");
    assert!(
        resume_from
            .as_str()
            .and_then(|s| s.parse::<u64>().ok())
            .is_some_and(|n| n > 0),
        "no event id seen: {resume_from}"
    );
    let port = |url: &str| url.rsplit(':').next().unwrap_or_default().to_string();
    let args: Vec<String> = [
        "serve".to_string(),
        "--data-dir".into(),
        dir.path().join("data").display().to_string(),
        "--listen".into(),
        format!("127.0.0.1:{}", port(&c.http)),
        "--mqtt-listen".into(),
        format!("127.0.0.1:{}", port(&c.broker)),
    ]
    .into();
    c.proc.stop();
    page.wait_until(
        "the feed to notice the coordinator is gone",
        "document.getElementById('stream-status').dataset.state",
        |v| v != "live",
    );
    let restarted = Proc::start("coordinator", &bin("vigil-coordinator"), &args, dir.path());
    page.wait_until(
        "the feed live again",
        "document.getElementById('stream-status').dataset.state",
        |v| v == "live",
    );
    let (code, reply) = post_raw(
        &format!("{}/api/v1/actions", c.http),
        &format!(
            r#"{{"host":"{HOST}","target":"{HOST}","action":"notify","details":"after a restart"}}"#
        ),
    )
    .await;
    assert_eq!(code, 201, "{reply}");
    let second = reply["action_id"].as_str().expect("action_id").to_string();
    let second_row = feed_row.replace(&id, &second);
    let resumed = parse(
        &page.wait_until("the second action in the live feed", &second_row, |v| {
            v.is_string()
        }),
    );
    assert_eq!(
        resumed["mark"], "still here",
        "the page was reloaded: {resumed}"
    );
    let resumed_after =
        page.eval("document.getElementById('stream-status').dataset.lastEventId ?? null");
    assert!(
        resumed_after.as_str().and_then(|s| s.parse::<u64>().ok())
            > resume_from.as_str().and_then(|s| s.parse::<u64>().ok()),
        "{resume_from} → {resumed_after}"
    );

    // 6. Opened again without the fragment, the page uses the stored token and shows the
    // action among what happened before it opened.
    page.navigate(&format!("{}/", c.http));
    let earlier = parse(
        &page.wait_until("the action among earlier events", &feed_row, |v| {
            v.is_string()
        }),
    );
    assert_eq!(earlier["earlier"], true, "{earlier}");
    assert_eq!(earlier["state"], "completed", "{earlier}");
    assert_eq!(earlier["mark"], Value::Null, "{earlier}");

    drop(page);
    drop(browser);
    restarted.stop();
}
