//! Errors, and the numeric status each one is across the C ABI.

use std::fmt;

use crate::body::BodyError;
use crate::policy::PolicyError;
use crate::region::RegionError;

/// Everything that can go wrong, short of a bug.
///
/// More variants may come in any release (match with a `_` arm), as
/// TG_E_* statuses may in the C ABI; some exist only with a feature
/// (`Store` with `redis`), so the set differs between builds anyway.
#[derive(Debug)]
#[non_exhaustive]
pub enum Error {
    /// An argument out of range; the text says which.
    Invalid(&'static str),
    /// Account id empty or longer than [`crate::ACCOUNT_MAX`] bytes.
    Account,
    /// The model is not in the policy (answer 404/400, not 429).
    UnknownModel,
    /// No limit configured for this tier and model (or enterprise account).
    NoLimit,
    /// The request costs more than a whole window allows: never admissible.
    CostTooLarge,
    /// The request's token reservation is more than a whole token window
    /// allows: never admissible. The client can ask for fewer output
    /// tokens or send a shorter prompt.
    TokensTooLarge {
        /// Tokens the request would reserve.
        reserved: u64,
        /// The smaller of the key's `tpm` and `tpd`.
        limit: u32,
    },
    /// The key has a token limit but the table has no token windows: it
    /// was formatted before they existed. `tollgate resize` carries its
    /// counts into a table that has them.
    NoTokenWindows,
    /// The key has an in-flight limit but the table has no in-flight
    /// areas, or no room for another admission or holder; the text says
    /// which.
    NoInFlight(&'static str),
    /// No free slot for a new key; the caller chooses open or closed.
    TableFull,
    /// The region's model table (256 names) is full.
    ModelTableFull,
    /// The handle was opened read-only ([`crate::Limiter::open_read_only`]).
    ReadOnly,
    /// The file system has no room to reserve a region file: `needed` bytes
    /// asked for, `free` available to us.
    NoSpace {
        /// The file that could not be reserved.
        path: String,
        /// Bytes the region file needs.
        needed: u64,
        /// Bytes the file system has free for us.
        free: u64,
    },
    /// The policy is invalid (or its file unreadable); the error says where.
    Policy(Box<PolicyError>),
    /// A request body refused by the model scan ([`crate::body`]).
    Body(BodyError),
    /// The memory or file is not a usable region.
    Region(RegionError),
    /// The table holds quota leases (it was formatted for one quota across
    /// hosts) and this handle is not joined to the store: deciding on it
    /// locally would read lease units as counts.
    NotJoined,
    /// Joining needs a table formatted for quota leases, and this one is a
    /// local table.
    NotLeased,
    /// The decision needs a round trip to the quota store and the request
    /// asked not to wait ([`crate::Request::no_wait`]): nothing was
    /// charged. Decide it again without the flag on a thread that may
    /// block (for at most the store's deadline).
    Pending,
    /// The quota store refused the configuration, or answered with an error
    /// (not a transport failure: those follow the down policy).
    #[cfg(feature = "leases")]
    Store(crate::store::StoreError),
    /// Opening, creating or mapping a file failed.
    Io {
        /// The file concerned.
        path: String,
        /// What was being done ("open", "map", ...).
        op: &'static str,
        /// The OS's reason.
        source: std::io::Error,
    },
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Invalid(what) => write!(f, "invalid argument: {what}"),
            Error::Account => write!(
                f,
                "account id must be 1 to {} bytes",
                crate::key::ACCOUNT_MAX
            ),
            Error::UnknownModel => write!(f, "unknown model"),
            Error::NoLimit => write!(f, "no limit configured for this tier and model"),
            Error::CostTooLarge => write!(f, "cost exceeds the limit itself"),
            Error::TokensTooLarge { reserved, limit } => write!(
                f,
                "the request would reserve {reserved} tokens, more than the key's token limit of {limit}"
            ),
            Error::NoTokenWindows => write!(
                f,
                "the table has no token windows (formatted before 0.4): carry it over with `tollgate resize`"
            ),
            Error::NoInFlight(why) => write!(f, "in-flight limit: {why}"),
            Error::TableFull => write!(f, "table full: no free slot for a new key"),
            Error::ModelTableFull => write!(f, "the region's model table is full"),
            Error::ReadOnly => write!(f, "the table was opened read-only"),
            Error::NoSpace { path, needed, free } => write!(
                f,
                "{path}: no space for the region: it needs {needed} bytes and {free} are free; free some, use another file system, or ask for fewer slots"
            ),
            Error::Policy(e) => write!(f, "{e}"),
            Error::Body(e) => write!(f, "{e}"),
            Error::Region(e) => write!(f, "{e}"),
            Error::NotJoined => write!(
                f,
                "the table holds quota leases shared across hosts and this limiter is not joined to the store: connect it (to Redis) before deciding"
            ),
            Error::NotLeased => write!(
                f,
                "joining a store needs a table formatted for quota leases when it was made; this one is a local table: use another file, made for leases"
            ),
            Error::Pending => write!(
                f,
                "the decision needs a round trip to the quota store and the request asked not to wait: decide it again on a thread that may block"
            ),
            #[cfg(feature = "leases")]
            Error::Store(e) => write!(f, "{e}"),
            Error::Io { path, op, source } => write!(f, "{path}: {op}: {source}"),
        }
    }
}

impl std::error::Error for Error {}

impl From<PolicyError> for Error {
    fn from(e: PolicyError) -> Error {
        Error::Policy(Box::new(e))
    }
}

impl From<BodyError> for Error {
    fn from(e: BodyError) -> Error {
        Error::Body(e)
    }
}

impl From<RegionError> for Error {
    fn from(e: RegionError) -> Error {
        Error::Region(e)
    }
}
