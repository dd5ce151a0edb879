//! One way to make a limiter that grows by options instead of by twin
//! constructors: the table's format now, more later (the C ABI's
//! tg_limiter_options, the C++ wrapper's Limiter::Options).

use std::path::Path;

use crate::error::Error;
use crate::limiter::Limiter;
use crate::policy::Policy;

/// How a limiter's table is made, as [`std::fs::OpenOptions`] opens a
/// file: set the options, then make the table on the heap
/// ([`build`](LimiterOptions::build)), in a file
/// ([`open`](LimiterOptions::open)) or in caller memory
/// ([`init_in`](LimiterOptions::init_in),
/// [`attach`](LimiterOptions::attach)). Every option defaults to off, which
/// is what [`Limiter::new`], [`Limiter::open`] and [`Limiter::init_in`]
/// make.
///
/// ```
/// use tollgate::{LimiterOptions, Policy};
///
/// // A table of quota leases, shared across hosts once connected.
/// let l = LimiterOptions::new().leases(true).build(&Policy::builtin(), 1024).unwrap();
/// assert!(l.is_leased());
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LimiterOptions {
    leases: bool,
    create: bool,
}

impl LimiterOptions {
    /// Every option off: a local table; a file must exist.
    pub fn new() -> LimiterOptions {
        LimiterOptions::default()
    }

    /// Formats the table for quota leases, one quota per (account, model)
    /// across every host joined to one Redis: 64 bytes more per slot
    /// ([`region_size_for_leases`](crate::region_size_for_leases)), and
    /// decisions need [`Limiter::connect`] first (until then they are
    /// [`Error::NotJoined`]). A table that exists already (a file, attached
    /// memory) must be one: [`Error::NotLeased`] otherwise.
    pub fn leases(&mut self, leases: bool) -> &mut LimiterOptions {
        self.leases = leases;
        self
    }

    /// For [`open`](LimiterOptions::open): a missing file is created and
    /// formatted, race-free (concurrent openers end up on one table).
    pub fn create(&mut self, create: bool) -> &mut LimiterOptions {
        self.create = create;
        self
    }

    /// A limiter whose table is one heap allocation of `slots` slots.
    pub fn build(&self, policy: &Policy, slots: u32) -> Result<Limiter, Error> {
        Limiter::new_as(policy, slots, self.leases)
    }

    /// Maps the region file at `path`, shared by every process that opens
    /// it (see [`Limiter::open`]); `slots` = 0 takes an existing file as it
    /// is.
    pub fn open(
        &self,
        policy: &Policy,
        path: impl AsRef<Path>,
        slots: u32,
    ) -> Result<Limiter, Error> {
        Limiter::open_as(policy, path.as_ref(), slots, self.create, self.leases)
    }

    /// Formats caller memory as an empty table of as many slots as fit.
    ///
    /// # Safety
    /// As for [`Limiter::init_in`].
    pub unsafe fn init_in(
        &self,
        policy: &Policy,
        mem: *mut u8,
        len: usize,
    ) -> Result<Limiter, Error> {
        // SAFETY: forwarded from this function's contract.
        unsafe { Limiter::init_in_as(policy, mem, len, self.leases) }
    }

    /// Uses a table already formatted in caller memory (see
    /// [`Limiter::attach`]); its format is its header's, which must be
    /// quota leases when [`leases`](LimiterOptions::leases) is set.
    ///
    /// # Safety
    /// As for [`Limiter::attach`].
    pub unsafe fn attach(
        &self,
        policy: &Policy,
        mem: *mut u8,
        len: usize,
    ) -> Result<Limiter, Error> {
        // SAFETY: forwarded from this function's contract.
        let l = unsafe { Limiter::attach(policy, mem, len) }?;
        if self.leases && !l.is_leased() {
            return Err(Error::NotLeased);
        }
        Ok(l)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::region::HeapMem;

    #[test]
    fn every_place_takes_the_format() {
        let p = Policy::builtin();
        assert!(!LimiterOptions::new().build(&p, 16).unwrap().is_leased());
        assert!(LimiterOptions::new()
            .leases(true)
            .build(&p, 16)
            .unwrap()
            .is_leased());

        let len = crate::region_size_for_leases(16).unwrap();
        assert_eq!(crate::region_slots_for_leases(len), 16);
        let mem = HeapMem::new(len).unwrap();
        let mut leased = LimiterOptions::new();
        leased.leases(true);
        // SAFETY: `mem` is live, aligned and outlives every limiter below.
        unsafe {
            let l = leased.init_in(&p, mem.as_ptr(), len).unwrap();
            assert_eq!(l.stats(0).slots, 16);
            assert!(LimiterOptions::new()
                .attach(&p, mem.as_ptr(), len)
                .unwrap()
                .is_leased());
            assert!(leased.attach(&p, mem.as_ptr(), len).unwrap().is_leased());
            drop(l);
            Limiter::init_in(&p, mem.as_ptr(), len).unwrap();
            assert!(matches!(
                leased.attach(&p, mem.as_ptr(), len),
                Err(Error::NotLeased)
            ));
        }
    }

    #[test]
    #[allow(deprecated)]
    fn the_deprecated_twins_still_make_leased_tables() {
        let p = Policy::builtin();
        assert!(Limiter::new_for_leases(&p, 16).unwrap().is_leased());
        let len = crate::region_size_for_leases(16).unwrap();
        let mem = HeapMem::new(len).unwrap();
        // SAFETY: `mem` is live, aligned and outlives the limiter.
        let l = unsafe { Limiter::init_in_for_leases(&p, mem.as_ptr(), len) }.unwrap();
        assert!(l.is_leased());
    }
}
