//! Directories of pinned maps under the BPF filesystem, one per data-path instance, so that
//! several agents of a node (handoffd, mipv6d) share maps and parallel tests never collide.

use std::{
    fs,
    path::{Path, PathBuf},
};

use nix::sys::statfs::{BPF_FS_MAGIC, statfs};

use super::DatapathError;

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

    /// Creates the directory (and checks the BPF filesystem is mounted).
    pub(crate) fn create(&self) -> Result<(), DatapathError> {
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
    pub(crate) fn remove(&self, files: &[&str]) {
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
