//! The tower layer in a real hyper server (`axum::serve` on 127.0.0.1:0),
//! driven over real HTTP: reqwest, hand-written HTTP/1.1 over TCP (for
//! chunked bodies), the official `openai` client, and the axum example.

mod conformance_table;
#[cfg(feature = "redis")]
mod redis_servers;

use std::io::{BufRead, BufReader, Read, Write};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Arc;

use axum::body::Body;
use axum::extract::Request;
use axum::http::HeaderValue;
use axum::response::Response;
use axum::routing::{any, post};
use axum::Router;
use conformance_table::{check, request, table, Got, NOW};
use serde_json::{json, Value};
use tollgate::answer::{Answer, Options};
use tollgate::tower::{bearer_digest, bearer_token, tier_header, RateLimitLayer};
use tollgate::{Decision, Limiter, Policy};

const CHAT: &str = r#"{"model":"DeepSeek-V3.1","messages":[{"role":"user","content":"hi"}]}"#;

/// Where the upstream keeps the responses of requests sent with
/// `x-test-hold` open: each ends once the test adds a permit.
#[derive(Clone)]
struct Hold(Arc<tokio::sync::Semaphore>);

impl Default for Hold {
    fn default() -> Hold {
        Hold(Arc::new(tokio::sync::Semaphore::new(0)))
    }
}

/// The upstream: says it was reached and what the layer handed it, and
/// echoes the body it received (once the test lets it, for a request with
/// `x-test-hold`: its response is running until then).
async fn upstream(req: Request) -> Response {
    let answer = req.extensions().get::<Answer>().copied();
    let decision = req.extensions().get::<Decision>().copied();
    let hold = req
        .headers()
        .contains_key("x-test-hold")
        .then(|| req.extensions().get::<Hold>().cloned().expect("app's Hold"));
    let body = axum::body::to_bytes(req.into_body(), usize::MAX)
        .await
        .unwrap();
    let mut res = match hold {
        None => Response::new(Body::from(body)),
        Some(Hold(gate)) => {
            let (tx, rx) = tokio::sync::mpsc::channel(1);
            tokio::spawn(async move {
                gate.acquire().await.unwrap().forget();
                let _ = tx.send(Ok(body)).await;
            });
            Response::new(Body::new(Chunks(rx)))
        }
    };
    let h = res.headers_mut();
    h.insert("x-upstream", HeaderValue::from_static("1"));
    if let Some(a) = answer {
        h.insert(
            "x-upstream-outcome",
            HeaderValue::from_static(a.outcome().name()),
        );
    }
    if let Some(d) = decision {
        h.insert("x-upstream-remaining", d.minute.remaining.into());
    }
    res
}

/// The upstream, setting a header of the layer's own as well.
async fn upstream_with_own_header(req: Request) -> Response {
    let mut res = upstream(req).await;
    res.headers_mut().insert(
        "x-ratelimit-remaining-requests",
        HeaderValue::from_static("999"),
    );
    res
}

/// A chat completion the `openai` client parses.
async fn completion(req: Request) -> Response {
    let model = req
        .extensions()
        .get::<Answer>()
        .map(|a| String::from_utf8_lossy(a.model()).into_owned());
    let body = json!({
        "id": "chatcmpl-test",
        "object": "chat.completion",
        "created": NOW / 1000,
        "model": model,
        "choices": [{
            "index": 0,
            "message": {"role": "assistant", "content": "canned"},
            "finish_reason": "stop",
        }],
        "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
    });
    let mut res = Response::new(Body::from(body.to_string()));
    res.headers_mut()
        .insert("content-type", HeaderValue::from_static("application/json"));
    res
}

/// An outer layer showing the outcome the limiting layer put in the
/// response's extensions (as a logging layer would read it).
async fn outcome_header(mut res: Response) -> Response {
    if let Some(a) = res.extensions().get::<Answer>().copied() {
        res.headers_mut().insert(
            "x-test-outcome",
            HeaderValue::from_static(a.outcome().name()),
        );
    }
    res
}

fn app(layer: RateLimitLayer) -> Router {
    app_holding(layer, Hold::default())
}

fn app_holding(layer: RateLimitLayer, hold: Hold) -> Router {
    Router::new()
        .route("/conformance", any(upstream))
        .route("/echo", post(upstream_with_own_header))
        .route("/v1/chat/completions", post(completion))
        .layer(axum::Extension(hold))
        .layer(layer)
        .layer(axum::middleware::map_response(outcome_header))
}

async fn serve(app: Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    format!("http://{addr}")
}

fn conformance_limiter() -> Arc<Limiter> {
    Arc::new(Limiter::new(&table().0, 1024).unwrap())
}

fn header(res: &reqwest::Response, name: &str) -> Option<String> {
    res.headers()
        .get(name)
        .map(|v| v.to_str().unwrap().to_string())
}

async fn got(res: reqwest::Response) -> Got {
    let status = res.status().as_u16();
    let headers: Vec<(String, String)> = res
        .headers()
        .iter()
        .map(|(n, v)| (n.as_str().to_string(), v.to_str().unwrap().to_string()))
        .collect();
    let outcome = header(&res, "x-test-outcome").expect("every response carries its Answer");
    let reached = header(&res, "x-upstream").is_some();
    let text = res.text().await.unwrap();
    Got {
        status,
        outcome,
        headers,
        body: (!reached).then_some(text),
    }
}

/// (a) Every case of tests/conformance.json, by the table's conventions:
/// the account as `Authorization: Bearer <account>`, the tier as
/// `x-tollgate-tier`. Each `before` request runs to its end; the `held`
/// ones run (their heads in, their bodies kept open by the upstream) until
/// the case's request has its answer, then end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_conformance_case_over_http() {
    let (_, cases) = table();
    let limiter = conformance_limiter();
    let layer = RateLimitLayer::new(limiter.clone(), bearer_token)
        .tier_by(tier_header("x-tollgate-tier"))
        .clock(|| NOW);
    let hold = Hold::default();
    let base = serve(app_holding(layer, hold.clone())).await;
    let client = reqwest::Client::new();
    for case in &cases {
        let (method, account, tier, body) = request(case);
        let send = |held: bool| {
            let mut r = client
                .request(method.parse().unwrap(), format!("{base}/conformance"))
                .header("x-tollgate-tier", &tier)
                .body(body.clone());
            if let Some(a) = &account {
                r = r.header("authorization", format!("Bearer {a}"));
            }
            if held {
                r = r.header("x-test-hold", "1");
            }
            r.send()
        };
        for _ in 0..case["before"].as_u64().unwrap_or(0) {
            send(false).await.unwrap().bytes().await.unwrap();
        }
        let mut held = Vec::new();
        for _ in 0..case["held"].as_u64().unwrap_or(0) {
            let r = send(true).await.unwrap();
            assert_eq!(r.status(), 200, "{}: a held request", case["name"]);
            held.push(r);
        }
        check(case, &got(send(false).await.unwrap()).await);
        hold.0.add_permits(held.len());
        for r in held {
            r.bytes().await.unwrap();
        }
    }
    // Every response has ended, and each released its unit then.
    let f = limiter.stats(NOW).in_flight.unwrap();
    assert_eq!((f.in_use, f.aborted), (0, 0), "{f:?}");
}

/// (b) Many concurrent requests on one key: exactly the limit admitted,
/// each with its own remaining count.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_requests_on_one_key_admit_exactly_the_limit() {
    let layer = RateLimitLayer::new(conformance_limiter(), bearer_digest).clock(|| NOW);
    let base = serve(app(layer)).await;
    let client = reqwest::Client::new();
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..240 {
        let (c, url) = (client.clone(), format!("{base}/conformance"));
        set.spawn(async move {
            let r = c
                .post(url)
                .bearer_auth("sk-one-key")
                .body(CHAT)
                .send()
                .await
                .unwrap();
            let remaining = header(&r, "x-ratelimit-remaining-requests").unwrap();
            (r.status().as_u16(), remaining.parse::<u32>().unwrap())
        });
    }
    let mut admitted = Vec::new();
    let mut refused = 0;
    while let Some(r) = set.join_next().await {
        match r.unwrap() {
            (200, remaining) => admitted.push(remaining),
            (429, remaining) => {
                assert_eq!(remaining, 0);
                refused += 1;
            }
            other => panic!("{other:?}"),
        }
    }
    admitted.sort_unstable();
    assert_eq!(admitted, (0..30).collect::<Vec<u32>>());
    assert_eq!(refused, 240 - 30);
}

/// One HTTP/1.1 exchange written by hand: status, headers, body.
fn raw(base: &str, request: &[u8]) -> (u16, String, Vec<u8>) {
    let addr = base.strip_prefix("http://").unwrap();
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.write_all(request).unwrap();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 65536];
    loop {
        // The answer may come before the request is read whole; a reset
        // after it is no error here.
        let n = match s.read(&mut chunk) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        buf.extend_from_slice(&chunk[..n]);
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_lowercase();
            let len = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length: "))
                .map(|v| v.trim().parse::<usize>().unwrap());
            if len.is_some_and(|len| buf.len() >= end + 4 + len) {
                break;
            }
        }
    }
    let end = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a whole response head");
    let head = String::from_utf8_lossy(&buf[..end]).into_owned();
    let status = head[9..12].parse().unwrap();
    (status, head.to_lowercase(), buf[end + 4..].to_vec())
}

fn chunked(path: &str, auth: Option<&str>, chunks: &[&[u8]]) -> Vec<u8> {
    let mut r = format!(
        "POST {path} HTTP/1.1\r\nHost: test\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n"
    );
    if let Some(a) = auth {
        r.push_str(&format!("Authorization: Bearer {a}\r\n"));
    }
    r.push_str("\r\n");
    let mut r = r.into_bytes();
    for c in chunks {
        r.extend_from_slice(format!("{:x}\r\n", c.len()).as_bytes());
        r.extend_from_slice(c);
        r.extend_from_slice(b"\r\n");
    }
    r.extend_from_slice(b"0\r\n\r\n");
    r
}

