//! The fuzz target's check (tests/fuzzcheck) on a few thousand generated
//! inputs, so plain `cargo test` exercises it without cargo-fuzz.

use crate::fuzzcheck;

use std::collections::HashMap;

use fuzzcheck::Outcome;

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}

#[test]
fn random_and_damaged_regions_never_panic() {
    // Fixed seed: a failure here reproduces exactly.
    let mut rng = Rng(0x7011_6a7e_5eed_0001);
    let mut seen: HashMap<(u8, Outcome), u32> = HashMap::new();
    for case in 0..3000u32 {
        let mode = (case % 4) as u8;
        let n = match mode {
            0 => rng.next() as usize % 20_000,
            // A few protocol edits each, so some tables stay clean.
            3 => 1 + rng.next() as usize % 24,
            _ => 1 + rng.next() as usize % 400,
        };
        let mut input = vec![mode];
        input.extend(rng.bytes(n));
        *seen.entry((mode, fuzzcheck::check(&input))).or_default() += 1;
    }
    // Every path was taken: random bytes are refused; overwritten slots
    // read as damage; protocol edits give damaged and still-clean tables.
    let at = |m, o| seen.get(&(m, o)).copied().unwrap_or(0);
    assert!(at(0, Outcome::Refused) > 500, "{seen:?}");
    assert!(at(1, Outcome::Damaged) > 100, "{seen:?}");
    assert!(at(3, Outcome::Damaged) > 100, "{seen:?}");
    assert!(
        at(2, Outcome::Clean) > 50 && at(3, Outcome::Clean) > 50,
        "{seen:?}"
    );
}

#[test]
fn inputs_the_fuzzer_found_stay_fixed() {
    // cargo fuzz, region_attach: verify's in-flight look subtracted a key's
    // ledger entries from its count before testing which was larger (an
    // overflow panic with debug assertions, as the fuzz build has).
    let found: [&[u8]; 1] = [&[
        254, 49, 1, 186, 186, 186, 186, 186, 186, 186, 186, 186, 186, 186, 186, 186, 186, 10, 0, 0,
        0, 186, 186, 186, 186, 186, 3, 27, 0,
    ]];
    for input in found {
        fuzzcheck::check(input);
    }
}

#[test]
fn mutated_valid_images_never_panic() {
    // A real region image with a few bytes flipped, attached raw: exercises
    // the header checks (magic, version, sizes, checksum) byte by byte.
    let len = tollgate::region_size(8).unwrap();
    let mut rng = Rng(0x7011_6a7e_5eed_0002);
    let image = {
        let mut raw = vec![0u8; len + 64];
        let off = raw.as_ptr().align_offset(64);
        let ptr = raw[off..].as_mut_ptr();
        // SAFETY: aligned, `len` bytes inside `raw`, which outlives `l`.
        let l =
            unsafe { tollgate::Limiter::init_in(&tollgate::Policy::builtin(), ptr, len) }.unwrap();
        drop(l);
        raw[off..off + len].to_vec()
    };
    for case in 0..1000usize {
        let mut input = vec![0u8];
        input.extend_from_slice(&image);
        let flips = 1 + case % 3;
        for _ in 0..flips {
            // Mostly the header, where one byte decides acceptance.
            let at = if case % 2 == 0 {
                rng.next() as usize % 128
            } else {
                rng.next() as usize % len
            };
            input[1 + at] ^= 1 << (rng.next() % 8);
        }
        if case % 50 == 0 {
            input.truncate(1 + rng.next() as usize % len);
        }
        fuzzcheck::check(&input);
    }
}
