//! The policy: which models exist and what each tier (or enterprise account)
//! may send to each. Loading may allocate; the lookups used while deciding
//! ([`Policy::model_index`], [`Policy::limits`]) do not.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::Path;

use serde::Deserialize;
use toml::Spanned;

/// Longest model id the region's model table can name.
pub const MODEL_NAME_MAX: usize = 56;
/// Most models one policy (and one region) can hold.
pub const MODELS_MAX: usize = 256;

/// The built-in policy: the Developer tier of the published Infercom page.
pub const BUILTIN_TOML: &str = include_str!("../policy/infercom.toml");

/// Account tiers. Free: no payment method; Developer: payment method linked;
/// Enterprise: per-account plans.
///
/// More tiers may come (match with a `_` arm), as TG_TIER_* values may.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u32)]
#[non_exhaustive]
pub enum Tier {
    /// No payment method.
    Free = 0,
    /// A payment method linked.
    Developer = 1,
    /// Per-account plans (the policy's `[accounts]`), else the tier's table.
    Enterprise = 2,
}

impl Tier {
    /// Every tier, in the order of their numbers.
    // A slice, not an array: its length is no part of the type, so a new
    // tier changes no signature.
    pub const ALL: &'static [Tier] = &[Tier::Free, Tier::Developer, Tier::Enterprise];

    /// The tier numbered `v` (TG_TIER_*), if any.
    pub fn from_u32(v: u32) -> Option<Tier> {
        Tier::ALL.get(v as usize).copied()
    }

    /// The tier's name in the policy and in answers ("free").
    pub fn name(self) -> &'static str {
        match self {
            Tier::Free => "free",
            Tier::Developer => "developer",
            Tier::Enterprise => "enterprise",
        }
    }

    /// The tier named `s`, in any ASCII case.
    pub fn parse(s: &str) -> Option<Tier> {
        Tier::ALL
            .iter()
            .copied()
            .find(|t| t.name().eq_ignore_ascii_case(s))
    }
}

/// Requests per minute and per day; both at least 1.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Requests per minute.
    pub rpm: u32,
    /// Requests per day.
    pub rpd: u32,
}

/// Tokens per minute and per day (`tpm`, `tpd`); both at least 1.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TokenLimits {
    /// Tokens per minute.
    pub tpm: u32,
    /// Tokens per day.
    pub tpd: u32,
}

impl TokenLimits {
    /// As the slot's minute and day limits, which are unit-agnostic.
    #[inline]
    pub(crate) fn windows(self) -> Limits {
        Limits {
            rpm: self.tpm,
            rpd: self.tpd,
        }
    }
}

/// What a response that brings no usage does to its reservation
/// (`[tokens] on_failed`, `on_cut`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum NoUsage {
    /// The reservation is given back: nothing is charged.
    Release,
    /// The reservation stays charged, as if it had been used.
    Keep,
}

/// How reservations are estimated and settled: the policy's `[tokens]`
/// section (docs/tokens.md).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct TokenSettings {
    /// Output tokens reserved when the body names no cap
    /// (`default_max_output`, default 4096).
    pub default_max_output: u32,
    /// Prompt bytes per token of the estimate (`bytes_per_token`, default
    /// 4): the prompt's estimate is its text bytes divided by this, rounded
    /// up. 1 makes the estimate an upper bound for byte-level BPE.
    pub bytes_per_token: u32,
    /// Tokens reserved for each base64 image or audio item in the body
    /// (`media_tokens`, default 1000).
    pub media_tokens: u32,
    /// A completed non-2xx response without usage (`on_failed`, default
    /// release).
    pub on_failed: NoUsage,
    /// A response cut before its usage arrived: client gone, upstream
    /// reset, timeout (`on_cut`, default keep: the tokens may have been
    /// generated).
    pub on_cut: NoUsage,
}

impl Default for TokenSettings {
    fn default() -> TokenSettings {
        TokenSettings {
            default_max_output: 4096,
            bytes_per_token: 4,
            media_tokens: 1000,
            on_failed: NoUsage::Release,
            on_cut: NoUsage::Keep,
        }
    }
}