/// (c) The body reaches the handler byte for byte: whole, chunked, large,
/// and unread when the request is not limited.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_body_reaches_the_handler_unchanged() {
    let layer = RateLimitLayer::new(conformance_limiter(), bearer_digest).clock(|| NOW);
    let base = serve(app(layer)).await;
    let client = reqwest::Client::new();

    let mut prompt = String::new();
    while prompt.len() < (1 << 20) + 3 {
        prompt.push_str("Ünïcödé \\\"quoted\\\" \\u00e9\\ud83d\\ude00 \\n tabs\\t 😀 ");
    }
    let bodies = [
        CHAT.to_string(),
        format!(" \r\n{{ \"messages\" : [ {{\"content\":\"{prompt}\"}} ] ,\n \"model\" : \"DeepSeek-V3.1\" }}\t"),
    ];
    for (i, body) in bodies.iter().enumerate() {
        let res = client
            .post(format!("{base}/echo"))
            .bearer_auth("sk-bodies")
            .body(body.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200);
        assert_eq!(
            header(&res, "x-upstream-outcome").as_deref(),
            Some("PASSED")
        );
        let want = (29 - i).to_string();
        assert_eq!(header(&res, "x-upstream-remaining"), Some(want.clone()));
        // The layer's headers replace the app's own of the same name.
        let ours: Vec<_> = res
            .headers()
            .get_all("x-ratelimit-remaining-requests")
            .iter()
            .collect();
        assert_eq!(ours, [want.as_str()]);
        assert_eq!(res.bytes().await.unwrap(), body.as_bytes(), "body {i}");
    }

    // Chunked, in pieces that cut the model key and a UTF-8 character.
    let body = "{\"model\":\"DeepSeek-V3.1\",\"x\":\"é😀\"}".as_bytes();
    let req = chunked(
        "/echo",
        Some("sk-bodies"),
        &[&body[..5], &body[5..33], &body[33..]],
    );
    let base2 = base.clone();
    let (status, head, echoed) = tokio::task::spawn_blocking(move || raw(&base2, &req))
        .await
        .unwrap();
    assert_eq!(status, 200, "{head}");
    assert!(
        head.contains("x-ratelimit-remaining-requests: 27"),
        "{head}"
    );
    assert_eq!(echoed, body);

    // Not limited (a GET), or no account with no_account_pass: passed on
    // unread, so its body is the client's stream itself.
    let res = client
        .get(format!("{base}/conformance"))
        .body(body.to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(
        header(&res, "x-upstream-outcome").as_deref(),
        Some("NOT_LIMITED")
    );
    assert!(header(&res, "x-ratelimit-limit-requests").is_none());
    assert_eq!(res.bytes().await.unwrap(), body);

    let open = Options {
        no_account_pass: true,
        ..Options::default()
    };
    let layer = RateLimitLayer::new(conformance_limiter(), bearer_digest)
        .options(open)
        .max_body_bytes(8);
    let base = serve(app(layer)).await;
    let res = client
        .post(format!("{base}/conformance"))
        .body(body.to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(
        header(&res, "x-upstream-outcome").as_deref(),
        Some("NO_ACCOUNT")
    );
    assert!(header(&res, "x-ratelimit-limit-requests").is_none());
    assert_eq!(res.bytes().await.unwrap(), body, "over the cap, yet unread");
}

/// Bodies over the cap: 413 with the core's body, whether the length is
/// declared or only found by reading, and even in a dry run; the account
/// step comes first. Bodies that break off: 400.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_over_the_cap_are_413_and_broken_ones_400() {
    let client = reqwest::Client::new();
    let fits = r#"{"model":"DeepSeek-V3.1","pad":"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"}"#;
    assert_eq!(fits.len(), 64);
    let over = r#"{"model":"DeepSeek-V3.1","pad":"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"}"#;
    let dry = Options {
        dry_run: true,
        ..Options::default()
    };
    for opts in [Options::default(), dry] {
        let layer = RateLimitLayer::new(conformance_limiter(), bearer_digest)
            .clock(|| NOW)
            .options(opts)
            .max_body_bytes(64);
        let base = serve(app(layer)).await;
        let post = |body: &'static str, key: Option<&str>| {
            let mut r = client.post(format!("{base}/conformance")).body(body);
            if let Some(k) = key {
                r = r.bearer_auth(k);
            }
            r.send()
        };
        let res = post(fits, Some("sk-cap")).await.unwrap();
        assert_eq!(res.status(), 200);
        assert_eq!(header(&res, "x-upstream").as_deref(), Some("1"));

        let res = post(over, Some("sk-cap")).await.unwrap();
        assert_eq!(res.status(), 413);
        assert_eq!(
            header(&res, "x-test-outcome").as_deref(),
            Some("BAD_REQUEST")
        );
        assert!(header(&res, "x-upstream").is_none());
        assert!(header(&res, "x-ratelimit-limit-requests").is_none());
        let v: Value = serde_json::from_str(&res.text().await.unwrap()).unwrap();
        assert_eq!(v["error"]["code"], "request_too_large");
        assert_eq!(v["error"]["type"], "invalid_request_error");

        let res = post(over, None).await.unwrap();
        assert_eq!(res.status(), if opts.dry_run { 200 } else { 401 });

        // No declared length: found over the cap while reading.
        let req = chunked(
            "/conformance",
            Some("sk-cap"),
            &[&over.as_bytes()[..40], &over.as_bytes()[40..]],
        );
        let b = base.clone();
        let (status, head, body) = tokio::task::spawn_blocking(move || raw(&b, &req))
            .await
            .unwrap();
        assert_eq!(status, 413, "{head}");
        let v: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["error"]["code"], "request_too_large");

        // A body that fails to arrive (broken chunk framing) is the core's
        // 400 invalid_json, even in a dry run, and counts nothing.
        let req = b"POST /conformance HTTP/1.1\r\nHost: test\r\n\
            Authorization: Bearer sk-broken\r\nTransfer-Encoding: chunked\r\n\r\n\
            5\r\n{\"mod\r\nzz\r\n";
        let b = base.clone();
        let (status, head, body) = tokio::task::spawn_blocking(move || raw(&b, req))
            .await
            .unwrap();
        assert_eq!(status, 400, "{head}");
        let v: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["error"]["code"], "invalid_json");
        let res = post(fits, Some("sk-broken")).await.unwrap();
        assert_eq!(
            header(&res, "x-ratelimit-remaining-requests").as_deref(),
            Some("29")
        );
    }
}

/// Tier and cost from the caller's functions (the cost parsed from the
/// body by the caller, not the layer); an empty account is no account.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tier_and_cost_by_function() {
    let open = Options {
        no_account_pass: true,
        ..Options::default()
    };
    let layer = RateLimitLayer::new(conformance_limiter(), |head| {
        head.headers.get("x-account").map(|v| v.as_bytes().to_vec())
    })
    .tier_by(|head| head.headers.get("x-plan").map(|v| v.as_bytes().to_vec()))
    .cost_by(|_, body| {
        let v: Value = serde_json::from_slice(body).unwrap_or_default();
        v["n"].as_u64().map_or(1, |n| n as u32)
    })
    .options(open)
    .clock(|| NOW);
    let base = serve(app(layer)).await;
    let client = reqwest::Client::new();
    let post = |account: Option<&str>, plan: Option<&str>, n: u32| {
        let mut r = client
            .post(format!("{base}/conformance"))
            .body(format!(r#"{{"model":"DeepSeek-V3.1","n":{n}}}"#));
        if let Some(a) = account {
            r = r.header("x-account", a);
        }
        if let Some(p) = plan {
            r = r.header("x-plan", p);
        }
        r.send()
    };
    let res = post(Some("acct-e"), Some("Enterprise"), 10).await.unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(
        header(&res, "x-ratelimit-remaining-requests").as_deref(),
        Some("290")
    );
    let res = post(Some("acct-d"), Some("developer"), 5).await.unwrap();
    assert_eq!(
        header(&res, "x-ratelimit-remaining-requests").as_deref(),
        Some("25")
    );
    let res = post(Some("acct-d"), Some("developer"), 31).await.unwrap();
    assert_eq!(res.status(), 400);
    let v: Value = serde_json::from_slice(&res.bytes().await.unwrap()).unwrap();
    assert_eq!(v["error"]["code"], "cost_too_large");
    let res = post(Some("acct-d"), None, 1).await.unwrap();
    assert_eq!(res.status(), 500, "no tier is the core's unknown tier");
    for account in [None, Some("")] {
        let res = post(account, Some("developer"), 1).await.unwrap();
        assert_eq!(res.status(), 200);
        assert_eq!(
            header(&res, "x-test-outcome").as_deref(),
            Some("NO_ACCOUNT")
        );
    }
}

/// The operator's options pass through to the core: a full table (503
/// or fail open), no limit for the tier (403 or pass), the refusal status,
/// a dry run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn options_pass_through_to_the_core() {
    let client = reqwest::Client::new();
    let chat = |base: String, key: &'static str, tier: &'static str| {
        client
            .post(format!("{base}/conformance"))
            .bearer_auth(key)
            .header("x-tollgate-tier", tier)
            .body(CHAT)
            .send()
    };
    let outcome =
        |r: &reqwest::Response| (r.status().as_u16(), header(r, "x-test-outcome").unwrap());
    let pass_all = Options {
        table_full_open: true,
        no_limit_pass: true,
        ..Options::default()
    };
    for opts in [Options::default(), pass_all] {
        // One slot: a second key finds the table full.
        let one = Arc::new(Limiter::new(&table().0, 1).unwrap());
        let layer = RateLimitLayer::new(one, bearer_token)
            .tier_by(tier_header("x-tollgate-tier"))
            .options(opts)
            .clock(|| NOW);
        let base = serve(app(layer)).await;
        let r = chat(base.clone(), "first", "developer").await.unwrap();
        assert_eq!(outcome(&r), (200, "PASSED".into()));
        let mut seen = Vec::new();
        for key in ["second", "third", "fourth", "fifth"] {
            let r = chat(base.clone(), key, "developer").await.unwrap();
            seen.push(outcome(&r));
        }
        let full = if opts.table_full_open { 200 } else { 503 };
        assert!(seen.contains(&(full, "TABLE_FULL".into())), "{seen:?}");
        let r = chat(base.clone(), "first", "free").await.unwrap();
        let no_limit = if opts.no_limit_pass { 200 } else { 403 };
        assert_eq!(outcome(&r), (no_limit, "NO_LIMIT".into()));
    }

    let opts = Options {
        refuse_status: 503,
        ..Options::default()
    };
    let layer = RateLimitLayer::new(conformance_limiter(), bearer_token)
        .options(opts)
        .clock(|| NOW);
    let base = serve(app(layer)).await;
    for _ in 0..30 {
        chat(base.clone(), "k", "developer").await.unwrap();
    }
    let r = chat(base.clone(), "k", "developer").await.unwrap();
    assert_eq!(outcome(&r), (503, "REJECTED".into()));
    assert!(header(&r, "retry-after").is_some());

    let dry = Options {
        dry_run: true,
        ..Options::default()
    };
    let layer = RateLimitLayer::new(conformance_limiter(), bearer_token)
        .options(dry)
        .clock(|| NOW);
    let base = serve(app(layer)).await;
    for _ in 0..30 {
        chat(base.clone(), "k", "developer").await.unwrap();
    }
    let r = chat(base.clone(), "k", "developer").await.unwrap();
    assert_eq!(outcome(&r), (200, "DRY_RUN".into()));
    assert_eq!(header(&r, "x-upstream").as_deref(), Some("1"));
    // A dry run's pass carries the six, not the refusal's retry-after.
    assert!(header(&r, "retry-after").is_none(), "a dry run's pass");
    assert_eq!(
        header(&r, "x-ratelimit-remaining-requests").as_deref(),
        Some("0")
    );
}

