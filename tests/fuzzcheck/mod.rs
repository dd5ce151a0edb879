//! The region fuzz check, shared by the cargo-fuzz target
//! (fuzz/fuzz_targets/region_attach.rs) and the plain test that runs it on
//! generated inputs (tests/checks/region_fuzz.rs).
//!
//! Input byte 0 picks a mode:
//! - raw: the rest is the region, attached as it is (the header checks must
//!   refuse it cleanly, or it is a region and everything below must work);
//! - slots / scattered: a freshly formatted region with some traffic, then
//!   the rest overwrites its slot area, or XORs bytes anywhere (header too);
//! - protocol: the rest is a list of edits that break the slot protocol the
//!   way damage or a bug would (duplicated keys, generations out of step,
//!   minutes past 1440, keys moved out of their probe chains).
//!
//! Whatever the bytes, nothing may panic, read out of bounds or hang; and a
//! table that verifies clean (with every key named, so every key's probe
//! chain could be checked) must still verify clean after more traffic.
#![allow(dead_code)]

use tollgate::{Limiter, Policy, Request, Tier};

pub const NOW: u64 = 1_795_773_600_000;
const MODELS: [&str; 2] = ["DeepSeek-V3.1", "Qwen3-32B"];

#[repr(C, align(64))]
#[derive(Clone, Copy)]
struct Line([u8; 64]);

/// `len` bytes of zeroed memory aligned to 64, as a region needs.
struct Mem(Vec<Line>, usize);

impl Mem {
    fn new(len: usize) -> Mem {
        Mem(vec![Line([0; 64]); len.div_ceil(64).max(1)], len)
    }

    fn bytes(&mut self) -> &mut [u8] {
        // SAFETY: the vector holds at least `len` initialised bytes.
        unsafe { std::slice::from_raw_parts_mut(self.0.as_mut_ptr().cast::<u8>(), self.1) }
    }

    fn ptr(&mut self) -> *mut u8 {
        self.0.as_mut_ptr().cast()
    }
}

fn slots_offset() -> usize {
    // The fixed part less the holder list, which lies after the slots.
    tollgate::region_size(1).unwrap() - tollgate::BYTES_PER_SLOT - tollgate::HOLDERS_BYTES
}

/// A formatted region of `slots` slots with a little traffic in it.
fn populated(slots: u32, policy: &Policy) -> Mem {
    let len = tollgate::region_size(slots).unwrap();
    let mut mem = Mem::new(len);
    // SAFETY: `mem` is ours, aligned, `len` bytes, and outlives the limiter.
    let l = unsafe { Limiter::init_in(policy, mem.ptr(), len) }.expect("format");
    for k in 0..slots.min(12) {
        let acct = format!("acct-{k}");
        let r = Request::new(
            acct.as_bytes(),
            MODELS[k as usize % 2].as_bytes(),
            Tier::Developer,
        );
        for _ in 0..=k % 3 {
            let _ = l.check(&r, NOW - (k as u64 % 2) * 86_400_000);
        }
    }
    drop(l);
    mem
}

/// Region layout offsets of slot `i`'s words (ident at +0, state at +16)
/// and its name.
fn slot_at(i: usize) -> usize {
    slots_offset() + i * 32
}

fn name_at(slots: usize, i: usize) -> usize {
    slots_offset() + slots * 32 + i * 64
}

fn u128_at(b: &[u8], o: usize) -> u128 {
    u128::from_le_bytes(b[o..o + 16].try_into().unwrap())
}

fn put_u128(b: &mut [u8], o: usize, v: u128) {
    b[o..o + 16].copy_from_slice(&v.to_le_bytes());
}

