//! The key names and the one Lua script (`lease.lua`): how an operation
//! becomes an EVALSHA and how its reply becomes numbers, checked so that no
//! reply Redis can send makes us panic.

use redis::{Script, ScriptInvocation, Value};

use crate::store::{windows, Counts, OpId, StoreError, Tag};
use crate::window::{Instant, MS_PER_DAY, MS_PER_MINUTE};

/// The script's source, compiled into the library.
pub(crate) const SOURCE: &str = include_str!("lease.lua");

pub(crate) fn script() -> Script {
    Script::new(SOURCE)
}

/// What each operation's record key is called (`tg:{tag}:<kind>:<id>`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Op {
    Grant,
    GiveBack,
    Push,
    Counts,
}

impl Op {
    fn code(self) -> &'static str {
        match self {
            Op::Grant => "g",
            Op::GiveBack => "r",
            Op::Push => "p",
            Op::Counts => "c",
        }
    }
}

/// `tg:{<tag>}:<kind>:<suffix>`: every key of one tag shares the hash tag,
/// so a Cluster keeps them in one slot and one script may touch them all.
pub(crate) fn key(tag: &Tag, kind: &str, suffix: &str) -> Vec<u8> {
    let tag = tag.as_bytes();
    let mut k = Vec::with_capacity(8 + tag.len() + kind.len() + suffix.len());
    k.extend_from_slice(b"tg:{");
    k.extend_from_slice(tag);
    k.extend_from_slice(b"}:");
    k.extend_from_slice(kind.as_bytes());
    k.push(b':');
    k.extend_from_slice(suffix.as_bytes());
    k
}

/// The minute key and the day key of `tag` at `at`.
pub(crate) fn window_keys(tag: &Tag, at: Instant) -> Result<(Vec<u8>, Vec<u8>), StoreError> {
    let (minute, day) = windows(at)?;
    Ok((
        key(tag, "m", &minute.to_string()),
        key(tag, "d", &day.to_string()),
    ))
}

/// Grace kept after each window's end, and how long a grant's record lives.
pub(crate) struct Times {
    pub minute_grace_ms: u64,
    pub day_grace_ms: u64,
    pub grant_record_ms: u64,
}

/// One script call, ready to send.
pub(crate) struct Call {
    op: Op,
    keys: [Vec<u8>; 2],
    record: Option<Vec<u8>>,
    args: Vec<u64>,
}

impl Call {
    pub(crate) fn new(
        op: Op,
        tag: &Tag,
        id: Option<&OpId>,
        at: Instant,
        times: &Times,
        op_args: &[u64],
    ) -> Result<Call, StoreError> {
        let (minute, day) = windows(at)?;
        let (m, d) = window_keys(tag, at)?;
        let record = id.map(|id| key(tag, op.code(), id.as_str()));
        let mut args = vec![
            (minute + 1) * MS_PER_MINUTE,
            (day + 1) * MS_PER_DAY,
            times.minute_grace_ms,
            times.day_grace_ms,
            times.grant_record_ms,
        ];
        args.extend_from_slice(op_args);
        Ok(Call {
            op,
            keys: [m, d],
            record,
            args,
        })
    }

    /// The EVALSHA invocation (the crate sends EVALSHA, and on NOSCRIPT
    /// loads the script and sends it again).
    pub(crate) fn invocation<'a>(&self, script: &'a Script) -> ScriptInvocation<'a> {
        let mut inv = script.prepare_invoke();
        inv.key(&self.keys[0]).key(&self.keys[1]);
        if let Some(r) = &self.record {
            inv.key(r);
        }
        inv.arg(self.op.code());
        for a in &self.args {
            inv.arg(*a);
        }
        inv
    }

    /// The same call as a plain `EVALSHA` command, for a pipeline (which
    /// sends commands as they are: a NOSCRIPT reply is the caller's).
    pub(crate) fn evalsha(&self, hash: &str) -> redis::Cmd {
        let mut cmd = redis::cmd("EVALSHA");
        let nkeys = if self.record.is_some() { 3 } else { 2 };
        cmd.arg(hash)
            .arg(nkeys)
            .arg(&self.keys[0])
            .arg(&self.keys[1]);
        if let Some(r) = &self.record {
            cmd.arg(r);
        }
        cmd.arg(self.op.code());
        for a in &self.args {
            cmd.arg(*a);
        }
        cmd
    }
}

/// The script's reply: replayed flag, two unit figures, both counts, both
/// PTTLs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Reply {
    pub replayed: bool,
    pub a: u64,
    pub b: u64,
    pub counts: Counts,
}

fn int(v: &Value) -> Option<i64> {
    match v {
        Value::Int(i) => Some(*i),
        _ => None,
    }
}

/// Checks the shape; anything else is a `Protocol` error, never a panic.
pub(crate) fn parse(v: &Value) -> Result<Reply, StoreError> {
    let bad = || {
        StoreError::Protocol(format!(
            "the script's reply is not 7 non-negative integers: {v:?}"
        ))
    };
    let Value::Array(items) = v else {
        return Err(bad());
    };
    if items.len() != 7 {
        return Err(bad());
    }
    let mut n = [0i64; 7];
    for (slot, item) in n.iter_mut().zip(items) {
        *slot = int(item).ok_or_else(bad)?;
    }
    let count = |x: i64| u64::try_from(x).map_err(|_| bad());
    // PTTL: -2 no key, -1 no expiry: neither is a time left.
    let ttl = |x: i64| u64::try_from(x).ok();
    Ok(Reply {
        replayed: match n[0] {
            0 => false,
            1 => true,
            _ => return Err(bad()),
        },
        a: count(n[1])?,
        b: count(n[2])?,
        counts: Counts {
            minute_count: count(n[3])?,
            day_count: count(n[4])?,
            minute_ttl_ms: ttl(n[5]),
            day_ttl_ms: ttl(n[6]),
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_share_the_hash_tag() {
        let tag = Tag::new(b"abc").unwrap();
        let at = Instant {
            day: 20_421,
            minute: 1_439,
        };
        let (m, d) = window_keys(&tag, at).unwrap();
        assert_eq!(m, b"tg:{abc}:m:29407679".to_vec());
        assert_eq!(d, b"tg:{abc}:d:20421".to_vec());
        assert!(window_keys(
            &tag,
            Instant {
                day: 1,
                minute: 1440
            }
        )
        .is_err());
    }

    #[test]
    fn replies_of_any_shape_are_errors_not_panics() {
        assert!(parse(&Value::Nil).is_err());
        assert!(parse(&Value::Array(vec![Value::Int(0); 6])).is_err());
        assert!(parse(&Value::Array(vec![Value::Int(-1); 7])).is_err());
        let mut v = vec![Value::Int(0); 7];
        v[3] = Value::BulkString(b"1".to_vec());
        assert!(parse(&Value::Array(v)).is_err());
        let mut v = vec![Value::Int(0); 7];
        v[0] = Value::Int(2);
        assert!(parse(&Value::Array(v)).is_err());
        let mut v = vec![Value::Int(3); 7];
        v[0] = Value::Int(1);
        v[5] = Value::Int(-2);
        v[6] = Value::Int(-1);
        let r = parse(&Value::Array(v)).unwrap();
        assert!(r.replayed);
        assert_eq!(r.counts.minute_ttl_ms, None);
        assert_eq!(r.counts.day_ttl_ms, None);
        assert_eq!(r.counts.day_count, 3);
    }
}