fn python_with_openai() -> Option<PathBuf> {
    let venv = std::env::var_os("TOLLGATE_VENV").map(|v| PathBuf::from(v).join("bin/python3"));
    venv.into_iter()
        .chain([PathBuf::from("python3")])
        .find(|py| {
            Command::new(py)
                .args(["-c", "import openai"])
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        })
}

/// Runs `script` with the `openai` package, `base_url` as argv[1]; its
/// stdout as JSON. `None` (a note printed) when no Python has `openai`.
async fn with_openai(script: &str, base_url: &str) -> Option<Value> {
    let Some(py) = python_with_openai() else {
        eprintln!("SKIPPED: no python3 on PATH (or in $TOLLGATE_VENV) can import openai");
        return None;
    };
    let out = tokio::process::Command::new(py)
        .args(["-c", script, base_url])
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    Some(serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{e}: {stdout}")))
}

const OPENAI_31: &str = r#"
import json, sys
import openai

client = openai.OpenAI(base_url=sys.argv[1], api_key="sk-openai-client", max_retries=0)
messages = [{"role": "user", "content": "hello"}]
out = {"remaining": []}
for _ in range(30):
    raw = client.chat.completions.with_raw_response.create(model="DeepSeek-V3.1", messages=messages)
    out["remaining"].append(int(raw.headers["x-ratelimit-remaining-requests"]))
    out["content"] = raw.parse().choices[0].message.content
try:
    client.chat.completions.create(model="DeepSeek-V3.1", messages=messages)
    out["31st"] = "admitted"
except openai.RateLimitError as e:
    out["31st"] = type(e).__name__
    out["status"] = e.status_code
    out["code"] = e.code
    out["message"] = e.message
    out["headers"] = {k: v for k, v in e.response.headers.items() if k.startswith("x-ratelimit") or k == "retry-after"}
print(json.dumps(out))
"#;

/// (d) The official `openai` client: the 31st DeepSeek-V3.1 call in a
/// minute raises RateLimitError, with the headers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openai_client_gets_rate_limit_error_on_the_31st_call() {
    let limiter = Arc::new(Limiter::new(&Policy::builtin(), 1024).unwrap());
    let base = serve(app(
        RateLimitLayer::new(limiter, bearer_digest).clock(|| NOW)
    ))
    .await;
    let Some(out) = with_openai(OPENAI_31, &format!("{base}/v1")).await else {
        return;
    };
    assert_eq!(out["remaining"], json!((0..30).rev().collect::<Vec<u32>>()));
    assert_eq!(out["content"], "canned");
    assert_eq!(out["31st"], "RateLimitError", "{out}");
    assert_eq!(out["status"], 429);
    assert_eq!(out["code"], "rate_limit_exceeded");
    assert!(
        out["message"]
            .as_str()
            .unwrap()
            .contains("on model DeepSeek-V3.1: limit 30, remaining 0"),
        "{out}"
    );
    let h = &out["headers"];
    assert_eq!(h["x-ratelimit-limit-requests"], "30");
    assert_eq!(h["x-ratelimit-remaining-requests"], "0");
    assert_eq!(h["x-ratelimit-limit-requests-day"], "15000");
    assert_eq!(h["x-ratelimit-remaining-requests-day"], "14970");
    let retry: u64 = h["retry-after"].as_str().unwrap().parse().unwrap();
    assert!((1..=60).contains(&retry), "{h}");
    let reset: u64 = h["x-ratelimit-reset-requests"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(reset, (NOW / 60_000 + 1) * 60);
}

/// tests/clients, where the official clients' runners and the pinned Node
/// package are (tests/setup.sh installs it).
fn clients_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/clients")
}

/// Both official clients, Python's and Node's, as a user's program runs
/// them (tests/clients/openai_call.*), at once, each with its own account:
/// `before` calls that never retry, then one at the client's default
/// retries. Each client's output, or `None` for one still waiting after
/// `wait` (killed): a client sleeping through a day's retry-after waits
/// hours.
async fn official_clients(
    base: &str,
    model: &str,
    before: u32,
    tier: &str,
    wait: std::time::Duration,
) -> Vec<(&'static str, Option<Value>)> {
    let dir = clients_dir();
    let pin =
        serde_json::from_str::<Value>(&std::fs::read_to_string(dir.join("package.json")).unwrap())
            .unwrap()["dependencies"]["openai"]
            .clone();
    let have = std::fs::read_to_string(dir.join("node_modules/openai/package.json"))
        .ok()
        .and_then(|t| serde_json::from_str::<Value>(&t).ok());
    assert!(
        have.is_some_and(|v| v["version"] == pin),
        "openai {pin} for Node is not in {}/node_modules: run tests/setup.sh",
        dir.display()
    );
    let py = python_with_openai().expect("no python3 with openai: run tests/setup.sh");
    let runners = [
        ("python", py, "openai_call.py"),
        ("node", PathBuf::from("node"), "openai_call.mjs"),
    ];
    let mut running = Vec::new();
    for (name, exe, script) in runners {
        let spec = json!({
            "base_url": format!("{base}/v1"),
            "api_key": format!("sk-{name}-{model}-{tier}"),
            "model": model,
            "before": before,
            "headers": {"x-tollgate-tier": tier},
        });
        let child = tokio::process::Command::new(exe)
            .arg(dir.join(script))
            .arg(spec.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        running.push((name, child));
    }
    let deadline = tokio::time::Instant::now() + wait;
    let mut out = Vec::new();
    for (name, child) in running {
        match tokio::time::timeout_at(deadline, child.wait_with_output()).await {
            Ok(done) => {
                let done = done.unwrap();
                let stdout = String::from_utf8_lossy(&done.stdout);
                assert!(
                    done.status.success(),
                    "{name}: {stdout}\n{}",
                    String::from_utf8_lossy(&done.stderr)
                );
                out.push((name, Some(serde_json::from_str(&stdout).unwrap())));
            }
            // Dropping the wait kills the child (kill_on_drop).
            Err(_) => out.push((name, None)),
        }
    }
    out
}

/// A call that should give up promptly: seconds, with room for a loaded
/// machine (the clients' own backoff before a useless retry is 0.5 s to
/// 8 s).
const PROMPT: f64 = 5.0;
/// How long a client may take before it counts as still waiting.
const WAIT: std::time::Duration = std::time::Duration::from_secs(20);

fn clients_layer(now: impl Fn() -> u64 + Send + Sync + 'static) -> RateLimitLayer {
    RateLimitLayer::new(conformance_limiter(), bearer_digest)
        .tier_by(tier_header("x-tollgate-tier"))
        .clock(now)
}

/// Runs `check` on each client's output and fails with every client's
/// failures at once (one still waiting is one).
fn each_client(out: &[(&str, Option<Value>)], check: impl Fn(&Value) -> Result<(), String>) {
    let failed: Vec<String> = out
        .iter()
        .filter_map(|(name, got)| {
            let r = match got {
                None => Err("still waiting, killed".to_string()),
                Some(g) => check(g).map_err(|e| format!("{e}: {g}")),
            };
            r.err().map(|e| format!("{name}: {e}"))
        })
        .collect();
    assert!(failed.is_empty(), "{}", failed.join("\n"));
}

macro_rules! ensure {
    ($cond:expr, $($msg:tt)+) => {
        let ok: bool = $cond;
        if !ok {
            return Err(format!($($msg)+));
        }
    };
}

/// What each client did with a refusal of the day window: gave up at once
/// with a RateLimitError after its one attempt, told not to retry; and the
/// retry-after it was given.
fn gave_up_on_the_day(out: &[(&str, Option<Value>)], retry_after: &str) {
    each_client(out, |got| {
        ensure!(got["before"] == json!([200, 200, 200]), "before");
        let call = &got["call"];
        let attempts = call["attempts"].as_array().unwrap();
        ensure!(attempts.len() == 1, "{} attempts", attempts.len());
        ensure!(call["seconds"].as_f64().unwrap() < PROMPT, "slow");
        ensure!(
            (&call["error"], &call["status"], &call["code"])
                == (
                    &json!("RateLimitError"),
                    &json!(429),
                    &json!("rate_limit_exceeded")
                ),
            "not a RateLimitError"
        );
        ensure!(attempts[0]["should_retry"] == "false", "x-should-retry");
        ensure!(attempts[0]["retry_after"] == retry_after, "retry-after");
        Ok(())
    });
}

/// (e) The official clients, Python's and Node's, at their default
/// retries: a refusal of the day window (noon UTC: retry-after is the 12
/// hours to midnight, which Node's client would sleep through) ends in a
/// RateLimitError at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn official_clients_give_up_on_a_day_limit_at_once() {
    assert_eq!(NOW % 86_400_000, 43_200_000, "noon");
    let base = serve(app(clients_layer(|| NOW))).await;
    let out = official_clients(&base, "tiny-day", 3, "developer", WAIT).await;
    gave_up_on_the_day(&out, "43200");
}

/// (e) ... also in the day's last seconds, where retry-after is short
/// enough for both clients to sleep through it twice (a minute of a
/// caller's time for a day that then starts over): the day's refusal does
/// not turn on the clock.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn official_clients_give_up_on_a_day_limit_near_midnight() {
    let late = (NOW / 86_400_000 + 1) * 86_400_000 - 30_000;
    let base = serve(app(clients_layer(move || late))).await;
    let out = official_clients(&base, "tiny-day", 3, "developer", WAIT).await;
    gave_up_on_the_day(&out, "30");
}