impl TokenSettings {
    /// The tokens a request reserves (docs/tokens.md): its prompt's
    /// estimate, `text_bytes` (the body's bytes less its base64 media)
    /// divided by `bytes_per_token` and rounded up, plus `media_tokens` for
    /// each of its `media_items`, plus the output cap it asked for
    /// (`max_output`) or `default_max_output`. Saturates at `u32::MAX`, so
    /// an absurd cap is refused as too large, never wrapped.
    pub fn estimate(&self, text_bytes: u64, media_items: u32, max_output: Option<u64>) -> u32 {
        let prompt = text_bytes.div_ceil(self.bytes_per_token.max(1) as u64);
        let media = media_items as u64 * self.media_tokens as u64;
        let output = max_output.unwrap_or(self.default_max_output as u64);
        prompt
            .saturating_add(media)
            .saturating_add(output)
            .min(u32::MAX as u64) as u32
    }
}

/// One policy entry: a key's request limits, and its other units' limits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Entry {
    limits: Limits,
    units: Units,
}

/// A key's limits beyond requests: tokens per window, requests at once.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Units {
    tokens: Option<TokenLimits>,
    max_in_flight: Option<u16>,
}

/// Largest `max_in_flight` a policy takes (the table counts it in 16 bits).
pub const MAX_IN_FLIGHT_MAX: u16 = u16::MAX;

/// A model of the policy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Model {
    /// The model id requests name, exactly.
    pub name: String,
    /// Where it is hosted, as the policy says ("EU", "Global").
    pub region: String,
    /// Who made it, if the policy says.
    pub developer: Option<String>,
}

/// A loaded, validated policy.
#[derive(Clone, Debug)]
pub struct Policy {
    models: Vec<Model>,
    index: ModelIndex,
    /// `tiers[tier][model]`; `None` = no limit configured.
    tiers: [Vec<Option<Limits>>; 3],
    /// `tier_units[tier][model]`: the other units' limits beside `tiers`,
    /// apart so that a request-only decision reads what it always read.
    tier_units: [Vec<Units>; 3],
    /// Enterprise plans by account id; a model missing from a plan falls back
    /// to the enterprise tier table.
    accounts: HashMap<Box<[u8]>, Vec<Option<Entry>>>,
    /// Some entry has token limits: only then do decisions look for them.
    has_tokens: bool,
    /// Some entry has an in-flight limit.
    has_in_flight: bool,
    tokens: TokenSettings,
    /// How far ahead of `now` stored counts may be dated before they are
    /// taken for a clock fault (see [`Policy::max_skew_seconds`]).
    max_skew_seconds: u32,
}

/// Default for `[clock] max_skew_seconds`: a minute covers NTP steps and
/// slews; a clock wrong by more than that is a fault, not a correction.
pub const DEFAULT_MAX_SKEW_SECONDS: u32 = 60;
/// Largest `max_skew_seconds` accepted: a day (a larger bound would let one
/// bad clock reading lock a key out of whole days).
pub const MAX_SKEW_SECONDS_MAX: u32 = 86_400;

/// Why a policy was refused: where, which field, and what is wrong.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PolicyError {
    /// The policy file (or `<builtin>`, `<string>`).
    pub file: String,
    /// The line of the file, when known.
    pub line: Option<u32>,
    /// The field concerned (`tiers.free.DeepSeek-V3.1.rpm`).
    pub field: String,
    /// What is wrong with it.
    pub message: String,
    /// Set when the file could not be read at all (as opposed to invalid).
    pub io: Option<std::io::ErrorKind>,
}

impl fmt::Display for PolicyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file)?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
        }
        if !self.field.is_empty() {
            write!(f, ": {}", self.field)?;
        }
        write!(f, ": {}", self.message)
    }
}

impl std::error::Error for PolicyError {}

impl Policy {
    /// The built-in policy (Developer tier table, 12 models, no Free tier).
    pub fn builtin() -> Policy {
        Policy::parse(BUILTIN_TOML, "<built-in policy>").expect("built-in policy is valid")
    }

    /// Reads and validates a TOML policy file.
    pub fn load(path: impl AsRef<Path>) -> Result<Policy, PolicyError> {
        let path = path.as_ref();
        let shown = path.display().to_string();
        let text = std::fs::read(path).map_err(|e| PolicyError {
            file: shown.clone(),
            line: None,
            field: String::new(),
            message: format!("cannot read the policy file: {e}"),
            io: Some(e.kind()),
        })?;
        let text = String::from_utf8(text).map_err(|e| PolicyError {
            file: shown.clone(),
            line: Some(line_of(
                &String::from_utf8_lossy(e.as_bytes()),
                e.utf8_error().valid_up_to(),
            )),
            field: String::new(),
            message: "the policy file is not valid UTF-8".into(),
            io: None,
        })?;
        Policy::parse(&text, &shown)
    }

