//! Named network namespaces, created like `ip netns add` does (a bind mount under `/run/netns`,
//! so `ip netns exec NAME …` works on them too) and removed when the handle is dropped — also
//! when a test fails or panics. Namespaces left behind by a killed process are swept by the next
//! `create`.

use std::{
    fs::{self, File},
    io,
    os::fd::AsFd,
    path::{Path, PathBuf},
    sync::atomic::{AtomicU32, Ordering},
    thread,
};

use nix::{
    mount::{MntFlags, MsFlags, mount, umount2},
    sched::{CloneFlags, setns, unshare},
};

const RUN_DIR: &str = "/run/netns";
/// Where handoff-user pins the maps of a data-path instance (`PinDir::for_instance`).
const PIN_ROOT: &str = "/sys/fs/bpf/dsl";
/// Every namespace this crate creates is named `dsl-<tag>-<pid>-<n>`.
const NAME_PREFIX: &str = "dsl-";

static SEQUENCE: AtomicU32 = AtomicU32::new(0);

/// A named network namespace, deleted on drop.
#[derive(Debug)]
pub struct Netns {
    name: String,
    path: PathBuf,
    file: File,
}

impl Netns {
    /// Creates a namespace named `dsl-<tag>-<pid>-<n>` (unique on this host) with `lo` up.
    pub fn create(tag: &str) -> io::Result<Netns> {
        sweep_stale();
        let name = format!(
            "{NAME_PREFIX}{tag}-{}-{}",
            std::process::id(),
            SEQUENCE.fetch_add(1, Ordering::Relaxed)
        );
        prepare_run_dir()?;
        let path = Path::new(RUN_DIR).join(&name);
        File::create(&path)?;
        let bind = {
            let path = path.clone();
            // unshare() moves only the calling thread; a short-lived thread keeps ours unchanged.
            thread::spawn(move || -> io::Result<()> {
                unshare(CloneFlags::CLONE_NEWNET)?;
                mount(
                    Some("/proc/thread-self/ns/net"),
                    &path,
                    None::<&str>,
                    MsFlags::MS_BIND,
                    None::<&str>,
                )?;
                Ok(())
            })
            .join()
            .map_err(|_| io::Error::other("namespace creation thread panicked"))?
        };
        if let Err(err) = bind {
            let _ = fs::remove_file(&path);
            return Err(io::Error::new(
                err.kind(),
                format!("creating network namespace {name}: {err}"),
            ));
        }
        let netns = Netns {
            file: File::open(&path)?,
            name,
            path,
        };
        netns.set_link_up("lo")?;
        tracing::debug!(netns = %netns.name, "created");
        Ok(netns)
    }

    /// The namespace's name (as `ip netns` shows it).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The namespace file (`/run/netns/<name>`), for `setns` or netlink's `IFLA_NET_NS_FD`.
    pub fn file(&self) -> &File {
        &self.file
    }

    /// Runs `f` on a thread inside the namespace and returns its result. Sockets created by `f`
    /// stay in the namespace wherever they are used afterwards. A panic in `f` is propagated.
    pub fn run<R: Send>(&self, f: impl FnOnce() -> R + Send) -> R {
        thread::scope(|scope| {
            scope
                .spawn(|| {
                    self.enter().expect("setns into a namespace we hold open");
                    f()
                })
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
        })
    }

    /// Moves the calling thread into the namespace.
    fn enter(&self) -> io::Result<()> {
        setns(self.file.as_fd(), CloneFlags::CLONE_NEWNET)?;
        Ok(())
    }

    /// Writes `value` to the sysctl `key` (dotted form, e.g. `net.ipv6.conf.all.forwarding`) of
    /// this namespace.
    pub fn sysctl(&self, key: &str, value: &str) -> io::Result<()> {
        let path = Path::new("/proc/sys").join(key.replace('.', "/"));
        self.run(|| fs::write(&path, value))
            .map_err(|err| io::Error::new(err.kind(), format!("{} in {}: {err}", key, self.name)))
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        remove(&self.path);
        tracing::debug!(netns = %self.name, "removed");
    }
}

fn remove(path: &Path) {
    // MNT_DETACH: sockets or threads still inside keep the namespace alive until they end, but
    // the name is gone at once.
    if let Err(err) = umount2(path, MntFlags::MNT_DETACH) {
        tracing::warn!(path = %path.display(), %err, "cannot unmount namespace");
    }
    if let Err(err) = fs::remove_file(path) {
        tracing::warn!(path = %path.display(), %err, "cannot remove namespace file");
    }
}