/// (e) ... a refusal of the minute window is retried after the wait
/// retry-after says, and the retry, in the next minute, gets through. The
/// layer's clock runs at the real pace from 45 s into a minute, so the
/// wait is seconds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn official_clients_retry_a_minute_limit_after_retry_after() {
    let start = std::time::Instant::now();
    let from = NOW - NOW % 60_000 + 45_000;
    let base = serve(app(clients_layer(move || {
        from + start.elapsed().as_millis() as u64
    })))
    .await;
    let out = official_clients(&base, "tiny-minute", 2, "developer", WAIT * 3).await;
    each_client(&out, |got| {
        ensure!(got["before"] == json!([200, 200]), "before");
        let call = &got["call"];
        ensure!(call["ok"] == true, "not admitted");
        let attempts = call["attempts"].as_array().unwrap();
        ensure!(attempts.len() == 2, "{} attempts", attempts.len());
        ensure!(
            attempts[0]["status"] == 429 && attempts[1]["status"] == 200,
            "statuses"
        );
        let retry_after: f64 = attempts[0]["retry_after"]
            .as_str()
            .unwrap()
            .parse()
            .unwrap();
        let slept = attempts[1]["at"].as_f64().unwrap() - attempts[0]["at"].as_f64().unwrap();
        ensure!(
            (retry_after - 0.5..=retry_after + PROMPT).contains(&slept),
            "slept {slept} s for retry-after {retry_after}"
        );
        ensure!(attempts[0]["should_retry"] == "true", "x-should-retry");
        Ok(())
    });
}

/// (e) ... and the limiter's own failure (a 500: here an unknown tier) is
/// not retried: a retry does not mend it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn official_clients_do_not_retry_the_limiters_failure() {
    let base = serve(app(clients_layer(|| NOW))).await;
    let out = official_clients(&base, "DeepSeek-V3.1", 0, "gold", WAIT).await;
    each_client(&out, |got| {
        let call = &got["call"];
        let attempts = call["attempts"].as_array().unwrap();
        ensure!(attempts.len() == 1, "{} attempts", attempts.len());
        ensure!(call["seconds"].as_f64().unwrap() < PROMPT, "slow");
        ensure!(
            (&call["error"], &call["status"]) == (&json!("InternalServerError"), &json!(500)),
            "not an InternalServerError"
        );
        ensure!(attempts[0]["should_retry"] == "false", "x-should-retry");
        Ok(())
    });
}

/// A quota store that accepts connections and never answers: a Redis
/// stalled mid-call (as one paused by `CLIENT PAUSE`, or stopped by
/// SIGSTOP), so every call waits its whole deadline.
#[cfg(feature = "redis")]
struct StalledStore {
    addr: std::net::SocketAddr,
    stop: Arc<std::sync::atomic::AtomicBool>,
    accepting: Option<std::thread::JoinHandle<()>>,
}

#[cfg(feature = "redis")]
impl StalledStore {
    fn start() -> StalledStore {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stopped = stop.clone();
        let accepting = std::thread::spawn(move || {
            // Held open, never read from or written to.
            let mut held = Vec::new();
            for conn in listener.incoming() {
                if stopped.load(std::sync::atomic::Ordering::Relaxed) {
                    break;
                }
                held.extend(conn.ok());
            }
        });
        StalledStore {
            addr,
            stop,
            accepting: Some(accepting),
        }
    }

    fn url(&self) -> String {
        format!("redis://{}/0", self.addr)
    }
}

#[cfg(feature = "redis")]
impl Drop for StalledStore {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        // Wakes the accept loop to see the flag.
        let _ = std::net::TcpStream::connect(self.addr);
        if let Some(t) = self.accepting.take() {
            let _ = t.join();
        }
    }
}

/// Issue 15: on a limiter joined to a quota store that has stalled, a
/// decision that needs a round trip waits for the store's deadline, and
/// the layer makes it off the runtime. On a current-thread runtime (the
/// server, the client and a 1 ms ticker all on one thread) every request
/// still waits about the deadline, while the ticker is never more than a
/// few milliseconds late: nothing the layer does blocks the runtime.
#[cfg(feature = "redis")]
#[tokio::test(flavor = "current_thread")]
async fn a_stalled_store_never_blocks_the_runtime() {
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use std::time::{Duration, Instant};
    use tollgate::lease::LeaseOptions;
    use tollgate::store::StoreOptions;
    use tollgate::LimiterOptions;

    const DEADLINE: Duration = Duration::from_millis(50);
    let store = StalledStore::start();
    let mut limiter = LimiterOptions::new()
        .leases(true)
        .build(&Policy::builtin(), 1024)
        .unwrap();
    let opts = LeaseOptions {
        store: StoreOptions {
            deadline: DEADLINE,
            // The breaker never opens, so every request needs the store and
            // waits its whole deadline (an open breaker fails calls at once).
            trip_after: u32::MAX,
            ..StoreOptions::default()
        },
        hosts: 1,
        ..LeaseOptions::default()
    };
    // Redis not answering is no error: the down policy decides.
    limiter.connect(&store.url(), opts).unwrap();
    let limiter = Arc::new(limiter);
    let base = serve(app(RateLimitLayer::new(limiter.clone(), bearer_digest))).await;
    let client = reqwest::Client::new();

    // The ticker: how late each 1 ms tick comes, at worst.
    let worst_us = Arc::new(AtomicU64::new(0));
    let ticks = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicBool::new(false));
    let ticker = tokio::spawn({
        let (worst_us, ticks, done) = (worst_us.clone(), ticks.clone(), done.clone());
        async move {
            let mut every = tokio::time::interval(Duration::from_millis(1));
            while !done.load(Ordering::Relaxed) {
                let due = every.tick().await;
                let late = due.elapsed().as_micros() as u64;
                worst_us.fetch_max(late, Ordering::Relaxed);
                ticks.fetch_add(1, Ordering::Relaxed);
            }
        }
    });
    let chat = |key: String| {
        let req = client
            .post(format!("{base}/conformance"))
            .bearer_auth(key)
            .body(CHAT)
            .send();
        async move {
            let t = Instant::now();
            let res = req.await.unwrap();
            let took = t.elapsed();
            assert_eq!(res.status(), 200, "the down policy (local) admits");
            assert_eq!(header(&res, "x-upstream").as_deref(), Some("1"));
            assert!(header(&res, "x-ratelimit-limit-requests").is_some());
            took
        }
    };

    let start = Instant::now();
    let mut took = Vec::new();
    // One at a time, on new keys and again on one key ...
    for i in 0..4 {
        took.push(chat(format!("sk-stalled-{i}")).await);
        took.push(chat("sk-stalled-again".into()).await);
    }
    // ... and four at once, each waiting on the blocking pool.
    let t = Instant::now();
    let (a, b, c, d) = tokio::join!(
        chat("sk-stalled-a".into()),
        chat("sk-stalled-b".into()),
        chat("sk-stalled-c".into()),
        chat("sk-stalled-d".into()),
    );
    let together = t.elapsed();
    took.extend([a, b, c, d]);
    let total = start.elapsed();
    done.store(true, Ordering::Relaxed);
    ticker.await.unwrap();

    let worst = Duration::from_micros(worst_us.load(Ordering::Relaxed));
    let ticks = ticks.load(Ordering::Relaxed);
    let stats = limiter.lease_stats().unwrap();
    eprintln!(
        "stalled store: requests took {took:?}; four at once {together:?}; \
         ticker: {ticks} ticks in {total:?}, worst {worst:?} late; \
         deferred {}, store timeouts {}",
        stats.deferred, stats.store.timeouts
    );
    // Each request did wait for the store: the stall is real.
    for t in &took {
        assert!(*t >= DEADLINE * 4 / 5, "{took:?}");
    }
    // Generous for a loaded 2-core machine; a blocking layer is a whole
    // deadline late on every request.
    assert!(
        worst < Duration::from_millis(20),
        "the runtime was blocked {worst:?}"
    );
    assert!(
        ticks as u128 >= total.as_millis() / 2,
        "{ticks} ticks in {total:?}"
    );
    // Decided side by side, not one after another.
    assert!(together < DEADLINE * 3, "four at once took {together:?}");
    // Each one pending on the no-wait path, then made waiting.
    assert!(stats.deferred >= took.len() as u64, "{stats:?}");
    assert!(stats.store.timeouts >= took.len() as u64, "{stats:?}");
}

/// The example, built by cargo as the suite builds it (a no-op when it is
/// fresh), in the profile of this test.
fn example() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let profile = exe.parent().unwrap().parent().unwrap().to_path_buf();
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    // The features this test was built with (no feature is on by default):
    // an example built without `redis` would refuse `--redis`.
    let features = if cfg!(feature = "redis") {
        "tower,redis"
    } else {
        "tower"
    };
    let mut build = Command::new(cargo);
    build
        .args([
            "build",
            "--quiet",
            "--features",
            features,
            "--example",
            "axum",
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"));
    if profile.file_name().is_some_and(|n| n == "release") {
        build.arg("--release");
    }
    assert!(build.status().unwrap().success(), "building the example");
    profile.join("examples").join("axum")
}

struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts the example and reads the address it listens on.
fn start_example(exe: &PathBuf, args: &[&str]) -> (Child, String) {
    let mut child = Command::new(exe)
        .args(["--listen", "127.0.0.1:0"])
        .args(args)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let addr = line
        .trim()
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("{line:?}"))
        .to_string();
    (Child(child), addr)
}

const OPENAI_ONE: &str = r#"
import json, sys
import openai

client = openai.OpenAI(base_url=sys.argv[1], api_key="sk-example-openai", max_retries=0)
raw = client.chat.completions.with_raw_response.create(
    model="DeepSeek-V3.1", messages=[{"role": "user", "content": "hello"}])
