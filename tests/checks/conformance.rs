//! The conformance table (tests/conformance.json) through the Rust API
//! (`Limiter::answer`) and through the C ABI (`tg_answer_request`, the
//! streaming `tg_body_scan_*` + `tg_answer_for` path nginx takes). Every
//! binding's suite runs the same table through its own stack.

use std::ffi::{c_char, c_int, c_void};

use crate::conformance_table;

use conformance_table::{check, request, table, Got, NOW};
use serde_json::Value;
use tollgate::answer::{Answer, HttpRequest, Options};
use tollgate::ffi::*;
use tollgate::Limiter;

fn from_answer(a: &Answer) -> Got {
    let mut body = String::new();
    a.write_body(&mut body).unwrap();
    Got {
        status: if a.passes() { 200 } else { a.status() },
        outcome: a.outcome().name().to_string(),
        headers: a
            .headers()
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect(),
        body: (!a.passes()).then_some(body),
    }
}

#[test]
fn the_rust_api_answers_every_case() {
    let (policy, cases) = table();
    let l = Limiter::new(&policy, 1024).unwrap();
    for case in &cases {
        let (method, account, tier, body) = request(case);
        let req = HttpRequest {
            method: method.as_bytes(),
            account: account.as_deref().map(str::as_bytes),
            tier: tier.as_bytes(),
            body: body.as_bytes(),
            cost: 1,
        };
        // Each earlier request runs to its end (released); the held ones
        // run until the case's answer is in.
        for _ in 0..case["before"].as_u64().unwrap_or(0) {
            release(&l, &l.answer(&req, NOW, &Options::default()));
        }
        let held: Vec<Answer> = (0..held(case))
            .map(|_| l.answer(&req, NOW, &Options::default()))
            .collect();
        let a = l.answer(&req, NOW, &Options::default());
        check(case, &from_answer(&a));
        for h in held.iter().chain([&a]) {
            release(&l, h);
        }
    }
}

fn held(case: &Value) -> u64 {
    case["held"].as_u64().unwrap_or(0)
}

/// Ends an answered request: its in-flight unit, if admitted, goes back.
fn release(l: &Limiter, a: &Answer) {
    if let Some(adm) = a
        .decision()
        .and_then(|d| d.in_flight)
        .and_then(|f| f.admission)
    {
        l.release(adm, tollgate::Ending::Complete).unwrap();
    }
}

fn release_c(l: *mut tg_limiter, a: &tg_answer) {
    if a.in_flight.admission != 0 {
        assert_eq!(
            tg_release(
                l,
                a.in_flight.admission,
                TG_END_COMPLETE,
                std::ptr::null_mut()
            ),
            TG_OK
        );
    }
}

extern "C" fn push(
    ctx: *mut c_void,
    name: *const c_char,
    name_len: usize,
    value: *const c_char,
    value_len: usize,
) -> c_int {
    // SAFETY: ctx is the caller's Vec; name/value point at len bytes.
    unsafe {
        let out = &mut *ctx.cast::<Vec<(String, String)>>();
        let s = |p: *const c_char, n| {
            String::from_utf8(std::slice::from_raw_parts(p.cast::<u8>(), n).to_vec()).unwrap()
        };
        out.push((s(name, name_len), s(value, value_len)));
    }
    0
}

fn blank_answer() -> tg_answer {
    // SAFETY: tg_answer is plain data; all-zero is a valid value.
    let mut a: tg_answer = unsafe { std::mem::zeroed() };
    a.size = std::mem::size_of::<tg_answer>() as u32;
    a
}

fn from_c(a: &tg_answer) -> Got {
    let mut headers = Vec::new();
    assert_eq!(
        tg_answer_headers(
            a,
            Some(push),
            (&mut headers as *mut Vec<(String, String)>).cast()
        ),
        TG_OK
    );
    let mut buf = vec![0u8; TG_ANSWER_BODY_MAX as usize];
    let mut n = 0;
    assert_eq!(
        tg_answer_body(a, buf.as_mut_ptr().cast(), buf.len(), &mut n),
        TG_OK
    );
    // SAFETY: tg_outcome_name returns a static NUL-terminated string.
    let outcome = unsafe { std::ffi::CStr::from_ptr(tg_outcome_name(a.outcome)) };
    Got {
        status: if a.http_status == 0 {
            200
        } else {
            a.http_status as u16
        },
        outcome: outcome.to_str().unwrap().into(),
        headers,
        body: (a.http_status != 0).then(|| String::from_utf8(buf[..n].to_vec()).unwrap()),
    }
}

