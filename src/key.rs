//! Seeded hashing of (account, model) keys.
//!
//! The seed is drawn at random when a region is formatted and kept in its
//! header, so every process attached to the region hashes alike while an
//! outsider who picks account names cannot aim them at one probe chain.
//! The function is fully specified here (no CPU-dependent paths), because a
//! Python worker, an nginx worker and a Rust binary built with different
//! flags must all land a key in the same slot.
//!
//! One pass yields 128 bits: 64 pick the home slot, and 88 more (with the
//! model id and account length stored exactly beside them) form the key's
//! identity in the slot. Two keys share counters only if all 88 bits agree,
//! about once in 3 * 10^26 pairs: the table compares this fingerprint, not
//! the account bytes, so a decision reads one cache line.

/// Longest account id, in bytes.
pub const ACCOUNT_MAX: usize = 64;

/// A hashed key: where its probe chain starts and who it is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KeyHash {
    /// Chooses the home slot (by multiply-shift over the slot count).
    pub home: u64,
    /// 112 bits: fingerprint (88) | model id (16) | account length (8).
    pub id: u128,
}

#[inline(always)]
fn fold(a: u64, b: u64) -> u64 {
    let p = (a as u128).wrapping_mul(b as u128);
    (p as u64) ^ ((p >> 64) as u64)
}

/// Little-endian word of `b[i..i + 8]`, zero past the end. A short tail is
/// assembled from overlapping loads rather than copied, which keeps a call
/// to memcpy off the decision path.
#[inline(always)]
pub(crate) fn word(b: &[u8], i: usize) -> u64 {
    let n = b.len().saturating_sub(i);
    if n >= 8 {
        u64::from_le_bytes(b[i..i + 8].try_into().unwrap())
    } else if n >= 4 {
        let lo = u32::from_le_bytes(b[i..i + 4].try_into().unwrap()) as u64;
        let hi = u32::from_le_bytes(b[i + n - 4..i + n].try_into().unwrap()) as u64;
        // Overlapping bytes land on the same bit positions in both halves.
        lo | hi << (8 * (n - 4))
    } else if n > 0 {
        b[i] as u64
            | (b[i + n / 2] as u64) << (8 * (n / 2))
            | (b[i + n - 1] as u64) << (8 * (n - 1))
    } else {
        0
    }
}

/// Little-endian u64 at `b[i..i + 8]`; the caller has checked the bounds.
#[inline(always)]
fn load(b: &[u8], i: usize) -> u64 {
    u64::from_le_bytes(b[i..i + 8].try_into().unwrap())
}

/// Hashes `account` (1 to [`ACCOUNT_MAX`] bytes) for model id `model`.
///
/// The account is read as 16-byte blocks, the last one overlapping the one
/// before when the length is not a multiple of 16 (for 8 to 16 bytes the
/// block's two words overlap; under 8 bytes the tail is zero-padded). Each
/// block is folded into both lanes; the length and model go into the
/// first block's seeds, so overlap and padding cannot make two different
/// keys equal. One fold per lane per block, and one more for the home.
#[inline(always)]
pub fn hash(seed: &[u64; 4], account: &[u8], model: u16) -> KeyHash {
    debug_assert!(account.len() <= ACCOUNT_MAX);
    let n = account.len();
    let tag = n as u64 | (model as u64) << 8;
    let (a, b) = if n >= 16 {
        (load(account, 0), load(account, 8))
    } else if n >= 8 {
        (load(account, 0), load(account, n - 8))
    } else {
        (word(account, 0), 0)
    };
    let mut h1 = fold(a ^ seed[0] ^ tag, b ^ seed[1]);
    let mut h2 = fold(b ^ seed[2] ^ tag.rotate_left(32), a ^ seed[3]);
    if n > 16 {
        let mut i = 16;
        while i + 16 < n {
            let (a, b) = (load(account, i), load(account, i + 8));
            h1 = fold(a ^ seed[2] ^ h1, b ^ seed[3]);
            h2 = fold(b ^ seed[1] ^ h2, a ^ seed[0] ^ h1);
            i += 16;
        }
        let (a, b) = (load(account, n - 16), load(account, n - 8));
        h1 = fold(a ^ seed[1] ^ h1, b ^ seed[0]);
        h2 = fold(b ^ seed[3] ^ h2, a ^ seed[2] ^ h1);
    } else {
        h2 = fold(h2 ^ seed[1], h1 ^ seed[2]);
    }
    // The home slot's bits come from the top of the word (multiply-shift),
    // so they get one more fold by a per-region constant: a block's fold
    // alone can multiply by a small or structured value.
    let home = fold(h1 ^ seed[3], seed[0] ^ 0x2D35_8DCC_AA6C_78A5);
    let fp = (h2 as u128) << 24 | (h1 & 0xFF_FFFF) as u128;
    KeyHash {
        home,
        id: fp << 24 | tag as u128,
    }
}