c = raw.parse()
print(json.dumps({"model": c.model, "content": c.choices[0].message.content,
                  "limit": raw.headers["x-ratelimit-limit-requests"]}))
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_axum_example_builds_and_answers() {
    let exe = example();
    let help = Command::new(&exe).arg("--help").output().unwrap();
    assert!(help.status.success());
    let text = String::from_utf8(help.stdout).unwrap();
    for want in [
        "--listen",
        "--policy",
        "--table",
        "--slots",
        "--redis",
        "/v1/chat/completions",
    ] {
        assert!(text.contains(want), "{want}: {text}");
    }
    let bad = Command::new(&exe)
        .args(["--slots", "many"])
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("--slots many"));

    let dir = std::env::temp_dir().join(format!("tollgate-tower-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let table_file = dir.join("table");
    let table_arg = table_file.to_str().unwrap();
    let client = reqwest::Client::new();
    let chat = |base: &str, key: Option<&str>| {
        let mut r = client
            .post(format!("{base}/v1/chat/completions"))
            .body(CHAT);
        if let Some(k) = key {
            r = r.bearer_auth(k);
        }
        r.send()
    };

    let mut day_left = Vec::new();
    for _ in 0..2 {
        // Twice on one table file: the counts outlive the process.
        let (_child, base) = start_example(&exe, &["--table", table_arg, "--slots", "4096"]);
        let res = client
            .get(format!("{base}/v1/models"))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200);
        assert!(header(&res, "x-ratelimit-limit-requests").is_none());
        let models: Value = serde_json::from_slice(&res.bytes().await.unwrap()).unwrap();
        assert!(models["data"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["id"] == "DeepSeek-V3.1"));

        let res = chat(&base, Some("sk-example")).await.unwrap();
        assert_eq!(res.status(), 200);
        assert_eq!(
            header(&res, "x-ratelimit-limit-requests").as_deref(),
            Some("30")
        );
        day_left.push(header(&res, "x-ratelimit-remaining-requests-day").unwrap());
        let c: Value = serde_json::from_slice(&res.bytes().await.unwrap()).unwrap();
        assert_eq!(c["object"], "chat.completion");
        assert_eq!(c["model"], "DeepSeek-V3.1");

        let res = chat(&base, None).await.unwrap();
        assert_eq!(res.status(), 401);
        let e: Value = serde_json::from_slice(&res.bytes().await.unwrap()).unwrap();
        assert_eq!(e["error"]["code"], "invalid_api_key");
    }
    assert_eq!(day_left, ["14999", "14998"]);

    // Another policy, in memory, and the official client.
    let policy = format!("{}/tests/conformance.toml", env!("CARGO_MANIFEST_DIR"));
    let (_child, base) = start_example(&exe, &["--policy", &policy]);
    let res = chat(&base, Some("sk-other")).await.unwrap();
    assert_eq!(
        header(&res, "x-ratelimit-limit-requests-day").as_deref(),
        Some("15000")
    );
    let res = client
        .post(format!("{base}/v1/chat/completions"))
        .bearer_auth("sk-other")
        .body(r#"{"model":"Qwen3-32B"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 404, "not in this policy");
    if let Some(out) = with_openai(OPENAI_ONE, &format!("{base}/v1")).await {
        assert_eq!(out["model"], "DeepSeek-V3.1");
        assert_eq!(out["limit"], "30");
        assert!(out["content"].as_str().unwrap().contains("requests left"));
    }

    // A policy with token limits: the client's stream with include_usage
    // is settled to its usage before its next call.
    let policy = format!("{}/policy/infercom-tokens.toml", env!("CARGO_MANIFEST_DIR"));
    let (_child, base) = start_example(&exe, &["--policy", &policy]);
    if let Some(out) = with_openai(OPENAI_EXAMPLE_STREAM, &format!("{base}/v1")).await {
        // infercom-tokens.toml: tpm 200000, bytes_per_token 4,
        // default_max_output 4096.
        let reserve = |i: usize| out["sizes"][i].as_u64().unwrap().div_ceil(4) + 4096;
        assert_eq!(out["usage"], 13, "{out}");
        assert!(
            out["text"].as_str().unwrap().contains("requests left"),
            "{out}"
        );
        assert_eq!(
            out["first"].as_u64().unwrap(),
            200_000 - reserve(0),
            "{out}"
        );
        assert_eq!(
            out["second"].as_u64().unwrap(),
            200_000 - 13 - reserve(1),
            "{out}"
        );
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

const OPENAI_EXAMPLE_STREAM: &str = r#"
import json, sys
import httpx, openai

sizes = []
def sent(request):
    sizes.append(len(request.content))
client = openai.OpenAI(base_url=sys.argv[1], api_key="sk-example-stream", max_retries=0,
                       http_client=httpx.Client(event_hooks={"request": [sent]}))
messages = [{"role": "user", "content": "hello"}]
raw = client.chat.completions.with_raw_response.create(
    model="DeepSeek-V3.1", messages=messages, stream=True,
    stream_options={"include_usage": True})
first = int(raw.headers["x-ratelimit-remaining-tokens"])
text, usage = "", None
for chunk in raw.parse():
    if chunk.choices:
        text += chunk.choices[0].delta.content or ""
    if chunk.usage:
        usage = chunk.usage.total_tokens
raw = client.chat.completions.with_raw_response.create(model="DeepSeek-V3.1", messages=messages)
print(json.dumps({"sizes": sizes, "first": first, "usage": usage, "text": text,
                  "second": int(raw.headers["x-ratelimit-remaining-tokens"])}))
"#;

/// The example joined to a real `redis-server`: its counts are Redis's.
#[cfg(feature = "redis")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_axum_example_joined_to_redis() {
    let redis = redis_servers::Server::start();
    let exe = example();
    let (_child, base) = start_example(&exe, &["--redis", &redis.url()]);
    let client = reqwest::Client::new();
    let mut left = Vec::new();
    for _ in 0..2 {
        let res = client
            .post(format!("{base}/v1/chat/completions"))
            .bearer_auth("sk-joined")
            .body(CHAT)
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), 200);
        left.push(header(&res, "x-ratelimit-remaining-requests-day").unwrap());
    }
    assert_eq!(left, ["14999", "14998"]);
    // The key's day window is in Redis (a lease of it, at least the two).
    let account = tollgate::account_digest(b"sk-joined");
    let tag = tollgate::store::Tag::for_key(account.as_bytes(), "DeepSeek-V3.1");
    let pattern = format!("tg:{{{}}}:d:*", String::from_utf8_lossy(tag.as_bytes()));
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(&pattern)
        .query(&mut redis.conn())
        .unwrap();
    assert_eq!(keys.len(), 1, "{pattern}: {keys:?}");
    let held: u64 = redis::cmd("GET")
        .arg(&keys[0])
        .query(&mut redis.conn())
        .unwrap();
    assert!(held >= 2, "{held}");
}

/// The README's sample is the module's doc test, which compiles.
#[test]
fn the_readme_sample_is_the_doc_test() {
    let root = env!("CARGO_MANIFEST_DIR");
    let readme = std::fs::read_to_string(format!("{root}/README.md")).unwrap();
    let section = &readme[readme.find("## Rust services (tower, axum)").unwrap()..];
    let start = section.find("```rust\n").unwrap() + 8;
    let sample = &section[start..start + section[start..].find("```").unwrap()];
    let module = std::fs::read_to_string(format!("{root}/src/tower.rs")).unwrap();
    let doc: String = module
        .lines()
        .filter_map(|l| l.strip_prefix("//!"))
        .map(|l| l.strip_prefix(' ').unwrap_or(l))
        .filter(|l| !l.starts_with("# ") && *l != "#")
        .map(|l| format!("{l}\n"))
        .collect();
    assert!(
        doc.contains(sample),
        "README sample not in src/tower.rs:\n{sample}"
    );
}

// Tokens: the layer settles each reservation as the response body passes.

const TOKEN_POLICY: &str = r#"
[models]
"tok-model" = { region = "EU" }

[tiers.developer]
"tok-model" = { rpm = 1000, rpd = 100000, tpm = 5000, tpd = 50000 }

[tokens]
default_max_output = 1000
"#;

/// The inner service's signals: `go` releases a gated stream's rest,
/// `gone` says a stream found its client gone (its body was dropped).
#[derive(Clone, Default)]
struct Gates {
    go: Arc<tokio::sync::Notify>,
    gone: Arc<tokio::sync::Notify>,
}

/// A response body fed by the inner service's task, frame by frame.
struct Chunks(tokio::sync::mpsc::Receiver<Result<bytes::Bytes, std::io::Error>>);

impl http_body::Body for Chunks {
    type Data = bytes::Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<bytes::Bytes>, std::io::Error>>> {
        self.0
            .poll_recv(cx)
            .map(|o| o.map(|r| r.map(http_body::Frame::data)))
    }
}

fn sse_chunk(content: Option<&str>, usage: Option<u64>) -> bytes::Bytes {
    let mut c = json!({
        "id": "chatcmpl-tok",
        "object": "chat.completion.chunk",
        "created": NOW / 1000,
        "model": "tok-model",
        "choices": [],
    });
    if let Some(text) = content {
        c["choices"] = json!([{"index": 0, "delta": {"role": "assistant", "content": text}, "finish_reason": null}]);
    }
    if let Some(total) = usage {
        c["usage"] =
            json!({"prompt_tokens": 1, "completion_tokens": total - 1, "total_tokens": total});
    }
    format!("data: {c}\n\n").into()
}

/// An OpenAI-compatible chat completions upstream: `usage.total_tokens`
/// is the request's `test_usage`; SSE when `stream` (the usage in a last
/// chunk with `stream_options.include_usage`, then `data: [DONE]`);
/// `test_status`: that status, without usage; `test_cut`: the stream
/// fails after one chunk; `test_gate`: the stream waits for `go` after its
/// first chunk; `test_until_gone`: the stream sends until its client is
/// gone. Its `x-test-reserved` is the tokens the layer reserved.
async fn openai_like(axum::Extension(g): axum::Extension<Gates>, req: Request) -> Response {
    let reserved = req
        .extensions()
        .get::<Decision>()
        .and_then(|d| d.tokens)
        .map(|t| t.reserved);
    let body = axum::body::to_bytes(req.into_body(), usize::MAX)
        .await
        .unwrap();
    let v: Value = serde_json::from_slice(&body).unwrap();
    let usage = v["test_usage"].as_u64().unwrap_or(1);
    let (mut res, content_type) = if let Some(status) = v["test_status"].as_u64() {
        let e = json!({"error": {"message": "upstream failed", "type": "server_error"}});
        let mut res = Response::new(Body::from(e.to_string()));
        *res.status_mut() = axum::http::StatusCode::from_u16(status as u16).unwrap();
        (res, "application/json")
    } else if v["stream"] == true {
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let include = v["stream_options"]["include_usage"] == true;
        let flag = |name: &str| v[name] == true;
        let (cut, gate, until_gone) =
            (flag("test_cut"), flag("test_gate"), flag("test_until_gone"));
        tokio::spawn(async move {
            let _ = tx.send(Ok(sse_chunk(Some("hel"), None))).await;
            if cut {
                let _ = tx.send(Err(std::io::Error::other("upstream reset"))).await;
                return;
            }
            if gate {
                g.go.notified().await;
            }
            if until_gone {
                for _ in 0..2000 {
                    if tx.send(Ok(sse_chunk(Some("."), None))).await.is_err() {
                        g.gone.notify_one();
                        return;
                    }
                    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
                }
                return;
            }
            let _ = tx.send(Ok(sse_chunk(Some("lo"), None))).await;
            if include {
                let _ = tx.send(Ok(sse_chunk(None, Some(usage)))).await;
            }
            let _ = tx.send(Ok("data: [DONE]\n\n".into())).await;
        });
        (Response::new(Body::new(Chunks(rx))), "text/event-stream")
    } else {
        let c = json!({
            "id": "chatcmpl-tok",
            "object": "chat.completion",
            "created": NOW / 1000,
            "model": "tok-model",
            "choices": [{
                "index": 0,
                "message": {"role": "assistant", "content": "hello"},
                "finish_reason": "stop",
            }],
            "usage": {"prompt_tokens": 1, "completion_tokens": usage - 1, "total_tokens": usage},
        });
        (Response::new(Body::from(c.to_string())), "application/json")
    };
    let h = res.headers_mut();
    h.insert("content-type", HeaderValue::from_static(content_type));
    if let Some(r) = reserved {
        h.insert("x-test-reserved", r.into());
    }
    res
}