fn c_limiter() -> *mut tg_limiter {
    let path = std::ffi::CString::new(format!(
        "{}/tests/conformance.toml",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap();
    let mut p = std::ptr::null_mut();
    let mut err = [0 as c_char; 256];
    assert_eq!(
        tg_policy_load(path.as_ptr(), &mut p, err.as_mut_ptr(), err.len()),
        TG_OK
    );
    let mut l = std::ptr::null_mut();
    assert_eq!(tg_limiter_new(p, 1024, &mut l), TG_OK);
    tg_policy_free(p);
    l
}

#[test]
fn the_c_abi_answers_every_case_in_one_call() {
    let (_, cases) = table();
    let l = c_limiter();
    for case in &cases {
        let (method, account, tier, body) = request(case);
        let req = tg_http_request {
            size: std::mem::size_of::<tg_http_request>() as u32,
            cost: 1,
            method: method.as_ptr().cast(),
            method_len: method.len(),
            account: account
                .as_deref()
                .map_or(std::ptr::null(), |a| a.as_ptr().cast()),
            account_len: account.as_deref().map_or(0, str::len),
            tier: tier.as_ptr().cast(),
            tier_len: tier.len(),
            body: body.as_ptr().cast(),
            body_len: body.len(),
        };
        let mut answers = Vec::new();
        for i in 0..=case["before"].as_u64().unwrap_or(0) + held(case) {
            let mut a = blank_answer();
            assert_eq!(tg_answer_request(l, &req, NOW, 0, 0, &mut a), TG_OK);
            if i < case["before"].as_u64().unwrap_or(0) {
                release_c(l, &a);
            } else {
                answers.push(a);
            }
        }
        check(case, &from_c(answers.last().unwrap()));
        answers.iter().for_each(|a| release_c(l, a));
    }
    tg_limiter_free(l);
}

/// The path nginx takes: the body fed in small chunks to the scanner, the
/// tier parsed, the token estimate from the scan's facts, tg_check_tokens,
/// and tg_answer_for_tokens with what happened.
#[test]
fn the_c_abi_answers_every_case_step_by_step() {
    let (_, cases) = table();
    let l = c_limiter();
    let mut mem = vec![0u64; tg_body_scan_size().div_ceil(8)];
    for case in &cases {
        let (method, account, tier, body) = request(case);
        type Units<'a> = (&'a tg_decision, &'a tg_tokens, &'a tg_in_flight);
        let answer = |status: tg_status, d: Option<Units<'_>>, model: &[u8]| {
            let mut a = blank_answer();
            let (d, t, f) = d.map_or(
                (std::ptr::null(), std::ptr::null(), std::ptr::null()),
                |(d, t, f)| {
                    (
                        d as *const tg_decision,
                        t as *const tg_tokens,
                        f as *const tg_in_flight,
                    )
                },
            );
            let (m, n) = (model.as_ptr().cast(), model.len());
            assert_eq!(
                tg_answer_for_units(status, d, t, f, m, n, 0, 0, &mut a),
                TG_OK
            );
            a
        };
        let mut answers = Vec::new();
        let before = case["before"].as_u64().unwrap_or(0);
        for i in 0..=before + held(case) {
            let a = if tg_method_limited(method.as_ptr().cast(), method.len()) == 0 {
                answer(TG_E_NOT_LIMITED, None, b"")
            } else if account.is_none() {
                answer(TG_E_NO_ACCOUNT, None, b"")
            } else {
                let mut scan = std::ptr::null_mut();
                assert_eq!(
                    tg_body_scan_init(mem.as_mut_ptr().cast(), mem.len() * 8, &mut scan),
                    TG_OK
                );
                let mut st = TG_OK;
                for chunk in body.as_bytes().chunks(7) {
                    st = tg_body_scan_feed(scan, chunk.as_ptr(), chunk.len());
                    if st != TG_OK {
                        break;
                    }
                }
                let (mut m, mut mlen) = (std::ptr::null(), 0usize);
                if st == TG_OK {
                    st = tg_body_scan_finish(scan, &mut m, &mut mlen);
                }
                if st != TG_OK {
                    answer(st, None, b"")
                } else {
                    // SAFETY: the scanner's model, valid until the next init.
                    let model = unsafe { std::slice::from_raw_parts(m, mlen) }.to_vec();
                    let mut t = 0;
                    let ts = tg_tier_parse(tier.as_ptr().cast(), tier.len(), &mut t);
                    if ts != TG_OK {
                        answer(ts, None, &model)
                    } else {
                        let acct = account.as_deref().unwrap();
                        // SAFETY: tg_request is plain data; zero is valid.
                        let mut r: tg_request = unsafe { std::mem::zeroed() };
                        r.account = acct.as_ptr().cast();
                        r.account_len = acct.len();
                        r.model = model.as_ptr().cast();
                        r.model_len = model.len();
                        r.tier = t;
                        r.cost = 1;
                        r.size = std::mem::size_of::<tg_request>() as u32;
                        // SAFETY: plain data; zero is valid.
                        let mut facts: tg_body_scan_facts = unsafe { std::mem::zeroed() };
                        assert_eq!(tg_body_facts(scan, &mut facts), TG_OK);
                        assert_eq!(tg_limiter_estimate_tokens(l, &facts, &mut r.tokens), TG_OK);
                        // SAFETY: tg_decision and tg_tokens are plain data;
                        // zero is valid.
                        let mut d: tg_decision = unsafe { std::mem::zeroed() };
                        let mut tk: tg_tokens = unsafe { std::mem::zeroed() };
                        // SAFETY: plain data; zero is valid.
                        let mut f: tg_in_flight = unsafe { std::mem::zeroed() };
                        match tg_check_units(l, &r, NOW, &mut d, &mut tk, &mut f) {
                            TG_OK => answer(TG_OK, Some((&d, &tk, &f)), &model),
                            s => answer(s, None, &model),
                        }
                    }
                }
            };
            if i < before {
                release_c(l, &a);
            } else {
                answers.push(a);
            }
        }
        check(case, &from_c(answers.last().unwrap()));
        answers.iter().for_each(|a| release_c(l, a));
    }
    tg_limiter_free(l);
}

#[test]
fn a_changed_answer_is_seen() {
    // The table is not vacuous: a wrong expectation fails.
    let (_, cases) = table();
    let mut case = cases[4].clone();
    case["expect"]["body"]["error"]["code"] = Value::String("something_else".into());
    let (policy, _) = table();
    let l = Limiter::new(&policy, 64).unwrap();
    let (method, account, tier, body) = request(&case);
    let req = HttpRequest {
        method: method.as_bytes(),
        account: account.as_deref().map(str::as_bytes),
        tier: tier.as_bytes(),
        body: body.as_bytes(),
        cost: 1,
    };
    let got = from_answer(&l.answer(&req, NOW, &Options::default()));
    assert!(std::panic::catch_unwind(|| check(&case, &got)).is_err());
}
