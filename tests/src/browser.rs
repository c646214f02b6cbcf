//! Headless Chromium for page tests, driven over the Chrome DevTools
//! Protocol (the protocol Playwright and Puppeteer speak): open a page,
//! evaluate expressions in it, take screenshots, and collect every console
//! error and uncaught exception. `CHROMIUM_BIN` overrides the binary.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine;
use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::sync::{mpsc, oneshot};
use tokio_tungstenite::tungstenite::Message;

type Pending = Arc<Mutex<HashMap<u64, oneshot::Sender<Value>>>>;

/// A headless Chromium process; killed on drop.
pub struct Browser {
    child: Child,
    /// Its DevTools WebSocket URL.
    devtools: String,
    /// Its profile directory, removed on drop.
    profile: PathBuf,
}

impl Browser {
    /// Starts Chromium (Debian's `chromium`, or `CHROMIUM_BIN`).
    pub fn launch() -> Browser {
        let bin = std::env::var("CHROMIUM_BIN").unwrap_or_else(|_| "chromium".into());
        let profile = crate::tempdir("chromium");
        let mut child = Command::new(&bin)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--disable-background-networking",
                "--disable-extensions",
                "--disable-component-update",
                "--no-first-run",
                "--no-default-browser-check",
                "--hide-scrollbars",
                "--window-size=1400,1100",
                "--remote-debugging-port=0",
                "--remote-debugging-address=127.0.0.1",
            ])
            .arg(format!("--user-data-dir={}", profile.display()))
            .arg("about:blank")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot start {bin} ({e}): install Debian's chromium package or set CHROMIUM_BIN")
            });
        // It prints "DevTools listening on ws://127.0.0.1:PORT/devtools/browser/ID".
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut sent = false;
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if !sent && let Some(url) = line.split("DevTools listening on ").nth(1) {
                    let _ = tx.send(url.trim().to_owned());
                    sent = true;
                }
            }
        });
        let url = rx
            .recv_timeout(Duration::from_secs(30))
            .expect("chromium did not open its DevTools port within 30 s");
        Browser {
            child,
            devtools: url,
            profile,
        }
    }

    /// Opens a new tab and attaches to it.
    pub async fn page(&self) -> Page {
        let mut page = Page::connect(&self.devtools).await;
        let target = page
            .call("Target.createTarget", json!({ "url": "about:blank" }))
            .await;
        let attached = page
            .call(
                "Target.attachToTarget",
                json!({ "targetId": target["targetId"], "flatten": true }),
            )
            .await;
        page.session = Some(attached["sessionId"].as_str().unwrap().to_owned());
        for domain in ["Runtime.enable", "Log.enable", "Page.enable"] {
            page.call(domain, json!({})).await;
        }
        page
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.profile);
    }
}

/// One tab: commands in, console problems collected.
pub struct Page {
    /// The tab's session on the browser connection, once attached.
    session: Option<String>,
    next_id: u64,
    out: mpsc::UnboundedSender<Message>,
    pending: Pending,
    /// Console errors, uncaught exceptions and failed loads, as text.
    problems: Arc<Mutex<Vec<String>>>,
}

impl Page {
    async fn connect(ws: &str) -> Page {
        let (socket, _) = tokio_tungstenite::connect_async(ws).await.unwrap();
        let (mut sink, mut stream) = socket.split();
        let (out, mut rx) = mpsc::unbounded_channel::<Message>();
        tokio::spawn(async move {
            while let Some(m) = rx.recv().await {
                if sink.send(m).await.is_err() {
                    return;
                }
            }
        });
        let pending: Pending = Arc::default();
        let problems: Arc<Mutex<Vec<String>>> = Arc::default();
        let (p, e) = (pending.clone(), problems.clone());
        tokio::spawn(async move {
            while let Some(Ok(msg)) = stream.next().await {
                let Message::Text(text) = msg else { continue };
                let Ok(v) = serde_json::from_str::<Value>(&text) else {
                    continue;
                };
                if let Some(id) = v["id"].as_u64() {
                    if let Some(tx) = p.lock().unwrap().remove(&id) {
                        let _ = tx.send(v);
                    }
                } else if let Some(problem) = problem(&v) {
                    e.lock().unwrap().push(problem);
                }
            }
        });
        Page {
            session: None,
            next_id: 0,
            out,
            pending,
            problems,
        }
    }