async fn token_app() -> (String, Gates) {
    let policy = Policy::parse(TOKEN_POLICY, "tokens").unwrap();
    let limiter = Arc::new(Limiter::new(&policy, 1024).unwrap());
    let gates = Gates::default();
    let app = Router::new()
        .route("/v1/chat/completions", post(openai_like))
        .layer(axum::Extension(gates.clone()))
        .layer(RateLimitLayer::new(limiter, bearer_token).clock(|| NOW));
    (serve(app).await, gates)
}

fn tok_body(extra: Value) -> String {
    let mut b = json!({"model": "tok-model", "messages": [{"role": "user", "content": "hi"}]});
    for (k, v) in extra.as_object().unwrap() {
        b[k] = v.clone();
    }
    b.to_string()
}

async fn tok(base: &str, key: &str, body: &str) -> reqwest::Response {
    reqwest::Client::new()
        .post(format!("{base}/v1/chat/completions"))
        .bearer_auth(key)
        .body(body.to_string())
        .send()
        .await
        .unwrap()
}

fn num(res: &reqwest::Response, name: &str) -> u64 {
    header(res, name)
        .unwrap_or_else(|| panic!("no {name}"))
        .parse()
        .unwrap()
}

/// The reservation of `body` under TOKEN_POLICY: its bytes over 4, and
/// the default output.
fn reservation(body: &str) -> u64 {
    body.len().div_ceil(4) as u64 + 1000
}

/// (a) A JSON response's usage replaces its reservation before the client
/// has read the body's end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_are_settled_from_a_json_usage() {
    let (base, _) = token_app().await;
    let body = tok_body(json!({"test_usage": 123}));
    let r = reservation(&body);
    let res = tok(&base, "sk-json", &body).await;
    assert_eq!(res.status(), 200);
    assert_eq!(num(&res, "x-test-reserved"), r);
    assert_eq!(num(&res, "x-ratelimit-remaining-tokens"), 5000 - r);
    assert_eq!(num(&res, "x-ratelimit-remaining-tokens-day"), 50000 - r);
    let c: Value = serde_json::from_slice(&res.bytes().await.unwrap()).unwrap();
    assert_eq!(c["usage"]["total_tokens"], 123);
    let res = tok(&base, "sk-json", &body).await;
    assert_eq!(num(&res, "x-ratelimit-remaining-tokens"), 5000 - 123 - r);
    assert_eq!(
        num(&res, "x-ratelimit-remaining-tokens-day"),
        50000 - 123 - r
    );
    res.bytes().await.unwrap();
    let res = tok(&base, "sk-json", &body).await;
    assert_eq!(num(&res, "x-ratelimit-remaining-tokens"), 5000 - 246 - r);
}

/// (b, e) A stream's usage chunk settles it, and the stream is not
/// buffered: its first chunk reaches the client before the upstream sends
/// the rest.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_settles_from_its_usage_and_keeps_streaming() {
    let (base, gates) = token_app().await;
    let body = tok_body(json!({
        "stream": true, "stream_options": {"include_usage": true},
        "test_usage": 321, "test_gate": true,
    }));
    let r = reservation(&body);
    let mut res = tok(&base, "sk-sse", &body).await;
    assert_eq!(res.status(), 200);
    assert_eq!(num(&res, "x-ratelimit-remaining-tokens"), 5000 - r);
    let first = tokio::time::timeout(std::time::Duration::from_secs(10), res.chunk())
        .await
        .expect("the first chunk before the upstream's second")
        .unwrap()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&first).contains("\"hel\""),
        "{first:?}"
    );
    gates.go.notify_one();
    let rest = String::from_utf8(res.bytes().await.unwrap().to_vec()).unwrap();
    assert!(rest.contains("\"total_tokens\":321"), "{rest}");
    assert!(rest.ends_with("data: [DONE]\n\n"), "{rest}");

    let next = tok_body(json!({"test_usage": 5}));
    let res = tok(&base, "sk-sse", &next).await;
    let r2 = reservation(&next);
    assert_eq!(num(&res, "x-ratelimit-remaining-tokens"), 5000 - 321 - r2);
    res.bytes().await.unwrap();

    // Without include_usage: a complete stream keeps its reservation.
    let plain = tok_body(json!({"stream": true}));
    let res = tok(&base, "sk-sse", &plain).await;
    let r3 = reservation(&plain);
    assert_eq!(num(&res, "x-ratelimit-remaining-tokens"), 5000 - 326 - r3);
    assert!(String::from_utf8(res.bytes().await.unwrap().to_vec())
        .unwrap()
        .ends_with("data: [DONE]\n\n"));
    let res = tok(&base, "sk-sse", &next).await;
    assert_eq!(
        num(&res, "x-ratelimit-remaining-tokens"),
        5000 - 326 - r3 - r2
    );
}

/// (c) A cut stream keeps its reservation, a 500 without usage gives it
/// back, a body dropped half-way by a client gone keeps it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cut_failed_and_abandoned_responses_settle_by_the_policy() {
    let (base, gates) = token_app().await;
    let next = tok_body(json!({"test_usage": 5}));
    let r2 = reservation(&next);

    let cut = tok_body(json!({"stream": true, "test_cut": true}));
    let res = tok(&base, "sk-cut", &cut).await;
    assert_eq!(res.status(), 200);
    let r = reservation(&cut);
    assert_eq!(num(&res, "x-ratelimit-remaining-tokens"), 5000 - r);
    assert!(
        res.bytes().await.is_err(),
        "the upstream's reset reaches the client"
    );
    let res = tok(&base, "sk-cut", &next).await;
    assert_eq!(num(&res, "x-ratelimit-remaining-tokens"), 5000 - r - r2);

    let failed = tok_body(json!({"test_status": 500}));
    let res = tok(&base, "sk-500", &failed).await;
    assert_eq!(res.status(), 500);
    let r = reservation(&failed);
    assert_eq!(num(&res, "x-ratelimit-remaining-tokens"), 5000 - r);
    res.bytes().await.unwrap();
    let res = tok(&base, "sk-500", &next).await;
    assert_eq!(num(&res, "x-ratelimit-remaining-tokens"), 5000 - r2);

    let gone = tok_body(json!({"stream": true, "test_until_gone": true}));
    let mut res = tok(&base, "sk-gone", &gone).await;
    let r = reservation(&gone);
    assert_eq!(num(&res, "x-ratelimit-remaining-tokens"), 5000 - r);
    res.chunk().await.unwrap().unwrap();
    drop(res);
    tokio::time::timeout(std::time::Duration::from_secs(10), gates.gone.notified())
        .await
        .expect("the server drops the body of a client gone");
    let res = tok(&base, "sk-gone", &next).await;
    assert_eq!(num(&res, "x-ratelimit-remaining-tokens"), 5000 - r - r2);
}

/// (d) Once the usage has filled the minute, the next reservation is
/// refused on tokens.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_settled_usage_fills_the_minute_to_a_token_429() {
    let (base, _) = token_app().await;
    let body = tok_body(json!({"test_usage": 4900}));
    let res = tok(&base, "sk-full", &body).await;
    assert_eq!(res.status(), 200);
    res.bytes().await.unwrap();
    let res = tok(&base, "sk-full", &body).await;
    assert_eq!(res.status(), 429);
    assert_eq!(
        header(&res, "x-ratelimit-remaining-tokens").as_deref(),
        Some("100")
    );
    assert!(header(&res, "x-test-reserved").is_none(), "not reached");
    let e: Value = serde_json::from_slice(&res.bytes().await.unwrap()).unwrap();
    assert_eq!(e["error"]["type"], "tokens", "{e}");
    assert_eq!(e["error"]["code"], "tokens_rate_limit_exceeded", "{e}");
}

const OPENAI_STREAM: &str = r#"
import json, sys
import openai

client = openai.OpenAI(base_url=sys.argv[1], api_key="sk-openai-stream", max_retries=0)
messages = [{"role": "user", "content": "hello"}]
stream = client.chat.completions.create(
    model="tok-model", messages=messages, stream=True,
    stream_options={"include_usage": True}, extra_body={"test_usage": 77})
text, usage = "", None
for chunk in stream:
    if chunk.choices:
        text += chunk.choices[0].delta.content or ""
    if chunk.usage:
        usage = chunk.usage.total_tokens
raw = client.chat.completions.with_raw_response.create(
    model="tok-model", messages=messages, extra_body={"test_usage": 5})
print(json.dumps({"text": text, "usage": usage,
                  "remaining": int(raw.headers["x-ratelimit-remaining-tokens"]),
                  "reserved": int(raw.headers["x-test-reserved"])}))
"#;

/// The official `openai` client's stream with `include_usage` settles to
/// its usage before its next call.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openai_clients_stream_settles_to_its_usage() {
    let (base, _) = token_app().await;
    let Some(out) = with_openai(OPENAI_STREAM, &format!("{base}/v1")).await else {
        return;
    };
    assert_eq!(out["text"], "hello", "{out}");
    assert_eq!(out["usage"], 77, "{out}");
    let reserved = out["reserved"].as_u64().unwrap();
    assert_eq!(
        out["remaining"].as_u64().unwrap(),
        5000 - 77 - reserved,
        "{out}"
    );
}

// In flight: at most N of a key's requests running, each released when its
// response ends, however it ends.

const IN_FLIGHT_POLICY: &str = r#"
[models]
"held-model" = { region = "EU" }

[tiers.developer]
"held-model" = { rpm = 10000, rpd = 1000000, max_in_flight = 2 }
"#;

/// What the in-flight tests' inner service runs: its requests per account
/// now and the most at once, and the gates its gated streams wait at.
#[derive(Clone, Default)]
struct Streams {
    running: Arc<std::sync::Mutex<std::collections::HashMap<String, (u32, u32)>>>,
    gates: Arc<std::sync::Mutex<std::collections::HashMap<String, Arc<tokio::sync::Notify>>>>,
}

/// One request the inner service is running, until dropped.
struct Running(Streams, String);

impl Drop for Running {
    fn drop(&mut self) {
        self.0.running.lock().unwrap().get_mut(&self.1).unwrap().0 -= 1;
    }
}

impl Streams {
    fn enter(&self, account: &str) -> Running {
        let mut all = self.running.lock().unwrap();
        let (now, peak) = all.entry(account.to_string()).or_default();
        *now += 1;
        *peak = (*peak).max(*now);
        Running(self.clone(), account.to_string())
    }

