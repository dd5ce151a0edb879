//! The core's longer checks, one test binary (each binary is a link of the
//! whole crate, so few binaries build much faster than one per file): the
//! reference model (proptest), the conformance table, threads racing on
//! one table, the seeded fuzz corpora, and the body scanner against
//! serde_json, the upstreams' parsers and its throughput, and the response
//! usage scanner against serde_json.

mod bodycheck;
mod conformance_table;
mod fuzzcheck;

#[path = "checks/body_differential.rs"]
mod body_differential;
#[path = "checks/body_fuzz.rs"]
mod body_fuzz;
#[path = "checks/body_throughput.rs"]
mod body_throughput;
#[path = "checks/body_upstreams.rs"]
mod body_upstreams;
#[path = "checks/concurrency.rs"]
mod concurrency;
#[path = "checks/conformance.rs"]
mod conformance;
#[path = "checks/model.rs"]
mod model;
#[path = "checks/region_fuzz.rs"]
mod region_fuzz;
#[path = "checks/usage_differential.rs"]
mod usage_differential;
#[path = "checks/usage_throughput.rs"]
mod usage_throughput;
