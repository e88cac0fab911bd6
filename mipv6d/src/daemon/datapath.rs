//! Binding changes into the data path: the eBPF binding maps that `handoff-user` pins for an
//! instance (`/sys/fs/bpf/dsl/<instance>/`), so that the programs follow the bindings at once.

use handoff_maps::{BindingMaps, DatapathError, PinDir};

use super::control::{DatapathSink, DatapathUpdate};

/// The pinned binding maps of one data-path instance.
pub struct PinnedMaps {
    maps: BindingMaps,
    instance: String,
}

impl PinnedMaps {
    /// Opens the maps pinned by the process that loaded the data path of `instance`.
    pub fn open(instance: &str) -> Result<PinnedMaps, DatapathError> {
        Ok(PinnedMaps {
            maps: BindingMaps::open(&PinDir::for_instance(instance))?,
            instance: instance.to_owned(),
        })
    }
}

impl DatapathSink for PinnedMaps {
    fn apply(&mut self, update: DatapathUpdate) {
        let result = match update {
            DatapathUpdate::Correspondent { home, care_of } => self
                .maps
                .set_correspondent(home.octets(), care_of.map(|a| a.octets())),
            DatapathUpdate::RouteOptimized {
                peer,
                home,
                care_of,
            } => self.maps.set_route_optimized(
                peer.octets(),
                home.octets(),
                care_of.map(|a| a.octets()),
            ),
            DatapathUpdate::Tunnel { home, care_of } => self
                .maps
                .set_tunnel(home.octets(), care_of.map(|a| a.octets())),
        };
        match result {
            Ok(_) => tracing::debug!(instance = %self.instance, ?update, "data path updated"),
            // The binding stands in mipv6d; the data path lags until the next change.
            Err(error) => {
                tracing::warn!(instance = %self.instance, ?update, %error, "cannot update the data path")
            }
        }
    }
}
