//! Tollgate: per-(account, model) requests-per-minute and requests-per-day
//! limits in one flat region of fixed slots, shared by threads and by
//! processes, decided with one lock-free 128-bit compare-and-swap.
//!
//! ```
//! use tollgate::{Limiter, Policy, Request, Tier};
//!
//! let limiter = Limiter::new(&Policy::builtin(), 1024).unwrap();
//! let req = Request::new(b"acct-42", b"DeepSeek-V3.1", Tier::Developer);
//! let now_ms = 1_764_288_000_000; // any epoch-ms clock; tests drive it
//! for _ in 0..30 {
//!     assert!(limiter.check(&req, now_ms).unwrap().allowed);
//! }
//! let d = limiter.check(&req, now_ms).unwrap();
//! assert!(!d.allowed);
//! assert_eq!(d.retry_after, 60);
//! ```
//!
//! Modules, one concern each, in reading order: [`policy`] (tiers, models,
//! TOML), `window` (minute/day arithmetic), `key` (seeded hashing),
//! `region` (layout, format, attach), `file` (region files shared by
//! processes), `slot` (the packed state, the probe walk and the CAS: the
//! decision path), `refusals` (the ring of latest refusals), `limiter` (the
//! Rust API), [`decision`] (a decision and its headers and 429 body),
//! [`body`] (the streaming JSON scan of a request body for its model),
//! [`usage`] (the streaming scan of a response, JSON or SSE, for the token
//! usage the upstream reports),
//! [`answer`] (the whole HTTP answer for every outcome, one wording for
//! every binding), `digest` (account ids from bearer keys), `operator`
//! (views and repairs for operators), `error`, [`ffi`] (the C ABI, one file
//! per object), with the `tower` feature `tower` (a `tower::Layer` for Rust
//! gateways), and with the `redis` feature `store` (the global quota
//! store in Redis, for one quota across hosts) and `lease` (quota leases
//! in the table, so a joined limiter decides one quota across hosts).

// The growth and safety contract, enforced by tests/lint.sh (clippy -D
// warnings): every public item documented, every unsafe block justified.
// Warnings, not errors, so work in progress still builds and tests.
#![warn(missing_docs)]
#![warn(clippy::undocumented_unsafe_blocks)]

pub mod answer;
pub mod body;
pub mod decision;
mod digest;
mod error;
pub mod ffi;
mod file;
mod holder;
mod in_flight;
mod key;
#[cfg(feature = "leases")]
pub mod lease;
mod limiter;
mod operator;
mod options;
pub mod policy;
mod refusals;
mod region;
mod slot;
#[cfg(feature = "leases")]
pub mod store;
#[cfg(feature = "tower")]
pub mod tower;
pub mod usage;
mod window;

pub use body::BodyError;
pub use decision::{Admission, Decision, InFlight, Ticket, TokenWindows, Window};
pub use digest::{account_digest, bearer_key};
pub use error::Error;
pub use key::ACCOUNT_MAX;
pub use limiter::{Ending, InFlightStats, Limiter, ModelHandle, Request, Stats};
pub use operator::{
    InFlightHolder, KeyUsage, LeaseTableStats, Problem, ResizeReport, TokenTableStats, VerifyReport,
};
pub use options::LimiterOptions;
pub use policy::{Limits, Model, NoUsage, Policy, PolicyError, Tier, TokenLimits, TokenSettings};
pub use refusals::Refusal;
pub use region::{RegionError, BYTES_PER_SLOT, HOLDERS_BYTES, LAYOUT_VERSION, REGION_ALIGN};
pub use slot::{LimitedBy, PROBE_MAX};

/// Bytes a region of `slots` slots needs; `None` for 0 or more than 2^30.
pub fn region_size(slots: u32) -> Option<usize> {
    region::size_for(slots)
}

/// Most slots a region of `len` bytes holds (0 if too small).
pub fn region_slots_for(len: usize) -> u32 {
    region::slots_for(len)
}

/// Bytes a table of quota leases of `slots` slots needs (the region, its
/// lease side area and its wider unit area; see [`LimiterOptions::leases`]).
pub fn region_size_for_leases(slots: u32) -> Option<usize> {
    region::size_with(slots, true)
}

/// Most slots a table of quota leases of `len` bytes holds (0 if too
/// small): [`region_slots_for`] with the lease side area.
pub fn region_slots_for_leases(len: usize) -> u32 {
    region::slots_with(len, true)
}

/// The real-time clock in epoch milliseconds (0 if it reads before 1970).
///
/// On Linux this is CLOCK_REALTIME_COARSE: the time of the last timer tick
/// (resolution 1 to 10 ms, 4 ms on a 250 Hz kernel), read from the vDSO
/// without touching the time-stamp counter, several times cheaper than
/// CLOCK_REALTIME. Minute and day windows and whole-second reset headers
/// need no finer clock; a caller that wants one passes its own `now_ms`.
pub fn now_ms() -> u64 {
    #[cfg(all(target_os = "linux", not(miri)))]
    {
        let mut t = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: `t` is a live, writable timespec.
        if unsafe { libc::clock_gettime(libc::CLOCK_REALTIME_COARSE, &mut t) } == 0 {
            if t.tv_sec < 0 {
                return 0;
            }
            return t.tv_sec as u64 * 1000 + t.tv_nsec as u64 / 1_000_000;
        }
    }
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
