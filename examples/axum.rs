//! An OpenAI-shaped gateway in axum behind `tollgate::tower::RateLimitLayer`:
//! `POST /v1/chat/completions` is limited per (API key, model) and answers a
//! small canned completion (SSE with `"stream": true`); `GET /v1/models` is
//! not limited. With a policy that has token limits
//! (`--policy policy/infercom-tokens.toml`) each request reserves its
//! tokens, settled by the layer from the completion's usage.
//!
//!   cargo run --release --features tower --example axum -- --help

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;

use axum::extract::{Extension, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};
use tollgate::answer::Answer;
use tollgate::tower::{bearer_digest, RateLimitLayer, MAX_BODY_BYTES};
use tollgate::{Decision, Limiter, LimiterOptions, Policy, Tier};

const USAGE: &str = "\
An OpenAI-shaped gateway limited by tollgate (RPM and RPD per API key and model).

Usage: axum [--listen ADDR] [--policy FILE] [--table FILE] [--slots N] [--tier NAME]
            [--redis URL]

  --listen ADDR   address to listen on (default 127.0.0.1:8080; port 0 picks a
                  free one); the address is printed as `listening on http://ADDR`
  --policy FILE   the policy TOML (default: the built-in Infercom policy)
  --table FILE    keep the counters in this file, shared by every process that
                  opens it (created with --slots if missing; /dev/shm/... is RAM);
                  default: in this process's memory
  --slots N       table slots (default 100000: 1.25 x the key pairs of a day)
  --tier NAME     the tier of every request: free, developer, enterprise
                  (default developer)
  --redis URL     join the table to Redis (redis://host:port/db, or
                  redis+cluster://h1:port,h2:port): one quota per key and model
                  across every gateway joined to it. A new --table file is made
                  for leases. Requests that must wait for Redis are decided
                  off the async runtime, at most its 50 ms deadline

Routes:
  POST /v1/chat/completions   limited: 429 over a limit, 404 unknown model, 401 no
                              API key, 400 bad body, 413 body over 4 MiB; admitted
                              requests get a canned completion (SSE with
                              \"stream\": true) and the six x-ratelimit-*
                              headers (and the six token ones on a policy with
                              tpm/tpd, settled from the completion's usage)
  GET  /v1/models             the policy's models, not limited

The account is a digest of the bearer key (tollgate digest KEY finds it).

Try it:
  curl -s localhost:8080/v1/chat/completions -H 'Authorization: Bearer sk-1' \\
       -d '{\"model\":\"DeepSeek-V3.1\",\"messages\":[]}' -i
";

struct Args {
    listen: SocketAddr,
    policy: Option<String>,
    table: Option<String>,
    slots: u32,
    tier: Tier,
    redis: Option<String>,
}

fn parse_args() -> Result<Option<Args>, String> {
    let mut a = Args {
        listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
        policy: None,
        table: None,
        slots: 100_000,
        tier: Tier::Developer,
        redis: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        if flag == "-h" || flag == "--help" {
            return Ok(None);
        }
        let value = it
            .next()
            .ok_or_else(|| format!("{flag} needs a value (see --help)"))?;
        match flag.as_str() {
            "--listen" => {
                a.listen = value
                    .parse()
                    .map_err(|e| format!("--listen {value}: {e} (want e.g. 127.0.0.1:8080)"))?
            }
            "--policy" => a.policy = Some(value),
            "--table" => a.table = Some(value),
            "--slots" => a.slots = value.parse().map_err(|e| format!("--slots {value}: {e}"))?,
            "--tier" => {
                a.tier = Tier::parse(&value).ok_or_else(|| {
                    format!("--tier {value}: not a tier (free, developer, enterprise)")
                })?
            }
            "--redis" => a.redis = Some(value),
            _ => return Err(format!("unknown argument {flag} (see --help)")),
        }
    }
    Ok(Some(a))
}

/// The gateway: the limited completion route and the unlimited listing.
fn router(limiter: Arc<Limiter>, tier: Tier) -> Router {
    let limited = Router::new()
        .route("/v1/chat/completions", post(completion))
        .layer(
            RateLimitLayer::new(limiter.clone(), bearer_digest)
                .tier(tier)
                .max_body_bytes(MAX_BODY_BYTES),
        );
    Router::new()
        .route("/v1/models", get(models))
        .with_state(limiter)
        .merge(limited)
}

/// A canned completion for the model the core read from the body (the
/// layer hands its answer and decision to the handler): one JSON document,
/// or server-sent events when the body asks for `"stream": true` (its usage
/// in a last chunk with `stream_options.include_usage`, as OpenAI sends
/// it). Either way the layer reads the usage as the body passes and
/// settles the request's token reservation on a key with token limits.
async fn completion(
    Extension(answer): Extension<Answer>,
    Extension(decision): Extension<Decision>,
    body: axum::body::Bytes,
) -> Response {
    let req: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let model = String::from_utf8_lossy(answer.model()).into_owned();
    let created = tollgate::now_ms() / 1000;
    let id = format!("chatcmpl-tollgate-{created}");
    let content = format!(
        "Hello from the tollgate example: {} of {} requests left this minute.",
        decision.minute.remaining, decision.minute.limit
    );
    let usage = json!({"prompt_tokens": 1, "completion_tokens": 12, "total_tokens": 13});
    if req["stream"] != true {
        return Json(json!({
            "id": id,
            "object": "chat.completion",
            "created": created,
            "model": model,
            "choices": [{
                "index": 0,
                "message": {"role": "assistant", "content": content},
                "finish_reason": "stop",
            }],
            "usage": usage,
        }))
        .into_response();
    }
    let chunk = |choices: Value| {
        json!({
            "id": id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "choices": choices,
        })
    };
    let mut events = vec![
        chunk(
            json!([{"index": 0, "delta": {"role": "assistant", "content": content}, "finish_reason": null}]),
        ),
        chunk(json!([{"index": 0, "delta": {}, "finish_reason": "stop"}])),
    ];
    if req["stream_options"]["include_usage"] == true {
        let mut last = chunk(json!([]));
        last["usage"] = usage;
        events.push(last);
    }
    let mut text: String = events.iter().map(|e| format!("data: {e}\n\n")).collect();
    text.push_str("data: [DONE]\n\n");
    ([(header::CONTENT_TYPE, "text/event-stream")], text).into_response()
}

async fn models(State(limiter): State<Arc<Limiter>>) -> Json<Value> {
    let data: Vec<Value> = limiter
        .policy()
        .models()
        .iter()
        .map(|m| {
            json!({
                "id": m.name,
                "object": "model",
                "created": 0,
                "owned_by": m.developer.as_deref().unwrap_or("tollgate"),
            })
        })
        .collect();
    Json(json!({"object": "list", "data": data}))
}

/// A table of quota leases joined to the Redis at `url`. Redis down is no
/// error: the limiter decides by the down policy until it answers.
#[cfg(feature = "redis")]
fn joined(policy: &Policy, table: Option<&str>, slots: u32, url: &str) -> Result<Limiter, String> {
    let mut limiter = match table {
        Some(path) => LimiterOptions::new()
            .leases(true)
            .create(true)
            .open(policy, path, slots),
        None => LimiterOptions::new().leases(true).build(policy, slots),
    }
    .map_err(|e| e.to_string())?;
    limiter
        .connect(url, tollgate::lease::LeaseOptions::default())
        .map_err(|e| format!("--redis {url}: {e}"))?;
    Ok(limiter)
}

#[cfg(not(feature = "redis"))]
fn joined(_: &Policy, _: Option<&str>, _: u32, _: &str) -> Result<Limiter, String> {
    Err("--redis needs the `redis` feature (--features tower,redis)".into())
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(Some(a)) => a,
        Ok(None) => {
            print!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("axum: {e}");
            return ExitCode::from(2);
        }
    };
    let policy = match &args.policy {
        Some(p) => match Policy::load(p) {
            Ok(p) => p,
            Err(e) => {
                eprintln!("axum: {e}");
                return ExitCode::FAILURE;
            }
        },
        None => Policy::builtin(),
    };
    let limiter = match (&args.table, &args.redis) {
        (Some(path), None) => {
            Limiter::open(&policy, path, args.slots, true).map_err(|e| e.to_string())
        }
        (None, None) => Limiter::new(&policy, args.slots).map_err(|e| e.to_string()),
        (table, Some(url)) => joined(&policy, table.as_deref(), args.slots, url),
    };
    let limiter = match limiter {
        Ok(l) => Arc::new(l),
        Err(e) => {
            eprintln!("axum: {e}");
            return ExitCode::FAILURE;
        }
    };
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("axum: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    rt.block_on(async move {
        let listener = match tokio::net::TcpListener::bind(args.listen).await {
            Ok(l) => l,
            Err(e) => {
                eprintln!("axum: cannot listen on {}: {e}", args.listen);
                return ExitCode::FAILURE;
            }
        };
        match listener.local_addr() {
            Ok(addr) => println!("listening on http://{addr}"),
            Err(e) => eprintln!("axum: {e}"),
        }
        match axum::serve(listener, router(limiter, args.tier)).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("axum: {e}");
                ExitCode::FAILURE
            }
        }
    })
}