    /// Parses and validates policy text; `origin` names it in errors.
    pub fn parse(text: &str, origin: &str) -> Result<Policy, PolicyError> {
        let err =
            |span: Option<std::ops::Range<usize>>, field: &str, message: String| PolicyError {
                file: origin.to_string(),
                line: span.map(|s| line_of(text, s.start)),
                field: field.to_string(),
                message,
                io: None,
            };
        let file: FileDef =
            toml::from_str(text).map_err(|e| err(e.span(), "", e.message().trim().to_string()))?;

        if file.models.is_empty() {
            return Err(err(None, "models", "the policy names no models".into()));
        }
        if file.models.len() > MODELS_MAX {
            return Err(err(None, "models", format!("at most {MODELS_MAX} models")));
        }
        let mut models = Vec::with_capacity(file.models.len());
        for (name, def) in &file.models {
            let field = format!("models.{}", quoted(name));
            if name.is_empty() || name.len() > MODEL_NAME_MAX {
                return Err(err(
                    Some(def.span()),
                    &field,
                    format!("a model id must be 1 to {MODEL_NAME_MAX} bytes"),
                ));
            }
            let def = def.get_ref();
            if def.region.get_ref().trim().is_empty() {
                return Err(err(
                    Some(def.region.span()),
                    &format!("{field}.region"),
                    "must not be empty".into(),
                ));
            }
            models.push(Model {
                name: name.clone(),
                region: def.region.get_ref().clone(),
                developer: def.developer.clone(),
            });
        }
        let index = ModelIndex::new(&models);

        let table = |section: &str, defs: &BTreeMap<String, Spanned<LimitsDef>>| {
            let mut out = vec![None; models.len()];
            for (name, def) in defs {
                let field = format!("{section}.{}", quoted(name));
                let Some(i) = index.get(name.as_bytes()) else {
                    return Err(err(
                        Some(def.span()),
                        &field,
                        format!(
                            "unknown model {}: add it under [models] first",
                            quoted(name)
                        ),
                    ));
                };
                out[i] = Some(limits_of(def.get_ref(), &field, &err)?);
            }
            Ok(out)
        };
        let entries = [
            table("tiers.free", &file.tiers.free)?,
            table("tiers.developer", &file.tiers.developer)?,
            table("tiers.enterprise", &file.tiers.enterprise)?,
        ];
        let tiers = entries
            .each_ref()
            .map(|t| t.iter().map(|e| e.map(|e| e.limits)).collect());
        let tier_units = entries.each_ref().map(|t| {
            t.iter()
                .map(|e| e.map(|e| e.units).unwrap_or_default())
                .collect()
        });
        let mut accounts = HashMap::with_capacity(file.accounts.len());
        for (account, plan) in &file.accounts {
            let field = format!("accounts.{}", quoted(account));
            if account.is_empty() || account.len() > crate::key::ACCOUNT_MAX {
                return Err(err(
                    Some(plan.span()),
                    &field,
                    format!(
                        "an account id must be 1 to {} bytes",
                        crate::key::ACCOUNT_MAX
                    ),
                ));
            }
            let limits = table(&field, plan.get_ref())?;
            accounts.insert(account.as_bytes().into(), limits);
        }
        let max_skew_seconds = match &file.clock {
            None => DEFAULT_MAX_SKEW_SECONDS,
            Some(c) => {
                let v = &c.get_ref().max_skew_seconds;
                match u32::try_from(*v.get_ref()) {
                    Ok(n) if n <= MAX_SKEW_SECONDS_MAX => n,
                    _ => {
                        return Err(err(
                            Some(v.span()),
                            "clock.max_skew_seconds",
                            format!("must be 0 to {MAX_SKEW_SECONDS_MAX} seconds"),
                        ))
                    }
                }
            }
        };
        let has = |f: fn(&Units) -> bool| {
            entries
                .iter()
                .chain(accounts.values())
                .flatten()
                .any(|e| e.is_some_and(|e| f(&e.units)))
        };
        let has_tokens = has(|u| u.tokens.is_some());
        let has_in_flight = has(|u| u.max_in_flight.is_some());
        let tokens = match &file.tokens {
            None => TokenSettings::default(),
            Some(t) => token_settings(t, &err)?,
        };
        Ok(Policy {
            models,
            index,
            tiers,
            tier_units,
            accounts,
            max_skew_seconds,
            has_tokens,
            has_in_flight,
            tokens,
        })
    }