/// Makes `/run/netns` a shared mount point, as iproute2 does, so that namespace mounts under it
/// propagate into mount namespaces such as those of `ip netns exec`.
fn prepare_run_dir() -> io::Result<()> {
    fs::create_dir_all(RUN_DIR)?;
    let shared = MsFlags::MS_SHARED | MsFlags::MS_REC;
    if mount(None::<&str>, RUN_DIR, None::<&str>, shared, None::<&str>).is_ok() {
        return Ok(());
    }
    let bind = MsFlags::MS_BIND | MsFlags::MS_REC;
    mount(Some(RUN_DIR), RUN_DIR, None::<&str>, bind, None::<&str>)?;
    mount(None::<&str>, RUN_DIR, None::<&str>, shared, None::<&str>)?;
    Ok(())
}

/// Removes the namespaces, and the pinned-map directories named like them (handoff-user pins a
/// namespace's maps under `/sys/fs/bpf/dsl/<namespace>`), of processes that no longer exist
/// (killed before their drop ran).
fn sweep_stale() {
    for (entry, pid) in stale_entries(Path::new(RUN_DIR)) {
        tracing::info!(netns = ?entry.file_name(), pid, "removing namespace left by a dead process");
        remove(&entry.path());
    }
    for (entry, pid) in stale_entries(Path::new(PIN_ROOT)) {
        tracing::info!(pins = ?entry.path(), pid, "removing pinned maps left by a dead process");
        if let Ok(pins) = fs::read_dir(entry.path()) {
            for pin in pins.flatten() {
                let _ = fs::remove_file(pin.path());
            }
        }
        let _ = fs::remove_dir(entry.path());
    }
}

/// Entries of `dir` named by [`Netns::create`] whose owner process is gone.
fn stale_entries(dir: &Path) -> Vec<(fs::DirEntry, u32)> {
    let Ok(entries) = fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|entry| {
            let pid = entry.file_name().to_str().and_then(owner_pid)?;
            let alive = Path::new("/proc").join(pid.to_string()).exists();
            (!alive).then_some((entry, pid))
        })
        .collect()
}

/// The pid embedded in a name made by [`Netns::create`], if `name` is one.
fn owner_pid(name: &str) -> Option<u32> {
    let rest = name.strip_prefix(NAME_PREFIX)?;
    let mut parts = rest.rsplitn(3, '-');
    let _sequence: u32 = parts.next()?.parse().ok()?;
    let pid = parts.next()?.parse().ok()?;
    parts.next()?;
    Some(pid)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owner_pid_reads_our_names_only() {
        assert_eq!(owner_pid("dsl-client-1234-7"), Some(1234));
        assert_eq!(owner_pid("dsl-a-b-1234-7"), Some(1234));
        assert_eq!(owner_pid("dsl-1234-7"), None);
        assert_eq!(owner_pid("other-x-1234-7"), None);
        assert_eq!(owner_pid("dsl-x-12a-7"), None);
    }

    fn is_root() -> bool {
        if nix::unistd::geteuid().is_root() {
            return true;
        }
        eprintln!("SKIPPED: privileged test needs root");
        false
    }

    #[test]
    fn privileged_namespace_is_removed_on_drop_and_on_panic() {
        if !is_root() {
            return;
        }
        let netns = Netns::create("drop").unwrap();
        let path = Path::new(RUN_DIR).join(netns.name());
        assert!(path.exists());
        drop(netns);
        assert!(!path.exists());

        let mut seen = None;
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let netns = Netns::create("panic").unwrap();
            seen = Some(Path::new(RUN_DIR).join(netns.name()));
            panic!("a failing test");
        }));
        assert!(outcome.is_err());
        let path = seen.unwrap();
        assert!(!path.exists(), "{} left behind", path.display());
    }

    #[test]
    fn privileged_run_executes_inside_the_namespace() {
        if !is_root() {
            return;
        }
        let netns = Netns::create("run").unwrap();
        let inode =
            |path: &str| fs::metadata(path).map(|m| std::os::unix::fs::MetadataExt::ino(&m));
        let outside = inode("/proc/thread-self/ns/net").unwrap();
        let inside = netns.run(|| inode("/proc/thread-self/ns/net")).unwrap();
        assert_ne!(inside, outside);
        assert_eq!(
            inside,
            inode(&format!("{RUN_DIR}/{}", netns.name())).unwrap()
        );
    }

    #[test]
    fn privileged_stale_namespaces_are_swept() {
        if !is_root() {
            return;
        }
        // A pid above pid_max cannot belong to a live process.
        let stale = Path::new(RUN_DIR).join("dsl-stale-99999999-0");
        prepare_run_dir().unwrap();
        File::create(&stale).unwrap();
        let stale_pins = Path::new(PIN_ROOT).join("dsl-stale-99999999-0");
        let bpffs = fs::create_dir_all(&stale_pins).is_ok();
        let _netns = Netns::create("sweep").unwrap();
        assert!(!stale.exists());
        assert!(!bpffs || !stale_pins.exists());
    }
}
