//! Operator views of a region: walk the bound slots, verify invariants,
//! reset one key. None of this is on the decision path.

use std::sync::atomic::Ordering::Acquire;

use crate::key::{self, id_parts};
use crate::region::Region;
use crate::slot::State;

/// One bound slot as read at one moment.
#[derive(Clone, Debug)]
pub(crate) struct Entry {
    pub index: usize,
    pub ident: u128,
    pub state: State,
    pub model_id: u16,
    /// The account id, if its stored bytes hash back to the key (a binder
    /// killed before writing them leaves the key unnamed).
    pub account: Option<Vec<u8>>,
}

/// Every slot bound to a key (counts current or not), in slot order.
pub(crate) fn entries(region: &Region) -> impl Iterator<Item = Entry> + '_ {
    (0..region.slot_count() as usize).filter_map(move |i| {
        let slot = region.slot(i);
        let ident = slot.ident.load(Acquire);
        let state = State::unpack(slot.state.load(Acquire));
        if ident == 0 || state.gen != ident as u16 {
            return None;
        }
        let (model_id, len) = id_parts(ident >> 16);
        let (buf, n) = region.read_name(i, len);
        let account = (key::hash(region.seed(), &buf[..n], model_id).id == ident >> 16)
            .then(|| buf[..n].to_vec());
        Some(Entry {
            index: i,
            ident,
            state,
            model_id,
            account,
        })
    })
}
