//! Account ids derived from API keys: a gateway that keys accounts by the
//! caller's bearer key stores this digest, never the key, and an operator
//! who holds the key finds the account with `tollgate digest`. The key is
//! read from the `Authorization` header here too, so every binding (nginx's
//! `$tollgate_bearer_digest`, Python's `bearer_token_digest`, the tower
//! layer's `bearer_digest`, the C++ `bearer_digest`) counts one key under
//! one account.

use blake2::digest::{Update, VariableOutput};
use blake2::Blake2bVar;

/// Bytes of an account digest: 32 lower-case hex digits.
pub(crate) const DIGEST_HEX_LEN: usize = 32;

/// 32 lower-case hex digits: BLAKE2b with a 16-byte digest of `key`. Fits
/// the 64-byte account ids whatever the key's length; the Python
/// middleware's `bearer_token_digest` gives the same string.
pub fn account_digest(key: &[u8]) -> String {
    digest_hex(key).iter().map(|&c| char::from(c)).collect()
}

/// [`account_digest`] without an allocation (the C ABI's).
pub(crate) fn digest_hex(key: &[u8]) -> [u8; DIGEST_HEX_LEN] {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut h = Blake2bVar::new(16).expect("16 is a valid BLAKE2b digest size");
    h.update(key);
    let mut raw = [0u8; 16];
    h.finalize_variable(&mut raw)
        .expect("the buffer is the digest size");
    let mut out = [0u8; DIGEST_HEX_LEN];
    for (i, b) in raw.iter().enumerate() {
        out[2 * i] = HEX[usize::from(b >> 4)];
        out[2 * i + 1] = HEX[usize::from(b & 0xf)];
    }
    out
}

/// The key of an `Authorization` header's value `Bearer <key>`: the scheme
/// in any case, the value and the key trimmed of ASCII whitespace; `None`
/// for another scheme or no key. Raw keys are often longer than an account
/// id may be (64 bytes): take [`account_digest`] of it for the account.
pub fn bearer_key(authorization: &[u8]) -> Option<&[u8]> {
    let v = authorization.trim_ascii();
    let sp = v.iter().position(|&c| c == b' ')?;
    let (scheme, key) = (&v[..sp], v[sp + 1..].trim_ascii());
    (scheme.eq_ignore_ascii_case(b"bearer") && !key.is_empty()).then_some(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_blake2b_128() {
        // hashlib.blake2b(b"", digest_size=16).hexdigest()
        assert_eq!(account_digest(b""), "cae66941d9efbd404e4d88758ea67670");
        // hashlib.blake2b(b"sk-test", digest_size=16).hexdigest()
        assert_eq!(
            account_digest(b"sk-test"),
            "c341dda362e14f03d05c78a3a7c7a93a"
        );
        assert_eq!(&digest_hex(b"sk-test"), b"c341dda362e14f03d05c78a3a7c7a93a");
    }

    #[test]
    fn bearer_keys() {
        type Case<'a> = (&'a [u8], Option<&'a [u8]>);
        let cases: [Case; 10] = [
            (b"Bearer sk-test", Some(b"sk-test")),
            (b"bearer   sk-test  ", Some(b"sk-test")),
            (b" \tBEARER sk-test\r\n", Some(b"sk-test")),
            (b"Bearer a b", Some(b"a b")),
            (b"Basic dXNlcjpwYXNz", None),
            (b"Bearer", None),
            (b"Bearer    ", None),
            (b"Bearer\tsk-test", None),
            (b"sk-test", None),
            (b"", None),
        ];
        for (auth, want) in cases {
            assert_eq!(bearer_key(auth), want, "{auth:?}");
        }
    }
}
