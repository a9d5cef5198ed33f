//! Connections counted per client address, for the listeners' bounds (the REST API's
//! connections per address, the MQTT front's logins in progress per address and in all).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

/// Open connections per client address.
#[derive(Default)]
pub(crate) struct PerAddress(Mutex<HashMap<IpAddr, usize>>);

impl PerAddress {
    /// A place for one more connection from `address`, if it has fewer than `per_address`
    /// and all addresses together fewer than `total`.
    pub(crate) fn take(
        self: &Arc<Self>,
        address: IpAddr,
        per_address: usize,
        total: usize,
    ) -> Option<AddressSlot> {
        let mut counts = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let all: usize = counts.values().sum();
        let count = counts.entry(address).or_insert(0);
        if *count >= per_address || all >= total {
            return None;
        }
        *count += 1;
        Some(AddressSlot(Arc::clone(self), address))
    }
}

/// One connection's place among its address's; freed on drop.
pub(crate) struct AddressSlot(Arc<PerAddress>, IpAddr);

impl Drop for AddressSlot {
    fn drop(&mut self) {
        let mut counts = self.0 .0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(count) = counts.get_mut(&self.1) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                counts.remove(&self.1);
            }
        }
    }
}