    /// Counts dated further than this ahead of `now` are a clock fault (a
    /// host or caller clock that was wrong, then corrected): they are taken
    /// as counts of the current window instead of locking the key out until
    /// the faulty time comes round. Within the bound a clock that steps back
    /// gives no quota back. `[clock] max_skew_seconds`, default 60.
    pub fn max_skew_seconds(&self) -> u32 {
        self.max_skew_seconds
    }

    /// The policy's models, in the order of the file.
    pub fn models(&self) -> &[Model] {
        &self.models
    }

    /// Index of a model by its id, exact bytes. No allocation.
    #[inline]
    pub fn model_index(&self, name: &[u8]) -> Option<usize> {
        if name.len() > MODEL_NAME_MAX {
            return None;
        }
        self.index.get(name)
    }

    /// The limits in force for `tier` on model `model` (an index from
    /// [`Policy::model_index`]); enterprise looks up the account's plan first.
    #[inline]
    pub fn limits(&self, tier: Tier, model: usize, account: &[u8]) -> Option<Limits> {
        if tier == Tier::Enterprise {
            if let Some(plan) = self.accounts.get(account) {
                if let Some(e) = plan.get(model).copied().flatten() {
                    return Some(e.limits);
                }
            }
        }
        self.tiers[tier as usize].get(model).copied().flatten()
    }

    /// The token limits in force for `tier` on model `model`, as
    /// [`Policy::limits`] finds them; `None` = no token limit.
    #[inline]
    pub fn token_limits(&self, tier: Tier, model: usize, account: &[u8]) -> Option<TokenLimits> {
        if !self.has_tokens {
            return None;
        }
        if tier == Tier::Enterprise {
            if let Some(plan) = self.accounts.get(account) {
                if let Some(e) = plan.get(model).copied().flatten() {
                    return e.units.tokens;
                }
            }
        }
        self.tier_units[tier as usize].get(model)?.tokens
    }

    /// The most requests of a key that may run at once (`max_in_flight`),
    /// found as [`Policy::limits`] finds them; `None` = no such limit.
    #[inline]
    pub fn max_in_flight(&self, tier: Tier, model: usize, account: &[u8]) -> Option<u16> {
        if !self.has_in_flight {
            return None;
        }
        if tier == Tier::Enterprise {
            if let Some(plan) = self.accounts.get(account) {
                if let Some(e) = plan.get(model).copied().flatten() {
                    return e.units.max_in_flight;
                }
            }
        }
        self.tier_units[tier as usize].get(model)?.max_in_flight
    }

    /// Whether any key of the policy has an in-flight limit.
    pub fn has_in_flight_limits(&self) -> bool {
        self.has_in_flight
    }

    /// Whether any key of the policy has a token limit.
    #[inline]
    pub fn has_token_limits(&self) -> bool {
        self.has_tokens
    }

    /// How reservations are estimated and settled (`[tokens]`).
    pub fn token_settings(&self) -> &TokenSettings {
        &self.tokens
    }

    /// The tokens a request with this body reserves: [`TokenSettings::estimate`]
    /// on the facts the model scan found ([`crate::body::facts_of`]).
    pub fn estimate_tokens(&self, facts: &crate::body::BodyFacts) -> u32 {
        self.tokens.estimate(
            facts.bytes.saturating_sub(facts.media_bytes),
            facts.media_items,
            facts.max_output,
        )
    }

    /// Enterprise account ids that have a plan, sorted.
    pub fn accounts(&self) -> Vec<&[u8]> {
        let mut v: Vec<&[u8]> = self.accounts.keys().map(|k| &k[..]).collect();
        v.sort();
        v
    }
}

type ErrFn<'a> = dyn Fn(Option<std::ops::Range<usize>>, &str, String) -> PolicyError + 'a;

