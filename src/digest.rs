//! Account ids derived from API keys: a gateway that keys accounts by the
//! caller's bearer key stores this digest, never the key, and an operator
//! who holds the key finds the account with `tollgate digest`.

use blake2::digest::{Update, VariableOutput};
use blake2::Blake2bVar;

/// 32 lower-case hex digits: BLAKE2b with a 16-byte digest of `key`. Fits
/// the 64-byte account ids whatever the key's length; the Python
/// middleware's `bearer_token_digest` gives the same string.
pub fn account_digest(key: &[u8]) -> String {
    let mut h = Blake2bVar::new(16).expect("16 is a valid BLAKE2b digest size");
    h.update(key);
    let mut out = [0u8; 16];
    h.finalize_variable(&mut out)
        .expect("the buffer is the digest size");
    out.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    #[test]
    fn matches_blake2b_128() {
        // hashlib.blake2b(b"", digest_size=16).hexdigest()
        assert_eq!(
            super::account_digest(b""),
            "cae66941d9efbd404e4d88758ea67670"
        );
        // hashlib.blake2b(b"sk-test", digest_size=16).hexdigest()
        assert_eq!(
            super::account_digest(b"sk-test"),
            "c341dda362e14f03d05c78a3a7c7a93a"
        );
    }
}
