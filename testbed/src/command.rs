//! Running programs inside a namespace: the child joins the namespace between fork and exec,
//! so no `ip netns exec` (and no mount namespace) is involved.

use std::{
    fs::File,
    os::{fd::AsRawFd, unix::process::CommandExt as _},
    path::Path,
    process::{Child, Command},
};

use crate::{
    Netns,
    error::{IoContext as _, Result},
};

/// A `Command` for `program` that runs inside the namespace file `netns` (`/run/netns/NAME`).
pub fn command_in_path(netns: &Path, program: &str) -> Result<Command> {
    let file = File::open(netns).context_with(|| format!("opening {}", netns.display()))?;
    Ok(command_with(file, program))
}

/// Like [`command_in_path`], and like `ip netns exec`: the program also gets a mount namespace
/// of its own with a fresh sysfs on `/sys`, so `/sys/class/net` lists the namespace's own
/// interfaces (for interactive use: shells, tools that read sysfs). A failure to remount is
/// ignored: the network namespace is what matters.
pub fn command_in_path_with_own_sysfs(netns: &Path, program: &str) -> Result<Command> {
    let mut command = command_in_path(netns, program)?;
    // SAFETY: unshare, mount and umount2 are plain system calls; the strings are literals, so
    // nothing is allocated between fork and exec.
    unsafe {
        command.pre_exec(|| {
            if libc::unshare(libc::CLONE_NEWNS) == 0 {
                // Keep our remount from propagating back to the host's mount namespace.
                libc::mount(
                    std::ptr::null(),
                    c"/".as_ptr(),
                    std::ptr::null(),
                    libc::MS_SLAVE | libc::MS_REC,
                    std::ptr::null(),
                );
                libc::umount2(c"/sys".as_ptr(), libc::MNT_DETACH);
                libc::mount(
                    c"sysfs".as_ptr(),
                    c"/sys".as_ptr(),
                    c"sysfs".as_ptr(),
                    0,
                    std::ptr::null(),
                );
            }
            Ok(())
        });
    }
    Ok(command)
}

fn command_with(file: File, program: &str) -> Command {
    let mut command = Command::new(program);
    // SAFETY: setns is async-signal-safe; the closure allocates nothing. The file is opened
    // close-on-exec, so the program does not inherit it.
    unsafe {
        command.pre_exec(move || {
            if libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    command
}

impl Netns {
    /// A `Command` for `program` that runs inside this namespace.
    pub fn command(&self, program: &str) -> Result<Command> {
        let file = self
            .file()
            .try_clone()
            .context_with(|| format!("duplicating the handle of {}", self.name()))?;
        Ok(command_with(file, program))
    }
}

/// A child process killed (SIGKILL) and reaped when dropped, so a failing test or scenario
/// leaves no daemon behind.
#[derive(Debug)]
pub struct KillOnDrop {
    child: Child,
    what: String,
}

impl KillOnDrop {
    /// Spawns `command`; `what` names it in errors and logs.
    pub fn spawn(mut command: Command, what: &str) -> Result<KillOnDrop> {
        let child = command
            .spawn()
            .context_with(|| format!("starting {what}"))?;
        Ok(KillOnDrop {
            child,
            what: what.to_owned(),
        })
    }

    /// The child's pid.
    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// The child itself, e.g. to wait for it or read its pipes.
    pub fn child_mut(&mut self) -> &mut Child {
        &mut self.child
    }

    /// Sends SIGINT (tshark and tcpdump flush their capture on it) and waits for the exit.
    pub fn interrupt_and_wait(mut self) -> Result<std::process::ExitStatus> {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT);
        let what = self.what.clone();
        self.child
            .wait()
            .context_with(|| format!("waiting for {what}"))
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
            tracing::debug!(process = %self.what, "killed");
        }
    }
}