fn limits_of(def: &LimitsDef, field: &str, err: &ErrFn<'_>) -> Result<Entry, PolicyError> {
    let one = |v: &Spanned<i64>, name: &str| -> Result<u32, PolicyError> {
        let n = *v.get_ref();
        if n < 1 || n > u32::MAX as i64 {
            return Err(err(
                Some(v.span()),
                &format!("{field}.{name}"),
                format!("must be a whole number from 1 to {}, not {n}", u32::MAX),
            ));
        }
        Ok(n as u32)
    };
    let rpm = one(&def.rpm, "rpm")?;
    let rpd = one(&def.rpd, "rpd")?;
    if rpm > rpd {
        return Err(err(
            Some(def.rpm.span()),
            &format!("{field}.rpm"),
            format!("rpm {rpm} is more than rpd {rpd}: a minute cannot allow more than its day"),
        ));
    }
    let tokens = match (&def.tpm, &def.tpd) {
        (None, None) => None,
        (Some(tpm), Some(tpd)) => {
            let (m, d) = (one(tpm, "tpm")?, one(tpd, "tpd")?);
            if m > d {
                return Err(err(
                    Some(tpm.span()),
                    &format!("{field}.tpm"),
                    format!(
                        "tpm {m} is more than tpd {d}: a minute cannot allow more than its day"
                    ),
                ));
            }
            Some(TokenLimits { tpm: m, tpd: d })
        }
        (Some(v), None) | (None, Some(v)) => {
            let (has, lacks) = if def.tpm.is_some() {
                ("tpm", "tpd")
            } else {
                ("tpd", "tpm")
            };
            return Err(err(
                Some(v.span()),
                &format!("{field}.{has}"),
                format!("{has} without {lacks}: a token limit names both windows"),
            ));
        }
    };
    let max_in_flight = match &def.max_in_flight {
        None => None,
        Some(v) => {
            let n = *v.get_ref();
            if n < 1 || n > MAX_IN_FLIGHT_MAX as i64 {
                return Err(err(
                    Some(v.span()),
                    &format!("{field}.max_in_flight"),
                    format!("must be a whole number from 1 to {MAX_IN_FLIGHT_MAX}, not {n}"),
                ));
            }
            Some(n as u16)
        }
    };
    Ok(Entry {
        limits: Limits { rpm, rpd },
        units: Units {
            tokens,
            max_in_flight,
        },
    })
}

fn token_settings(def: &Spanned<TokensDef>, err: &ErrFn<'_>) -> Result<TokenSettings, PolicyError> {
    let mut out = TokenSettings::default();
    let def = def.get_ref();
    let num = |v: &Option<Spanned<i64>>, name: &str, min: i64, max: i64, dflt: u32| {
        let Some(v) = v else { return Ok(dflt) };
        let n = *v.get_ref();
        if n < min || n > max {
            return Err(err(
                Some(v.span()),
                &format!("tokens.{name}"),
                format!("must be a whole number from {min} to {max}, not {n}"),
            ));
        }
        Ok(n as u32)
    };
    out.default_max_output = num(
        &def.default_max_output,
        "default_max_output",
        0,
        u32::MAX as i64,
        out.default_max_output,
    )?;
    out.bytes_per_token = num(
        &def.bytes_per_token,
        "bytes_per_token",
        1,
        64,
        out.bytes_per_token,
    )?;
    out.media_tokens = num(
        &def.media_tokens,
        "media_tokens",
        0,
        u32::MAX as i64,
        out.media_tokens,
    )?;
    let choice = |v: &Option<Spanned<String>>, name: &str, dflt: NoUsage| match v {
        None => Ok(dflt),
        Some(v) => match v.get_ref().as_str() {
            "release" => Ok(NoUsage::Release),
            "keep" => Ok(NoUsage::Keep),
            other => Err(err(
                Some(v.span()),
                &format!("tokens.{name}"),
                format!("must be \"release\" or \"keep\", not {other:?}"),
            )),
        },
    };
    out.on_failed = choice(&def.on_failed, "on_failed", out.on_failed)?;
    out.on_cut = choice(&def.on_cut, "on_cut", out.on_cut)?;
    Ok(out)
}

fn quoted(s: &str) -> String {
    if !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    {
        s.to_string()
    } else {
        format!("{s:?}")
    }
}

