//! The decision path allocates nothing: a counting global allocator sees no
//! allocation across many decisions (hot keys, new keys binding slots,
//! refusals, peeks, errors, rendering).

#[path = "alloc/body.rs"]
mod body;
mod counting;
#[path = "alloc/usage.rs"]
mod usage;

use tollgate::{Limiter, Policy, Request, Tier};

#[test]
fn deciding_allocates_nothing() {
    let l = Limiter::new(&Policy::builtin(), 1 << 16).unwrap();
    let accounts: Vec<String> = (0..10_000).map(|i| format!("account-{i:05}")).collect();
    let t0 = 1_764_237_600_000u64;
    // Warm up this thread's first touch of shared structures.
    l.check(
        &Request::new(b"warm", b"DeepSeek-V3.1", Tier::Developer),
        t0,
    )
    .unwrap();
    let mut buf = [0u8; 512];

    counting::arm();
    let mut allowed = 0u32;
    for round in 0..40u64 {
        let now = t0 + round * 1_000;
        for a in &accounts {
            let r = Request::new(a.as_bytes(), b"DeepSeek-V3.1", Tier::Developer);
            let d = l.check(&r, now).unwrap();
            allowed += d.allowed as u32;
            let mut sink = tollgate::decision::Sink::new(&mut buf);
            d.write_headers(&mut sink).unwrap();
            if !d.allowed {
                let mut sink = tollgate::decision::Sink::new(&mut buf);
                d.write_error_body(b"DeepSeek-V3.1", &mut sink).unwrap();
            }
        }
        let _ = l.check(&Request::new(b"x", b"no-such-model", Tier::Developer), now);
        let _ = l.check(&Request::new(b"x", b"DeepSeek-V3.1", Tier::Free), now);
        let _ = l.check(
            &Request::new(b"x", b"DeepSeek-V3.1", Tier::Developer).cost(0),
            now,
        );
    }
    assert_eq!(counting::disarm(), 0, "allocations on the decision path");
    assert_eq!(allowed, 10_000 * 30, "the loop really decided");
}