fn protocol_edits(b: &mut [u8], slots: usize, edits: &[u8]) {
    for e in edits.chunks_exact(4) {
        let (i, j, v) = (e[1] as usize % slots, e[2] as usize % slots, e[3]);
        let (si, sj) = (slot_at(i), slot_at(j));
        match e[0] % 7 {
            // Duplicate a slot (key, counts and name) elsewhere.
            0 => {
                b.copy_within(sj..sj + 32, si);
                b.copy_within(name_at(slots, j)..name_at(slots, j) + 64, name_at(slots, i));
            }
            // Move the state's generation out of (or back into) step.
            1 => {
                let s = u128_at(b, si + 16);
                let g = (s as u16).wrapping_add(v as u16 % 4);
                put_u128(b, si + 16, (s & !0xFFFF) | g as u128);
            }
            // Forget the key (ident zero) but keep the state.
            2 => put_u128(b, si, 0),
            // Minute of day, possibly past 1439.
            3 => {
                let s = u128_at(b, si + 16);
                let m = (v as u128 * 9) & 0x7FF;
                put_u128(b, si + 16, (s & !(0x7FF << 16)) | m << 16);
            }
            // Shift the day, possibly far ahead.
            4 => {
                let s = u128_at(b, si + 16);
                let day = (s >> 32) as u32;
                let d = day.wrapping_add(v as u32).wrapping_sub(128);
                put_u128(b, si + 16, (s & !(0xFFFF_FFFF << 32)) | (d as u128) << 32);
            }
            // Swap two slots: keys leave their probe chains.
            5 => {
                for (a, c, n) in [(si, sj, 32), (name_at(slots, i), name_at(slots, j), 64)] {
                    if a != c {
                        let tmp: Vec<u8> = b[a..a + n].to_vec();
                        b.copy_within(c..c + n, a);
                        b[c..c + n].copy_from_slice(&tmp);
                    }
                }
            }
            // Scribble on a name.
            _ => b[name_at(slots, i) + (v as usize % 64)] ^= v | 1,
        }
    }
}

/// What became of one input, so the plain test can tell that every path
/// was taken.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// Too short to say anything.
    Empty,
    /// Attach refused it (not a region, bad header, wrong size).
    Refused,
    /// A region that verified clean, and stayed clean under traffic.
    Clean,
    /// A region with problems (reported, never a panic).
    Damaged,
    /// A region with unnamed keys: verified, but not held to the property.
    Unnamed,
}

/// Runs one fuzz input. Panics only on a finding.
pub fn check(data: &[u8]) -> Outcome {
    let Some((&mode, rest)) = data.split_first() else {
        return Outcome::Empty;
    };
    // Parsed once: the policy is not what is being fuzzed.
    static POLICY: std::sync::OnceLock<Policy> = std::sync::OnceLock::new();
    let policy = POLICY.get_or_init(Policy::builtin);
    let mut mem = match mode % 4 {
        0 => {
            let mut m = Mem::new(rest.len());
            m.bytes().copy_from_slice(rest);
            m
        }
        k => {
            let Some((&n, edits)) = rest.split_first() else {
                return Outcome::Empty;
            };
            let slots = 1 + n as usize % 64;
            let mut m = populated(slots as u32, policy);
            let b = m.bytes();
            match k {
                1 => {
                    let from = slots_offset();
                    let n = edits.len().min(b.len() - from);
                    b[from..from + n].copy_from_slice(&edits[..n]);
                }
                2 => {
                    for e in edits.chunks_exact(3) {
                        let at = u16::from_le_bytes([e[0], e[1]]) as usize % b.len();
                        b[at] ^= e[2];
                    }
                }
                _ => protocol_edits(b, slots, edits),
            }
            m
        }
    };
    let len = mem.1;
    // SAFETY: `mem` is aligned, `len` bytes long, and outlives the limiter.
    let Ok(l) = (unsafe { Limiter::attach(policy, mem.ptr(), len) }) else {
        return Outcome::Refused;
    };
    let before = l.verify(NOW);
    let _ = l.usage(NOW);
    let _ = l.stats(NOW);
    let _ = l.region_models();
    for k in 0..16u32 {
        let acct = format!("acct-{}", k % 14);
        let model = MODELS[k as usize % 2];
        let r = Request::new(acct.as_bytes(), model.as_bytes(), Tier::Developer);
        let _ = l.check(&r, NOW);
        let _ = l.check(&r.cost(0), NOW + 61_000);
        let _ = l.check(&r.limits(3, 5), NOW + 86_400_000);
    }
    let _ = l.reset(b"acct-1", None);
    let _ = l.reset(b"acct-2", Some(MODELS[0].as_bytes()));
    let after = l.verify(NOW + 86_400_000);
    drop(l);
    if !before.ok() {
        return Outcome::Damaged;
    }
    if before.unnamed > 0 {
        return Outcome::Unnamed;
    }
    assert!(
        after.ok(),
        "a clean table went bad under traffic: {:?}",
        after.problems
    );
    Outcome::Clean
}
