//! Tests that run other processes, one test binary (feature `cli`): the
//! `tollgate` command, processes sharing a region file, and processes
//! SIGKILLed while deciding or writing the refusal ring.

mod procs;
#[cfg(feature = "redis")]
mod redis_servers;

#[path = "processes/cli.rs"]
mod cli;
#[path = "processes/in_flight_kill.rs"]
mod in_flight_kill;
#[path = "processes/killring.rs"]
mod killring;
#[path = "processes/killtest.rs"]
mod killtest;
#[path = "processes/multiprocess.rs"]
mod multiprocess;