    /// (running now, the most at once) for `account`.
    fn of(&self, account: &str) -> (u32, u32) {
        let all = self.running.lock().unwrap();
        all.get(account).copied().unwrap_or_default()
    }

    /// The gate named `name` (its `notify_one` is kept until a stream
    /// waits, so opening a gate before its stream reaches it is no race).
    fn gate(&self, name: &str) -> Arc<tokio::sync::Notify> {
        let mut gates = self.gates.lock().unwrap();
        gates.entry(name.to_string()).or_default().clone()
    }
}

/// The inner service of the in-flight tests: a chat completion, streamed
/// (SSE) when `stream`: a first chunk, then, with `test_gate`, waits at that
/// gate; with `test_until_gone`, sends a chunk every 20 ms until its client
/// is gone; else `test_chunks` more chunks `test_pause_ms` apart. Counts
/// the requests it runs per account from its call until its last chunk is
/// sent (before the body's end reaches the layer, which releases then).
async fn slow_streams(axum::Extension(s): axum::Extension<Streams>, req: Request) -> Response {
    let account = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or_default()
        .to_string();
    let running = s.enter(&account);
    let body = axum::body::to_bytes(req.into_body(), usize::MAX)
        .await
        .unwrap();
    let v: Value = serde_json::from_slice(&body).unwrap();
    if v["stream"] != true {
        drop(running);
        let c = json!({
            "id": "chatcmpl-held",
            "object": "chat.completion",
            "created": NOW / 1000,
            "model": "held-model",
            "choices": [{
                "index": 0,
                "message": {"role": "assistant", "content": "canned"},
                "finish_reason": "stop",
            }],
        });
        let mut res = Response::new(Body::from(c.to_string()));
        res.headers_mut()
            .insert("content-type", HeaderValue::from_static("application/json"));
        return res;
    }
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tokio::spawn(async move {
        let _ = tx.send(Ok(sse_chunk(Some("hel"), None))).await;
        if let Some(name) = v["test_gate"].as_str() {
            s.gate(name).notified().await;
        }
        if v["test_until_gone"] == true {
            for _ in 0..3000 {
                if tx.send(Ok(sse_chunk(Some("."), None))).await.is_err() {
                    return;
                }
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
            return;
        }
        let pause = std::time::Duration::from_millis(v["test_pause_ms"].as_u64().unwrap_or(0));
        for _ in 0..v["test_chunks"].as_u64().unwrap_or(1) {
            tokio::time::sleep(pause).await;
            let _ = tx.send(Ok(sse_chunk(Some("lo"), None))).await;
        }
        let _ = tx.send(Ok("data: [DONE]\n\n".into())).await;
        // Done before the body ends: the layer sees the end only once
        // every sender is gone.
        drop(running);
        drop(tx);
    });
    let mut res = Response::new(Body::new(Chunks(rx)));
    res.headers_mut().insert(
        "content-type",
        HeaderValue::from_static("text/event-stream"),
    );
    res
}

async fn in_flight_app() -> (String, Streams, Arc<Limiter>) {
    let policy = Policy::parse(IN_FLIGHT_POLICY, "in-flight").unwrap();
    let limiter = Arc::new(Limiter::new(&policy, 1024).unwrap());
    let streams = Streams::default();
    let app = Router::new()
        .route("/v1/chat/completions", post(slow_streams))
        .layer(axum::Extension(streams.clone()))
        .layer(RateLimitLayer::new(limiter.clone(), bearer_token).clock(|| NOW));
    (serve(app).await, streams, limiter)
}

fn held_body(extra: Value) -> String {
    let mut b = json!({"model": "held-model", "messages": [{"role": "user", "content": "hi"}]});
    for (k, v) in extra.as_object().unwrap() {
        b[k] = v.clone();
    }
    b.to_string()
}

/// The table's in-flight counts: (running, completed, aborted, refused).
fn in_flight(l: &Limiter) -> (u64, u64, u64, u64) {
    let f = l.stats(NOW).in_flight.unwrap();
    (f.in_use, f.completed, f.aborted, f.refused)
}

/// A request written by hand on a connection of its own, and what came
/// back until `until` did (blocking I/O, off the runtime); the connection
/// is kept open until the caller drops it.
async fn sent(base: &str, request: String, until: &'static str) -> (std::net::TcpStream, String) {
    let addr = base.strip_prefix("http://").unwrap().to_string();
    tokio::task::spawn_blocking(move || {
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        s.write_all(request.as_bytes()).unwrap();
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        while !String::from_utf8_lossy(&got).contains(until) {
            let n = s.read(&mut buf).unwrap();
            assert!(n > 0, "closed early: {}", String::from_utf8_lossy(&got));
            got.extend_from_slice(&buf[..n]);
        }
        (s, String::from_utf8_lossy(&got).to_lowercase())
    })
    .await
    .unwrap()
}

/// Waits (10 s at most) for `done`: a release that follows a client gone
/// comes when the server notices.
async fn eventually(what: &str, done: impl Fn() -> bool) {
    for _ in 0..1000 {
        if done() {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    panic!("not within 10 s: {what}");
}

/// Two streams of a key run; the third request is refused at once (429,
/// no retry-after); once one stream ends, the next is admitted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_streams_run_and_the_third_waits_for_one_to_end() {
    let (base, streams, l) = in_flight_app().await;
    let gated = |name: &str| held_body(json!({"stream": true, "test_gate": name}));
    let mut a = tok(&base, "sk-two", &gated("a")).await;
    assert_eq!(a.status(), 200);
    assert_eq!(num(&a, "x-ratelimit-limit-in-flight"), 2);
    assert_eq!(num(&a, "x-ratelimit-in-flight"), 1);
    assert!(a.chunk().await.unwrap().is_some(), "a is streaming");
    let mut b = tok(&base, "sk-two", &gated("b")).await;
    assert_eq!(num(&b, "x-ratelimit-in-flight"), 2);
    assert!(b.chunk().await.unwrap().is_some(), "b is streaming");

    let c = tok(&base, "sk-two", &held_body(json!({"stream": true}))).await;
    assert_eq!(c.status(), 429);
    assert_eq!(num(&c, "x-ratelimit-limit-in-flight"), 2);
    assert_eq!(num(&c, "x-ratelimit-in-flight"), 2);
    assert_eq!(header(&c, "retry-after"), None);
    assert_eq!(header(&c, "x-should-retry").as_deref(), Some("true"));
    let e: Value = serde_json::from_slice(&c.bytes().await.unwrap()).unwrap();
    assert_eq!(e["error"]["code"], "in_flight_limit_exceeded", "{e}");
    assert_eq!(e["error"]["type"], "requests", "{e}");
    assert_eq!(streams.of("sk-two"), (2, 2), "the third never reached it");
    // Per key: another account's request runs meanwhile.
    let other = tok(&base, "sk-other", &held_body(json!({}))).await;
    assert_eq!(num(&other, "x-ratelimit-in-flight"), 1);
    other.bytes().await.unwrap();
    assert_eq!(in_flight(&l), (2, 1, 0, 1));

    // a ends: released as its body ends, before its client has read it.
    streams.gate("a").notify_one();
    let rest = a.bytes().await.unwrap();
    assert!(rest.ends_with(b"data: [DONE]\n\n"), "{rest:?}");
    assert_eq!(in_flight(&l), (1, 2, 0, 1));
    let mut d = tok(&base, "sk-two", &gated("d")).await;
    assert_eq!(d.status(), 200);
    assert_eq!(num(&d, "x-ratelimit-in-flight"), 2);
    assert!(d.chunk().await.unwrap().is_some());
    streams.gate("b").notify_one();
    streams.gate("d").notify_one();
    b.bytes().await.unwrap();
    d.bytes().await.unwrap();
    assert_eq!(in_flight(&l), (0, 4, 0, 1));
    assert_eq!(streams.of("sk-two"), (0, 2));
}

/// A client that disconnects mid-stream (raw HTTP/1.1 over TCP): the
/// server drops the response body, and the unit comes back, counted as
/// aborted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_gone_mid_stream_gives_its_unit_back() {
    let (base, streams, l) = in_flight_app().await;
    let body = held_body(json!({"stream": true, "test_until_gone": true}));
    let req = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: test\r\nAuthorization: Bearer sk-raw\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let (s, text) = sent(&base, req, "\"hel\"").await;
    assert!(text.starts_with("http/1.1 200"), "{text}");
    assert!(text.contains("\r\nx-ratelimit-in-flight: 1\r\n"), "{text}");
    assert_eq!(in_flight(&l), (1, 0, 0, 0));
    assert_eq!(streams.of("sk-raw").0, 1);
    drop(s);
    eventually("released as aborted", || in_flight(&l) == (0, 0, 1, 0)).await;
    // The key's next request finds no unit taken.
    let res = tok(&base, "sk-raw", &held_body(json!({}))).await;
    assert_eq!(num(&res, "x-ratelimit-in-flight"), 1);
    res.bytes().await.unwrap();
    assert_eq!(in_flight(&l), (0, 1, 1, 0));
}

/// The inner service of [`other_endings_release_too`], by path: `/fail`
/// fails (an error for hyper, which closes the connection), `/stall` never
/// answers (its future is dropped with the connection), `/empty` answers
/// 204 without a body, `/stream` sends chunks until its client is gone.
#[derive(Clone, Default)]
struct Endings {
    stalled: Arc<tokio::sync::Notify>,
}

type BoxFuture<T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send>>;

impl tower::Service<Request> for Endings {
    type Response = Response;
    type Error = std::io::Error;
    type Future = BoxFuture<Result<Response, std::io::Error>>;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), std::io::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request) -> Self::Future {
        let stalled = self.stalled.clone();
        Box::pin(async move {
            match req.uri().path() {
                "/fail" => Err(std::io::Error::other("the upstream failed")),
                "/stall" => {
                    stalled.notify_one();
                    std::future::pending().await
                }
                "/stream" => {
                    let (tx, rx) = tokio::sync::mpsc::channel(1);
                    tokio::spawn(async move {
                        while tx.send(Ok(sse_chunk(Some("."), None))).await.is_ok() {
                            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                        }
                    });
                    Ok(Response::new(Body::new(Chunks(rx))))
                }
                _ => Ok(Response::builder().status(204).body(Body::empty()).unwrap()),
            }
        })
    }
}

/// Serves `svc` with hyper's own HTTP/1.1 server, which (unlike
/// `axum::serve`) takes a service that fails.
async fn serve_hyper(svc: tollgate::tower::RateLimit<Endings>) -> String {
    use tower::Service;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            let svc = svc.clone();
            tokio::spawn(async move {
                let hs =
                    hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                        let mut svc = svc.clone();
                        async move {
                            std::future::poll_fn(|cx| svc.poll_ready(cx)).await?;
                            svc.call(req.map(Body::new)).await
                        }
                    });
                let io = hyper_util::rt::TokioIo::new(stream);
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(io, hs)
                    .await;
            });
        }
    });
    format!("http://{addr}")
}