fn line_of(text: &str, offset: usize) -> u32 {
    let end = offset.min(text.len());
    text.as_bytes()[..end]
        .iter()
        .filter(|&&b| b == b'\n')
        .count() as u32
        + 1
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileDef {
    #[serde(default)]
    models: BTreeMap<String, Spanned<ModelDef>>,
    #[serde(default)]
    tiers: TiersDef,
    #[serde(default)]
    accounts: BTreeMap<String, Spanned<BTreeMap<String, Spanned<LimitsDef>>>>,
    #[serde(default)]
    clock: Option<Spanned<ClockDef>>,
    #[serde(default)]
    tokens: Option<Spanned<TokensDef>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TokensDef {
    #[serde(default)]
    default_max_output: Option<Spanned<i64>>,
    #[serde(default)]
    bytes_per_token: Option<Spanned<i64>>,
    #[serde(default)]
    media_tokens: Option<Spanned<i64>>,
    #[serde(default)]
    on_failed: Option<Spanned<String>>,
    #[serde(default)]
    on_cut: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ClockDef {
    max_skew_seconds: Spanned<i64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ModelDef {
    region: Spanned<String>,
    #[serde(default)]
    developer: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct TiersDef {
    #[serde(default)]
    free: BTreeMap<String, Spanned<LimitsDef>>,
    #[serde(default)]
    developer: BTreeMap<String, Spanned<LimitsDef>>,
    #[serde(default)]
    enterprise: BTreeMap<String, Spanned<LimitsDef>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LimitsDef {
    rpm: Spanned<i64>,
    rpd: Spanned<i64>,
    #[serde(default)]
    tpm: Option<Spanned<i64>>,
    #[serde(default)]
    tpd: Option<Spanned<i64>>,
    #[serde(default)]
    max_in_flight: Option<Spanned<i64>>,
}

/// Name -> model index: open addressing over a table at least twice the
/// model count, with the hash's multiplier searched at load time so that
/// (for policies whose names differ in length or first or last eight bytes,
/// which is all real ones) every model sits in its own bucket. A bucket
/// keeps the name's length and zero-padded words beside the index, so a
/// lookup is one multiply, one bucket and a few word compares, no memcmp.
#[derive(Clone, Debug)]
struct ModelIndex {
    mult: u64,
    shift: u32,
    buckets: Box<[IndexEntry]>,
}

#[derive(Clone, Copy, Debug)]
struct IndexEntry {
    /// Model index + 1; 0 = empty.
    model: u16,
    len: u16,
    /// The name's first and last eight bytes (overlapping, or both the
    /// zero-padded name when shorter), which decide most compares.
    head: u64,
    tail: u64,
    name: [u8; MODEL_NAME_MAX],
}

impl Default for IndexEntry {
    fn default() -> Self {
        IndexEntry {
            model: 0,
            len: 0,
            head: 0,
            tail: 0,
            name: [0; MODEL_NAME_MAX],
        }
    }
}

/// Little-endian u64 at `b[i..i + 8]` (the caller has checked the bounds).
#[inline(always)]
fn load(b: &[u8], i: usize) -> u64 {
    u64::from_le_bytes(b[i..i + 8].try_into().unwrap())
}

/// First and last eight bytes of a name, as [`IndexEntry`] keeps them.
#[inline(always)]
fn ends(name: &[u8]) -> (u64, u64) {
    let n = name.len();
    if n >= 8 {
        (load(name, 0), load(name, n - 8))
    } else {
        let w = crate::key::word(name, 0);
        (w, w)
    }
}

impl ModelIndex {
    fn new(models: &[Model]) -> ModelIndex {
        let cap = (models.len() * 2).next_power_of_two().max(8);
        let shift = 64 - cap.trailing_zeros();
        // Odd multipliers from a fixed sequence: the first that leaves no
        // two names in one bucket wins; failing that, the fewest collisions.
        let mut best = (usize::MAX, 0x9E37_79B9_7F4A_7C15u64);
        let mut mult = best.1;
        for _ in 0..256 {
            let mut used = vec![false; cap];
            let mut collisions = 0;
            for m in models {
                let name = m.name.as_bytes();
                let (head, tail) = ends(name);
                let b = Self::bucket(mult, shift, name.len(), head, tail);
                collisions += used[b] as usize;
                used[b] = true;
            }
            if collisions < best.0 {
                best = (collisions, mult);
            }
            if collisions == 0 {
                break;
            }
            mult = mult
                .wrapping_mul(0x5851_F42D_4C95_7F2D)
                .wrapping_add(0x1405_7B7E_F767_814F)
                | 1;
        }
        let mult = best.1;
        let mut buckets = vec![IndexEntry::default(); cap].into_boxed_slice();
        for (i, m) in models.iter().enumerate() {
            let name = m.name.as_bytes();
            let (head, tail) = ends(name);
            let mut b = Self::bucket(mult, shift, name.len(), head, tail);
            while buckets[b].model != 0 {
                b = (b + 1) & (cap - 1);
            }
            let mut e = IndexEntry {
                model: i as u16 + 1,
                len: name.len() as u16,
                head,
                tail,
                ..IndexEntry::default()
            };
            e.name[..name.len()].copy_from_slice(name);
            buckets[b] = e;
        }
        ModelIndex {
            mult,
            shift,
            buckets,
        }
    }

    #[inline(always)]
    fn bucket(mult: u64, shift: u32, len: usize, head: u64, tail: u64) -> usize {
        ((head ^ tail.rotate_left(29) ^ len as u64).wrapping_mul(mult) >> shift) as usize
    }

    #[inline]
    fn get(&self, name: &[u8]) -> Option<usize> {
        let n = name.len();
        let (head, tail) = ends(name);
        let mask = self.buckets.len() - 1;
        let mut b = Self::bucket(self.mult, self.shift, n, head, tail);
        loop {
            let e = &self.buckets[b];
            if e.model == 0 {
                return None;
            }
            if e.len as usize == n && e.head == head && e.tail == tail && Self::middle(e, name) {
                return Some(e.model as usize - 1);
            }
            b = (b + 1) & mask;
        }
    }

    /// Whether the bytes between a name's first and last eight (if any)
    /// equal the entry's; the caller has matched length and ends.
    #[inline(always)]
    fn middle(e: &IndexEntry, name: &[u8]) -> bool {
        let mut i = 8;
        while i + 8 < name.len() {
            if load(name, i) != load(&e.name, i) {
                return false;
            }
            i += 8;
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_matches_the_published_table() {
        let p = Policy::builtin();
        assert_eq!(p.models().len(), 12);
        let table: &[(&str, &str, u32, u32)] = &[
            ("DeepSeek-V3.1", "EU", 30, 15_000),
            ("Meta-Llama-3.3-70B-Instruct", "EU", 120, 30_000),
            ("gpt-oss-120b", "EU", 150, 50_000),
            ("Qwen3-32B", "Global", 30, 6_000),
            ("Qwen3-235B", "Global", 30, 6_000),
            ("DeepSeek-R1-0528", "Global", 60, 12_000),
            ("DeepSeek-R1-Distill-Llama-70B", "Global", 240, 48_000),
            ("DeepSeek-V3-0324", "Global", 60, 12_000),
            ("DeepSeek-V3.1-Terminus", "Global", 60, 12_000),
            ("DeepSeek-V3.2", "Global", 60, 12_000),
            ("Llama-4-Maverick-17B-128E-Instruct", "Global", 60, 12_000),
            ("Meta-Llama-3.1-8B-Instruct", "Global", 1_440, 288_000),
        ];
        for &(name, region, rpm, rpd) in table {
            let i = p.model_index(name.as_bytes()).unwrap();
            assert_eq!(p.models()[i].region, region);
            assert_eq!(
                p.limits(Tier::Developer, i, b"a"),
                Some(Limits { rpm, rpd })
            );
            assert_eq!(p.limits(Tier::Free, i, b"a"), None, "no invented free tier");
            assert_eq!(p.limits(Tier::Enterprise, i, b"a"), None);
        }
        assert_eq!(p.model_index(b"deepseek-v3.1"), None);
        assert_eq!(p.model_index(b""), None);
    }

    #[test]
    fn enterprise_plans_override_the_tier() {
        let p = Policy::parse(
            r#"
[models]
"m" = { region = "EU" }
"n" = { region = "EU" }
[tiers.enterprise]
"m" = { rpm = 100, rpd = 1000 }
"n" = { rpm = 5, rpd = 50 }
[accounts."acme"]
"m" = { rpm = 600, rpd = 90000 }
"#,
            "t.toml",
        )
        .unwrap();
        let m = p.model_index(b"m").unwrap();
        let n = p.model_index(b"n").unwrap();
        assert_eq!(
            p.limits(Tier::Enterprise, m, b"acme"),
            Some(Limits {
                rpm: 600,
                rpd: 90_000
            })
        );
        assert_eq!(
            p.limits(Tier::Enterprise, n, b"acme"),
            Some(Limits { rpm: 5, rpd: 50 })
        );
        assert_eq!(
            p.limits(Tier::Enterprise, m, b"other"),
            Some(Limits {
                rpm: 100,
                rpd: 1000
            })
        );
        assert_eq!(p.limits(Tier::Developer, m, b"acme"), None);
    }

    #[test]
    fn errors_name_file_line_and_field() {
        let e = Policy::parse("[models]\n\"m\" = { region = \"EU\" }\n[tiers.developer]\n\"m\" = { rpm = 0, rpd = 5 }\n", "p.toml")
            .unwrap_err();
        assert_eq!(e.file, "p.toml");
        assert_eq!(e.line, Some(4));
        assert_eq!(e.field, "tiers.developer.m.rpm");
        assert!(
            e.to_string()
                .starts_with("p.toml:4: tiers.developer.m.rpm: must be"),
            "{e}"
        );

        let e = Policy::parse("[models]\n\"m\" = { region = \"EU\" }\n[tiers.developer]\n\"x\" = { rpm = 1, rpd = 5 }\n", "p.toml")
            .unwrap_err();
        assert_eq!(e.line, Some(4));
        assert!(e.message.contains("unknown model"), "{e}");

        let e = Policy::parse("[models]\n\"m\" = { region = \"EU\" }\n[tierz]\n", "p.toml")
            .unwrap_err();
        assert_eq!(e.line, Some(3), "{e}");

        let e = Policy::parse("[models\n", "p.toml").unwrap_err();
        assert_eq!(e.line, Some(1), "{e}");

        let e = Policy::parse("", "p.toml").unwrap_err();
        assert!(e.message.contains("no models"));

        let e = Policy::parse(
            "[models]\n\"m\" = { region = \"EU\" }\n[tiers.free]\n\"m\" = { rpm = 10, rpd = 5 }\n",
            "p.toml",
        )
        .unwrap_err();
        assert!(e.message.contains("more than rpd"), "{e}");

        let e = Policy::load("/nonexistent/policy.toml").unwrap_err();
        assert!(
            e.to_string()
                .starts_with("/nonexistent/policy.toml: cannot read"),
            "{e}"
        );
    }

    #[test]
    #[cfg_attr(miri, ignore = "parses 200 models: slow under miri")]
    fn model_index_handles_many_models() {
        let mut text = String::from("[models]\n");
        for i in 0..200 {
            text += &format!("\"model-{i}\" = {{ region = \"EU\" }}\n");
        }
        let p = Policy::parse(&text, "t").unwrap();
        for i in 0..200 {
            let name = format!("model-{i}");
            let idx = p.model_index(name.as_bytes()).unwrap();
            assert_eq!(p.models()[idx].name, name);
        }
        assert_eq!(p.model_index(b"model-200"), None);
    }
}

#[cfg(test)]
mod in_flight_tests {
    use super::*;

    #[test]
    fn max_in_flight_is_read_checked_and_looked_up_as_the_limits() {
        let base = "[models]\nm = { region = \"EU\" }\nn = { region = \"EU\" }\n";
        let p = Policy::parse(
            &format!(
                "{base}[tiers.developer]\nm = {{ rpm = 30, rpd = 100, max_in_flight = 2 }}\nn = {{ rpm = 30, rpd = 100 }}\n[tiers.enterprise]\nm = {{ rpm = 30, rpd = 100, max_in_flight = 8 }}\n[accounts.acme]\nm = {{ rpm = 300, rpd = 1000, max_in_flight = 64 }}\n"
            ),
            "p",
        )
        .unwrap();
        assert!(p.has_in_flight_limits());
        let (m, n) = (p.model_index(b"m").unwrap(), p.model_index(b"n").unwrap());
        assert_eq!(p.max_in_flight(Tier::Developer, m, b"x"), Some(2));
        assert_eq!(p.max_in_flight(Tier::Developer, n, b"x"), None);
        assert_eq!(p.max_in_flight(Tier::Enterprise, m, b"x"), Some(8));
        assert_eq!(p.max_in_flight(Tier::Enterprise, m, b"acme"), Some(64));
        assert_eq!(p.max_in_flight(Tier::Free, m, b"x"), None);
        assert!(!Policy::builtin().has_in_flight_limits());
        for (v, want) in [("0", "from 1 to 65535"), ("65536", "from 1 to 65535")] {
            let e = Policy::parse(
                &format!(
                    "{base}[tiers.developer]\nm = {{ rpm = 1, rpd = 2, max_in_flight = {v} }}\n"
                ),
                "p",
            )
            .unwrap_err();
            assert!(e.to_string().contains(want), "{v}: {e}");
            assert!(e.to_string().contains("max_in_flight"), "{e}");
        }
    }
}
