//! Directories of pinned maps under the BPF filesystem, one per data-path instance, so that
//! several agents of a node (handoffd, mipv6d) share maps and parallel tests never collide.

use std::{
    fs,
    path::{Path, PathBuf},
};

use nix::sys::statfs::{BPF_FS_MAGIC, statfs};

use handoff_common::map;

use crate::DatapathError;

/// Where the BPF filesystem is mounted.
pub const BPFFS_ROOT: &str = "/sys/fs/bpf";

/// The directory holding the pinned maps of one data-path instance: `/sys/fs/bpf/dsl/<instance>`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PinDir(PathBuf);

impl PinDir {
    /// The pin directory of `instance` (a name without `/`).
    pub fn for_instance(instance: &str) -> PinDir {
        PinDir(Path::new(BPFFS_ROOT).join("dsl").join(instance))
    }

    /// The directory path.
    pub fn path(&self) -> &Path {
        &self.0
    }

    /// Path of the pin of map `file` in this directory.
    pub fn map(&self, file: &str) -> PathBuf {
        self.0.join(file)
    }

    /// Creates the directory (and checks the BPF filesystem is mounted): the loader's first step.
    pub fn create(&self) -> Result<(), DatapathError> {
        let mounted = statfs(BPFFS_ROOT)
            .map(|fs| fs.filesystem_type() == BPF_FS_MAGIC)
            .unwrap_or(false);
        if !mounted {
            return Err(DatapathError::BpffsMissing);
        }
        fs::create_dir_all(&self.0).map_err(|source| DatapathError::Pin {
            path: self.0.clone(),
            source,
        })
    }

    /// Removes the pins in `files` and then the directory if it is empty. Missing pins are not an
    /// error: cleanup must be idempotent.
    pub fn remove(&self, files: &[&str]) {
        for file in files {
            let path = self.map(file);
            if let Err(err) = fs::remove_file(&path)
                && err.kind() != std::io::ErrorKind::NotFound
            {
                tracing::warn!(path = %path.display(), %err, "cannot remove pinned map");
            }
        }
        // Fails (and is left alone) when another agent still has pins here.
        let _ = fs::remove_dir(&self.0);
    }
}

/// Every map of the object with its pin file name and its key and value sizes (as declared in
/// `handoff-ebpf`; the loader checks them against maps already pinned), except `NETNS_COOKIE`,
/// which is not pinned (it belongs to the loading process's `restore_cwnd` attachment).
pub const PINNED_MAPS: [(&str, &str, usize, usize); 10] = {
    use handoff_common::{Addr, BindingKey, CareOf, FlowEntry, FlowKey, NodeConfig};
    use std::mem::size_of;
    [
        (
            map::FLOWS,
            "flows",
            size_of::<FlowKey>(),
            size_of::<FlowEntry>(),
        ),
        (map::FROZEN_PACKETS, "frozen_packets", 4, 4),
        (map::LOCAL_HOMES, "local_homes", size_of::<Addr>(), 4),
        (
            map::RO_BINDINGS,
            "ro_bindings",
            size_of::<BindingKey>(),
            size_of::<CareOf>(),
        ),
        (
            map::HA_BINDINGS,
            "ha_bindings",
            size_of::<Addr>(),
            size_of::<CareOf>(),
        ),
        (
            map::CN_BINDINGS,
            "cn_bindings",
            size_of::<Addr>(),
            size_of::<CareOf>(),
        ),
        (map::CONFIG, "config", 4, size_of::<NodeConfig>()),
        (map::STATS, "stats", 4, 8),
        (map::LEASE, "lease", 4, 8),
        (map::BINDING_ERRORS, "binding_errors", 0, 0),
    ]
};

/// Pin files of attachments made by the loader's `Datapath::attach_persistent` (handoff-user)
/// start with this.
pub const LINK_PIN_PREFIX: &str = "link-";

/// The pin file of map `name` (one of the object's map names).
pub fn pin_file(name: &str) -> &'static str {
    PINNED_MAPS
        .iter()
        .find(|(map, ..)| *map == name)
        .map_or("unknown", |(_, file, ..)| file)
}
