//! The root of the cgroup v2 hierarchy, where the socket-operations program attaches: from
//! there it runs for the TCP sockets of every process on the host, whatever cgroup each is in.

use std::{
    fs::{self, File},
    io,
    os::unix::fs::DirBuilderExt as _,
    path::{Path, PathBuf},
};

use nix::mount::{MntFlags, MsFlags};

use super::DatapathError;

/// The root of the cgroup v2 hierarchy, opened, and the path it was found at.
pub(super) struct CgroupRoot {
    /// The open directory (what the kernel attaches to).
    pub dir: File,
    /// Where it was found, for messages.
    pub path: PathBuf,
}

/// Opens the root of the cgroup v2 hierarchy: the mount point of the first `cgroup2` mount of
/// the calling thread's mount namespace whose root is `/` (`/proc/thread-self/mountinfo`). When none is mounted,
/// cgroup2 is mounted at a private directory under `/run`, opened, and unmounted (lazily: the
/// open directory keeps the hierarchy usable) and the directory removed at once, so nothing is
/// left behind.
pub(super) fn open_root() -> Result<CgroupRoot, DatapathError> {
    const MOUNTINFO: &str = "/proc/thread-self/mountinfo";
    let mountinfo = fs::read_to_string(MOUNTINFO).map_err(|source| DatapathError::Cgroup {
        path: PathBuf::from(MOUNTINFO),
        source,
    })?;
    if let Some(path) = cgroup2_mount(&mountinfo) {
        let dir = File::open(&path).map_err(|source| DatapathError::Cgroup {
            path: path.clone(),
            source,
        })?;
        return Ok(CgroupRoot { dir, path });
    }
    mount_privately()
}

/// The mount point of the first cgroup2 mount of the whole hierarchy in `mountinfo`.
fn cgroup2_mount(mountinfo: &str) -> Option<PathBuf> {
    mountinfo.lines().find_map(|line| {
        // `id parent major:minor root mount-point options [optional…] - type source options`
        let (mount, fs) = line.split_once(" - ")?;
        let mut fields = mount.split(' ');
        let root = fields.nth(3)?;
        let point = fields.next()?;
        (fs.split(' ').next() == Some("cgroup2") && root == "/").then(|| unescape(point))
    })
}

/// Undoes mountinfo's octal escapes (`\040` for a space, `\011`, `\012`, `\134`).
fn unescape(field: &str) -> PathBuf {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes
            .get(i + 1..i + 4)
            .filter(|digits| bytes[i] == b'\\' && digits.iter().all(|d| (b'0'..=b'7').contains(d)))
            .map(|d| (d[0] - b'0') * 64 + (d[1] - b'0') * 8 + (d[2] - b'0'));
        match octal {
            Some(byte) => {
                out.push(byte);
                i += 4;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    PathBuf::from(<std::ffi::OsString as std::os::unix::ffi::OsStringExt>::from_vec(out))
}

fn mount_privately() -> Result<CgroupRoot, DatapathError> {
    let path = PathBuf::from(format!("/run/dsl-cgroup2-{}", std::process::id()));
    let failed = |source: io::Error| DatapathError::Cgroup {
        path: path.clone(),
        source,
    };
    fs::DirBuilder::new()
        .mode(0o700)
        .create(&path)
        .or_else(|err| match err.kind() {
            io::ErrorKind::AlreadyExists => Ok(()),
            _ => Err(err),
        })
        .map_err(failed)?;
    let opened = nix::mount::mount(
        Some("cgroup2"),
        &path,
        Some("cgroup2"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        None::<&str>,
    )
    .map_err(io::Error::from)
    .and_then(|()| {
        let dir = File::open(&path);
        if let Err(err) = nix::mount::umount2(&path, MntFlags::MNT_DETACH) {
            tracing::warn!(path = %path.display(), %err, "cannot unmount the private cgroup2 mount");
        }
        dir
    });
    remove_dir(&path);
    let dir = opened.map_err(failed)?;
    tracing::info!(
        path = %path.display(),
        "no cgroup2 mount: mounted one privately (and unmounted it, keeping it open)"
    );
    Ok(CgroupRoot { dir, path })
}

fn remove_dir(path: &Path) {
    if let Err(err) = fs::remove_dir(path) {
        tracing::warn!(path = %path.display(), %err, "cannot remove the private cgroup2 mount point");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_cgroup2_mount_of_a_hybrid_host() {
        let mountinfo = "\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";
        assert_eq!(
            cgroup2_mount(mountinfo),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
    }

    #[test]
    fn skips_bind_mounts_of_a_subtree_and_unescapes() {
        let mountinfo = "\
50 23 0:38 /system.slice /mnt/slice rw shared:5 - cgroup2 cgroup2 rw
51 23 0:38 / /mnt/a\\040b rw shared:5 master:1 - cgroup2 cgroup2 rw,nsdelegate
";
        assert_eq!(cgroup2_mount(mountinfo), Some(PathBuf::from("/mnt/a b")));
        assert_eq!(
            cgroup2_mount("31 23 0:28 / /sys rw - sysfs sysfs rw\n"),
            None
        );
    }

    #[test]
    fn privileged_mounts_cgroup2_privately_when_none_is_mounted() {
        use nix::{
            sched::{CloneFlags, unshare},
            sys::statfs::{CGROUP2_SUPER_MAGIC, fstatfs},
        };
        if !nix::unistd::geteuid().is_root() {
            eprintln!("SKIPPED: privileged test needs root");
            return;
        }
        // A thread of its own with a mount namespace of its own, without any cgroup2 mount.
        std::thread::spawn(|| {
            unshare(CloneFlags::CLONE_NEWNS | CloneFlags::CLONE_FS).expect("unshare");
            nix::mount::mount(
                None::<&str>,
                "/",
                None::<&str>,
                MsFlags::MS_REC | MsFlags::MS_PRIVATE,
                None::<&str>,
            )
            .expect("make the mounts private");
            while let Some(path) =
                cgroup2_mount(&fs::read_to_string("/proc/thread-self/mountinfo").unwrap())
            {
                nix::mount::umount2(&path, MntFlags::MNT_DETACH).expect("unmount cgroup2");
            }
            let root = open_root().expect("a private cgroup2 mount");
            assert!(root.path.starts_with("/run"), "{}", root.path.display());
            assert!(!root.path.exists(), "mount point left behind");
            let fs = fstatfs(&root.dir).expect("fstatfs");
            assert_eq!(fs.filesystem_type(), CGROUP2_SUPER_MAGIC);
        })
        .join()
        .expect("the test thread");
    }
}
