//! "Did you mean": the names closest to a mistyped one, by edit distance,
//! with bounded work however large the table (a banded distance over at
//! most `EXAMINED` distinct names, each at most 64 bytes).

use std::collections::HashSet;

/// Distinct names looked at, at most.
const EXAMINED: usize = 200_000;
/// Longest name compared (account ids are at most 64 bytes).
const LONGEST: usize = 64;

/// Up to `limit` names from `names` within a small edit distance of `want`
/// (1 for names up to 3 bytes, 2 up to 8, 3 beyond), closest first, then
/// in byte order. `want` itself is never suggested.
pub fn closest<'a>(
    want: &[u8],
    names: impl IntoIterator<Item = &'a [u8]>,
    limit: usize,
) -> Vec<Vec<u8>> {
    let max = match want.len() {
        0..=3 => 1,
        4..=8 => 2,
        _ => 3,
    };
    let mut seen: HashSet<&[u8]> = HashSet::new();
    let mut found: Vec<(usize, &[u8])> = Vec::new();
    for name in names {
        if seen.len() >= EXAMINED {
            break;
        }
        if name == want || !seen.insert(name) {
            continue;
        }
        if let Some(d) = distance_within(want, name, max) {
            found.push((d, name));
        }
    }
    found.sort();
    found
        .into_iter()
        .take(limit)
        .map(|(_, n)| n.to_vec())
        .collect()
}

/// Levenshtein distance of `a` and `b` (ASCII case ignored) if it is at
/// most `max`, computing only the diagonal band that can stay within it.
fn distance_within(a: &[u8], b: &[u8], max: usize) -> Option<usize> {
    const FAR: usize = usize::MAX / 2;
    let (n, m) = (a.len(), b.len());
    if n > LONGEST || m > LONGEST || n.abs_diff(m) > max {
        return None;
    }
    // Row cells outside their band read as FAR.
    let at = |row: &[usize; LONGEST + 1], lo: usize, hi: usize, j: usize| {
        if j < lo || j > hi {
            FAR
        } else {
            row[j]
        }
    };
    let mut prev = [0usize; LONGEST + 1];
    let mut cur = [0usize; LONGEST + 1];
    let (mut plo, mut phi) = (0, m.min(max));
    for (j, cell) in prev.iter_mut().enumerate().take(phi + 1) {
        *cell = j;
    }
    for i in 1..=n {
        let (lo, hi) = (i.saturating_sub(max), (i + max).min(m));
        let mut best = FAR;
        for j in lo..=hi {
            let v = if j == 0 {
                i
            } else {
                let differ = !a[i - 1].eq_ignore_ascii_case(&b[j - 1]) as usize;
                (at(&prev, plo, phi, j - 1) + differ)
                    .min(at(&prev, plo, phi, j) + 1)
                    .min(at(&cur, lo, hi, j - 1) + 1)
            };
            cur[j] = v;
            best = best.min(v);
        }
        if best > max {
            return None;
        }
        std::mem::swap(&mut prev, &mut cur);
        (plo, phi) = (lo, hi);
    }
    let d = at(&prev, plo, phi, m);
    (d <= max).then_some(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lev(a: &str, b: &str) -> Option<usize> {
        distance_within(a.as_bytes(), b.as_bytes(), 3)
    }

    #[test]
    fn distances() {
        assert_eq!(lev("alice", "alice"), Some(0));
        assert_eq!(lev("alice", "alise"), Some(1));
        assert_eq!(lev("alice", "alic"), Some(1));
        assert_eq!(lev("alice", "xalice"), Some(1));
        assert_eq!(lev("alice", "ALICE"), Some(0));
        assert_eq!(lev("kitten", "sitting"), Some(3));
        assert_eq!(lev("abc", "xyzabc"), Some(3));
        assert_eq!(lev("abc", "wxyzabc"), None);
        assert_eq!(lev("acct-1", "bob-99"), None);
        assert_eq!(lev("", "ab"), Some(2));
    }

    #[test]
    fn closest_first() {
        let names: Vec<&[u8]> = vec![b"bob-1", b"alice", b"alicia", b"alice", b"carol", b"alic"];
        let got = closest(b"alcie", names, 3);
        assert_eq!(
            got,
            vec![b"alic".to_vec(), b"alice".to_vec(), b"alicia".to_vec()]
        );
        assert_eq!(
            closest(b"alicd", vec![&b"alicia"[..], b"alice"], 3)[0],
            b"alice"
        );
        assert!(closest(b"zzzzzzzz", vec![&b"alice"[..]], 3).is_empty());
    }
}