/// The key hash of layout version 2 regions, kept only to verify the
/// account names of such a region while `tollgate resize` carries its
/// counts into a current one.
pub(crate) fn hash_v2(seed: &[u64; 4], account: &[u8], model: u16) -> KeyHash {
    let len = account.len() as u64;
    let tag = len | (model as u64) << 8;
    // The first block absorbs the tag; each further block chains through
    // both lanes; one last multiply per lane mixes the result.
    let (a, b) = (word(account, 0), word(account, 8));
    let mut h1 = fold(a ^ seed[0] ^ tag, b ^ seed[1]);
    let mut h2 = fold(b ^ seed[2] ^ tag.rotate_left(32), a ^ seed[3]);
    let mut i = 16;
    while i < account.len() {
        let a = word(account, i);
        let b = word(account, i + 8);
        h1 = fold(a ^ seed[2] ^ h1, b ^ seed[3]);
        h2 = fold(b ^ seed[1] ^ h2, a ^ seed[0]);
        i += 16;
    }
    h1 = fold(h1 ^ seed[3], seed[0] ^ 0x2D35_8DCC_AA6C_78A5);
    h2 = fold(h2 ^ seed[2], seed[1] ^ 0x8BB8_4B93_962E_ACC9);
    let fp = (h2 as u128) << 24 | (h1 & 0xFF_FFFF) as u128;
    KeyHash {
        home: h1,
        id: fp << 24 | (model as u128) << 8 | len as u128,
    }
}

/// Model id and account length carried in a key id.
#[inline]
pub fn id_parts(id: u128) -> (u16, usize) {
    (((id >> 8) & 0xFFFF) as u16, (id & 0xFF) as usize)
}

/// Fresh random seed for a new region.
pub fn random_seed() -> [u64; 4] {
    let mut bytes = [0u8; 32];
    let mut filled = 0;
    while filled < bytes.len() {
        // SAFETY: the pointer and length describe the unfilled tail of
        // `bytes`, which is live and writable for the whole call.
        let n = unsafe {
            libc::getrandom(bytes[filled..].as_mut_ptr().cast(), bytes.len() - filled, 0)
        };
        if n > 0 {
            filled += n as usize;
        } else if std::io::Error::last_os_error().kind() != std::io::ErrorKind::Interrupted {
            // No getrandom (very old kernel): fall back to std's per-process
            // random keys mixed with the clock; still unknown to outsiders.
            use std::hash::{BuildHasher, Hasher};
            let mut out = [0u64; 4];
            for (k, o) in out.iter_mut().enumerate() {
                let mut h = std::collections::hash_map::RandomState::new().build_hasher();
                h.write_usize(k);
                h.write_u128(
                    std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .unwrap_or_default()
                        .as_nanos(),
                );
                *o = h.finish();
            }
            return out;
        }
    }
    let mut out = [0u64; 4];
    for (k, o) in out.iter_mut().enumerate() {
        *o = u64::from_le_bytes(bytes[k * 8..k * 8 + 8].try_into().unwrap());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    const SEED: [u64; 4] = [1, 2, 3, 4];

    #[test]
    fn deterministic_and_sensitive_to_every_part() {
        let a = hash(&SEED, b"acct-1", 3);
        assert_eq!(a, hash(&SEED, b"acct-1", 3));
        assert_ne!(a.id, hash(&SEED, b"acct-1", 4).id);
        assert_ne!(a.id, hash(&SEED, b"acct-2", 3).id);
        assert_ne!(
            a.id,
            hash(&SEED, b"acct-1\0", 3).id,
            "padding is not ambiguous"
        );
        assert_ne!(a.id, hash(&[1, 2, 3, 5], b"acct-1", 3).id, "seed matters");
        assert_eq!(id_parts(a.id), (3, 6));
    }

    #[test]
    #[cfg_attr(miri, ignore = "statistical; too slow under miri")]
    fn no_collisions_over_many_keys() {
        let mut ids = HashSet::new();
        let mut homes = HashSet::new();
        for i in 0..200_000u32 {
            let acct = format!("user-{i}");
            let h = hash(&SEED, acct.as_bytes(), (i % 7) as u16);
            assert!(ids.insert(h.id >> 24));
            homes.insert(h.home);
        }
        assert_eq!(homes.len(), 200_000);
    }

    #[test]
    #[cfg_attr(miri, ignore = "statistical; too slow under miri")]
    fn home_bits_spread_over_a_table() {
        // Sequential names must not cluster: count buckets hit in a 1024 table.
        let mut hit = vec![0u32; 1024];
        for i in 0..10_240u32 {
            let h = hash(&SEED, format!("k{i}").as_bytes(), 0);
            hit[((h.home as u128 * 1024) >> 64) as usize] += 1;
        }
        let max = *hit.iter().max().unwrap();
        assert!(max < 40, "max bucket {max}");
    }

    #[test]
    fn tail_words_equal_zero_padded_reads() {
        let bytes: Vec<u8> = (1..=40).collect();
        for len in 0..=bytes.len() {
            let b = &bytes[..len];
            for i in (0..48).step_by(8) {
                let mut t = [0u8; 8];
                for (k, x) in t.iter_mut().enumerate() {
                    *x = b.get(i + k).copied().unwrap_or(0);
                }
                assert_eq!(word(b, i), u64::from_le_bytes(t), "len {len} at {i}");
            }
        }
    }

    #[test]
    fn longest_account_hashes() {
        let long = [b'x'; ACCOUNT_MAX];
        let h = hash(&SEED, &long, 0);
        assert_eq!(id_parts(h.id), (0, 64));
    }
}