/// The other ways a request ends, over hyper: the inner service failing
/// and its response future dropped (both aborted, no response), a body
/// dropped mid-way by a client gone (aborted), and a response without a
/// body (completed).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_endings_release_too() {
    use tower::Layer;
    let policy = Policy::parse(IN_FLIGHT_POLICY, "in-flight").unwrap();
    let l = Arc::new(Limiter::new(&policy, 1024).unwrap());
    let inner = Endings::default();
    let svc = RateLimitLayer::new(l.clone(), bearer_token)
        .clock(|| NOW)
        .layer(inner.clone());
    let base = serve_hyper(svc).await;
    let body = held_body(json!({}));
    let client = reqwest::Client::new();
    let post = |path: &str| {
        client
            .post(format!("{base}{path}"))
            .bearer_auth("sk-end")
            .body(body.clone())
            .send()
    };

    // The inner service fails: hyper answers nothing and closes.
    assert!(post("/fail").await.is_err());
    eventually("a failed service released", || {
        in_flight(&l) == (0, 0, 1, 0)
    })
    .await;

    // The response future dropped: the client goes away while the inner
    // service has not answered, and hyper drops the request's future.
    let req = format!(
        "POST /stall HTTP/1.1\r\nHost: test\r\nAuthorization: Bearer sk-end\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let (s, _) = sent(&base, req, "").await;
    inner.stalled.notified().await;
    assert_eq!(in_flight(&l), (1, 0, 1, 0));
    drop(s);
    eventually("a dropped future released", || {
        in_flight(&l) == (0, 0, 2, 0)
    })
    .await;

    // A body dropped mid-way: the client reads a chunk and goes.
    let mut res = post("/stream").await.unwrap();
    assert_eq!(num(&res, "x-ratelimit-in-flight"), 1);
    res.chunk().await.unwrap().unwrap();
    drop(res);
    eventually("a dropped body released", || in_flight(&l) == (0, 0, 3, 0)).await;

    // A response without a body: its end.
    let res = post("/empty").await.unwrap();
    assert_eq!(res.status(), 204);
    assert_eq!(num(&res, "x-ratelimit-in-flight"), 1);
    eventually("an empty response released", || {
        in_flight(&l) == (0, 1, 3, 0)
    })
    .await;

    // Two held at once still refuse a third: nothing was lost on the way.
    let (a, b) = (
        post("/stream").await.unwrap(),
        post("/stream").await.unwrap(),
    );
    assert_eq!(post("/empty").await.unwrap().status(), 429);
    drop((a, b));
    eventually("both released", || in_flight(&l) == (0, 1, 5, 1)).await;
}

/// Many clients racing on two keys, each stream a few chunks long: the
/// inner service never runs more than two of a key's requests at once,
/// and every admitted one is released, completed.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn racing_clients_never_run_more_than_the_limit() {
    let (base, streams, l) = in_flight_app().await;
    let body = held_body(json!({"stream": true, "test_chunks": 3, "test_pause_ms": 3}));
    let client = reqwest::Client::new();
    let mut set = tokio::task::JoinSet::new();
    for i in 0..32 {
        let (client, base, body) = (client.clone(), base.clone(), body.clone());
        let key = if i % 2 == 0 { "sk-race-a" } else { "sk-race-b" };
        set.spawn(async move {
            // Two streams read to their end each, refusals retried.
            let (mut admitted, mut refused) = (0u64, 0u64);
            while admitted < 2 {
                let res = client
                    .post(format!("{base}/v1/chat/completions"))
                    .bearer_auth(key)
                    .body(body.clone())
                    .send()
                    .await
                    .unwrap();
                let in_use = num(&res, "x-ratelimit-in-flight");
                match res.status().as_u16() {
                    200 => {
                        assert!((1..=2).contains(&in_use), "{in_use}");
                        let text = res.bytes().await.unwrap();
                        assert!(text.ends_with(b"data: [DONE]\n\n"));
                        admitted += 1;
                    }
                    429 => {
                        assert_eq!(in_use, 2);
                        refused += 1;
                        tokio::time::sleep(std::time::Duration::from_millis(1)).await;
                    }
                    s => panic!("{s}"),
                }
                assert!(refused < 100_000, "starved");
            }
            (admitted, refused)
        });
    }
    let (mut admitted, mut refused) = (0, 0);
    while let Some(r) = set.join_next().await {
        let (a, r) = r.unwrap();
        admitted += a;
        refused += r;
    }
    assert_eq!(admitted, 64);
    assert!(refused > 0, "the clients did race");
    for key in ["sk-race-a", "sk-race-b"] {
        assert_eq!(streams.of(key), (0, 2), "{key}: (running, most at once)");
    }
    assert_eq!(in_flight(&l), (0, 64, 0, refused));
}

const OPENAI_HELD_PY: &str = r#"
import json, sys, time
import openai

client = openai.OpenAI(base_url=sys.argv[1], api_key=sys.argv[2], max_retries=0)
messages = [{"role": "user", "content": "hi"}]

def open_stream():
    s = client.chat.completions.create(model="held-model", messages=messages, stream=True,
                                       extra_body={"test_until_gone": True})
    return s, next(iter(s)).choices[0].delta.content

out = {}
held = [open_stream(), open_stream()]
out["first"] = [c for _, c in held]
try:
    client.chat.completions.create(model="held-model", messages=messages)
    out["third"] = "admitted"
except openai.RateLimitError as e:
    out["third"] = type(e).__name__
    out["status"] = e.status_code
    out["code"] = e.code
    out["headers"] = {k: e.response.headers.get(k) for k in
                      ["x-ratelimit-limit-in-flight", "x-ratelimit-in-flight",
                       "retry-after", "x-should-retry"]}
held[0][0].close()
for tries in range(1, 201):
    try:
        c = client.chat.completions.create(model="held-model", messages=messages)
        out["after_close"] = {"tries": tries, "content": c.choices[0].message.content}
        break
    except openai.RateLimitError:
        time.sleep(0.05)
held[1][0].close()
print(json.dumps(out))
"#;

const OPENAI_HELD_NODE: &str = r#"
import OpenAI from 'openai';

const [base, key] = process.argv.slice(-2);
const client = new OpenAI({ baseURL: base, apiKey: key, maxRetries: 0 });
const messages = [{ role: 'user', content: 'hi' }];

async function openStream() {
  const s = await client.chat.completions.create({
    model: 'held-model', messages, stream: true, test_until_gone: true,
  });
  const first = await s[Symbol.asyncIterator]().next();
  return { s, first: first.value.choices[0].delta.content };
}

const out = {};
const held = [await openStream(), await openStream()];
out.first = held.map((h) => h.first);
try {
  await client.chat.completions.create({ model: 'held-model', messages });
  out.third = 'admitted';
} catch (e) {
  out.third = e.constructor.name;
  out.status = e.status ?? null;
  out.code = e.code ?? null;
  const get = (k) => (typeof e.headers?.get === 'function' ? e.headers.get(k) : e.headers?.[k]) ?? null;
  out.headers = Object.fromEntries(['x-ratelimit-limit-in-flight', 'x-ratelimit-in-flight',
    'retry-after', 'x-should-retry'].map((k) => [k, get(k)]));
}
held[0].s.controller.abort();
for (let tries = 1; tries <= 200; tries++) {
  try {
    const c = await client.chat.completions.create({ model: 'held-model', messages });
    out.after_close = { tries, content: c.choices[0].message.content };
    break;
  } catch (e) {
    if (e.status !== 429) throw e;
    await new Promise((r) => setTimeout(r, 50));
  }
}
held[1].s.controller.abort();
console.log(JSON.stringify(out));
process.exit(0);
"#;

/// The official clients, Python's and Node's, each holding two streams
/// open: the third call raises RateLimitError (in_flight_limit_exceeded,
/// no retry-after); once the client closes a stream, a call gets through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn official_clients_streaming_two_held_the_third_refused() {
    let (base, _, l) = in_flight_app().await;
    let py = python_with_openai().expect("no python3 with openai: run tests/setup.sh");
    let dir = clients_dir();
    assert!(
        dir.join("node_modules/openai").exists(),
        "no openai for Node in {}: run tests/setup.sh",
        dir.display()
    );
    let url = format!("{base}/v1");
    let runs: [(&str, PathBuf, Vec<&str>); 2] = [
        ("python", py, vec!["-c", OPENAI_HELD_PY]),
        (
            "node",
            PathBuf::from("node"),
            vec!["--input-type=module", "-e", OPENAI_HELD_NODE],
        ),
    ];
    let mut running = Vec::new();
    for (name, exe, args) in runs {
        let key = format!("sk-{name}-held");
        let child = tokio::process::Command::new(exe)
            .args(args)
            .args([url.as_str(), key.as_str()])
            // Node finds the pinned package from here.
            .current_dir(&dir)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        running.push((name, child));
    }
    let mut out = Vec::new();
    for (name, child) in running {
        let done = tokio::time::timeout(WAIT, child.wait_with_output()).await;
        let got = done.ok().map(|d| {
            let d = d.unwrap();
            let stdout = String::from_utf8_lossy(&d.stdout);
            assert!(
                d.status.success(),
                "{name}: {stdout}\n{}",
                String::from_utf8_lossy(&d.stderr)
            );
            serde_json::from_str::<Value>(&stdout).unwrap_or_else(|e| panic!("{e}: {stdout}"))
        });
        out.push((name, got));
    }
    each_client(&out, |got| {
        ensure!(got["first"] == json!(["hel", "hel"]), "two streams");
        ensure!(
            (&got["third"], &got["status"], &got["code"])
                == (
                    &json!("RateLimitError"),
                    &json!(429),
                    &json!("in_flight_limit_exceeded")
                ),
            "the third not refused for in-flight"
        );
        ensure!(
            got["headers"]
                == json!({
                    "x-ratelimit-limit-in-flight": "2",
                    "x-ratelimit-in-flight": "2",
                    "retry-after": null,
                    "x-should-retry": "true",
                }),
            "headers"
        );
        ensure!(
            got["after_close"]["content"] == "canned",
            "no call got through after a stream closed"
        );
        Ok(())
    });
    // Every stream the clients closed came back, as aborted.
    eventually("every unit back", || {
        let (in_use, completed, aborted, refused) = in_flight(&l);
        in_use == 0 && aborted == 4 && completed >= 2 && refused >= 2
    })
    .await;
}