    /// Sends a command and waits for its result (panics on a protocol error).
    pub async fn call(&mut self, method: &str, params: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        let (tx, rx) = oneshot::channel();
        self.pending.lock().unwrap().insert(id, tx);
        let mut msg = json!({ "id": id, "method": method, "params": params });
        if let Some(session) = &self.session {
            msg["sessionId"] = json!(session);
        }
        let msg = msg.to_string();
        self.out.send(Message::text(msg)).unwrap();
        let reply = tokio::time::timeout(Duration::from_secs(30), rx)
            .await
            .unwrap_or_else(|_| panic!("{method}: no answer in 30 s"))
            .unwrap();
        assert!(reply["error"].is_null(), "{method}: {reply}");
        reply["result"].clone()
    }

    /// Opens `url` and waits for its load event.
    pub async fn goto(&mut self, url: &str) {
        let r = self.call("Page.navigate", json!({ "url": url })).await;
        assert!(r["errorText"].is_null(), "cannot open {url}: {r}");
        let until = tokio::time::Instant::now() + Duration::from_secs(20);
        while self.eval("document.readyState").await != "complete" {
            assert!(tokio::time::Instant::now() < until, "{url} did not load");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The value of a JavaScript expression (awaited if it is a promise).
    pub async fn eval(&mut self, expression: &str) -> Value {
        let r = self
            .call(
                "Runtime.evaluate",
                json!({ "expression": expression, "returnByValue": true, "awaitPromise": true }),
            )
            .await;
        assert!(
            r["exceptionDetails"].is_null(),
            "`{expression}` threw: {}",
            r["exceptionDetails"]
        );
        r["result"]["value"].clone()
    }

    /// Waits until `expression` is truthy; panics with `what` after `timeout`.
    pub async fn wait_for(&mut self, expression: &str, timeout: Duration, what: &str) {
        let until = tokio::time::Instant::now() + timeout;
        loop {
            let v = self.eval(&format!("Boolean({expression})")).await;
            if v == Value::Bool(true) {
                return;
            }
            assert!(
                tokio::time::Instant::now() < until,
                "{what}: `{expression}` still false after {timeout:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// A PNG of the whole viewport.
    pub async fn screenshot(&mut self) -> Vec<u8> {
        let r = self
            .call("Page.captureScreenshot", json!({ "format": "png" }))
            .await;
        base64::engine::general_purpose::STANDARD
            .decode(r["data"].as_str().unwrap())
            .unwrap()
    }

    /// Console errors, uncaught exceptions and failed loads seen so far.
    pub fn problems(&self) -> Vec<String> {
        self.problems.lock().unwrap().clone()
    }
}

/// The text of an event that reports a problem, if it is one.
fn problem(v: &Value) -> Option<String> {
    let p = &v["params"];
    match v["method"].as_str()? {
        "Runtime.exceptionThrown" => Some(format!(
            "uncaught: {}",
            p["exceptionDetails"]["exception"]["description"]
                .as_str()
                .unwrap_or_else(|| p["exceptionDetails"]["text"].as_str().unwrap_or("?"))
        )),
        "Runtime.consoleAPICalled" if matches!(p["type"].as_str(), Some("error" | "assert")) => {
            Some(format!(
                "console.{}: {}",
                p["type"].as_str().unwrap_or("?"),
                p["args"]
            ))
        }
        "Log.entryAdded" if p["entry"]["level"] == "error" => {
            let e = &p["entry"];
            let text = |k: &str| e[k].as_str().unwrap_or("").to_owned();
            Some(format!(
                "{}: {} ({})",
                text("source"),
                text("text"),
                text("url")
            ))
        }
        _ => None,
    }
}
