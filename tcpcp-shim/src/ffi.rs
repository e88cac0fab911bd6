//! The C functions of `include/tcpcp.h`. Each translates its arguments, runs the operation of
//! `table.rs`, and reports the TCPCP2 way: `TCPCP_RET_OK` / `TCPCP_RET_NG`, `errno`, and a
//! `malloc`'ed `struct result_list`. No panic crosses into C (it becomes `EIO`).

use std::{
    ffi::{c_int, c_uint, c_void},
    os::fd::RawFd,
    panic::{AssertUnwindSafe, catch_unwind},
    ptr,
};

use crate::{
    si,
    table::{Failure, FdResult, Target, table},
};

/// `TCPCP_RET_OK`.
pub const TCPCP_RET_OK: c_int = 0;
/// `TCPCP_RET_NG`.
pub const TCPCP_RET_NG: c_int = -1;
/// `TCPCP_EXEC_ONE`.
pub const TCPCP_EXEC_ONE: c_int = 0;
/// `TCPCP_EXEC_ALL`.
pub const TCPCP_EXEC_ALL: c_int = 1;

/// `struct fdr`.
#[repr(C)]
pub struct Fdr {
    /// The descriptor.
    pub fd: c_int,
    /// Its result.
    pub result: c_int,
}

/// `struct result_list` (followed by `fd_all` [`Fdr`]s).
#[repr(C)]
pub struct ResultList {
    /// Descriptors processed.
    pub fd_all: c_uint,
    /// Descriptors that failed.
    pub fd_ng: c_uint,
    /// The per-descriptor results (a flexible array member in C).
    pub fdrs: [Fdr; 0],
}

fn set_errno(errno: i32) {
    // SAFETY: the calling thread's errno.
    unsafe { *libc::__errno_location() = errno };
}

/// Environment variable that makes every failure print its reason on stderr (errno alone
/// rarely says enough).
pub const DEBUG_ENV: &str = "TCPCP_DEBUG";

fn fail(failure: &Failure) -> c_int {
    tracing::debug!(errno = failure.errno, reason = %failure.reason, "tcpcp call failed");
    if std::env::var_os(DEBUG_ENV).is_some() {
        eprintln!("libtcpcp: {}", failure.reason);
    }
    set_errno(failure.errno);
    TCPCP_RET_NG
}

/// Runs `f`, turning a panic into `EIO`.
fn guard(f: impl FnOnce() -> c_int) -> c_int {
    catch_unwind(AssertUnwindSafe(f)).unwrap_or_else(|_| {
        set_errno(libc::EIO);
        TCPCP_RET_NG
    })
}

fn target(fd: c_int, flag: c_int) -> Result<Target, Failure> {
    match flag {
        TCPCP_EXEC_ONE => Ok(Target::One(fd)),
        TCPCP_EXEC_ALL => Ok(Target::All),
        other => Err(Failure {
            errno: libc::EINVAL,
            reason: format!("flag {other} is neither TCPCP_EXEC_ONE nor TCPCP_EXEC_ALL"),
        }),
    }
}

/// `malloc`s a result list. `value` maps a result to the C `result` field.
fn result_list(results: &[FdResult], value: impl Fn(&FdResult) -> c_int) -> *mut ResultList {
    let size = size_of::<ResultList>() + results.len() * size_of::<Fdr>();
    // SAFETY: malloc of a size we computed; checked for NULL.
    let list = unsafe { libc::malloc(size.max(1)) }.cast::<ResultList>();
    if list.is_null() {
        return list;
    }
    let failed = results.iter().filter(|r| r.result.is_err()).count();
    // SAFETY: `list` has room for the header and `results.len()` entries; fdrs is the
    // (4-byte aligned) space right after the two counters.
    unsafe {
        (*list).fd_all = results.len() as c_uint;
        (*list).fd_ng = failed as c_uint;
        let fdrs = ptr::addr_of_mut!((*list).fdrs).cast::<Fdr>();
        for (i, r) in results.iter().enumerate() {
            fdrs.add(i).write(Fdr {
                fd: r.fd,
                result: value(r),
            });
        }
    }
    list
}

/// The usual result: 0 or the errno of the failure.
fn errno_value(r: &FdResult) -> c_int {
    match &r.result {
        Ok(_) => 0,
        Err(f) => f.errno,
    }
}

/// Reports `results` the TCPCP2 way. `one`: a failure returns NG with no list (as TCPCP2's
/// `getsockopt` failed before the list was made); `all`: the list always, NG if any failed.
fn report(
    results: Result<Vec<FdResult>, Failure>,
    one: bool,
    reslst: *mut *mut ResultList,
    value: impl Fn(&FdResult) -> c_int,
) -> c_int {
    let results = match results {
        Ok(results) => results,
        Err(failure) => return fail(&failure),
    };
    let first_failure = results.iter().find_map(|r| r.result.as_ref().err());
    if one && let Some(failure) = first_failure {
        return fail(failure);
    }
    if !reslst.is_null() {
        let list = result_list(&results, value);
        if list.is_null() {
            set_errno(libc::ENOMEM);
            return TCPCP_RET_NG;
        }
        // SAFETY: the caller's pointer, checked non-NULL.
        unsafe { *reslst = list };
    }
    match first_failure {
        Some(failure) => fail(failure),
        None => TCPCP_RET_OK,
    }
}

fn clear<T>(out: *mut *mut T) {
    if !out.is_null() {
        // SAFETY: the caller's pointer, checked non-NULL.
        unsafe { *out = ptr::null_mut() };
    }
}

/// `tcpcp_stop`: see `include/tcpcp.h`.
///
/// # Safety
/// `reslst` is NULL or points to writable storage for a pointer.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn tcpcp_stop(fd: c_int, flag: c_int, reslst: *mut *mut ResultList) -> c_int {
    guard(|| {
        clear(reslst);
        let results = target(fd, flag).and_then(|t| table().stop(t));
        report(results, flag == TCPCP_EXEC_ONE, reslst, errno_value)
    })
}

/// `tcpcp_get_si`: see `include/tcpcp.h`.
///
/// # Safety
/// `bufptr` and `size` point to writable storage; `reslst` is NULL or does.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn tcpcp_get_si(
    fd: c_int,
    flag: c_int,
    bufptr: *mut *mut c_void,
    size: *mut c_uint,
    reslst: *mut *mut ResultList,
) -> c_int {
    guard(|| {
        clear(reslst);
        clear(bufptr);
        if bufptr.is_null() || size.is_null() {
            set_errno(libc::EINVAL);
            return TCPCP_RET_NG;
        }
        // SAFETY: checked non-NULL.
        unsafe { *size = 0 };
        let got = target(fd, flag).and_then(|t| table().get_si(t));
        let (buffer, results) = match got {
            Ok(got) => got,
            Err(failure) => return fail(&failure),
        };
        let Ok(len) = c_uint::try_from(buffer.len()) else {
            set_errno(libc::EOVERFLOW);
            return TCPCP_RET_NG;
        };
        let copy = malloc_copy(&buffer);
        if copy.is_null() {
            set_errno(libc::ENOMEM);
            return TCPCP_RET_NG;
        }
        let ret = report(Ok(results), flag == TCPCP_EXEC_ONE, reslst, errno_value);
        if ret != TCPCP_RET_OK {
            // SAFETY: ours, just allocated.
            unsafe { libc::free(copy) };
            return ret;
        }
        // SAFETY: checked non-NULL above.
        unsafe {
            *bufptr = copy;
            *size = len;
        }
        TCPCP_RET_OK
    })
}

fn malloc_copy(bytes: &[u8]) -> *mut c_void {
    // SAFETY: malloc, checked; then a copy of exactly `bytes.len()` bytes into it.
    unsafe {
        let out = libc::malloc(bytes.len().max(1));
        if !out.is_null() {
            ptr::copy_nonoverlapping(bytes.as_ptr(), out.cast::<u8>(), bytes.len());
        }
        out
    }
}

/// The caller's buffer as a slice.
///
/// # Safety
/// `buf` points to `size` readable bytes (or is NULL).
unsafe fn caller_bytes<'a>(buf: *const c_void, size: usize) -> Option<&'a [u8]> {
    // SAFETY: per the contract.
    (!buf.is_null()).then(|| unsafe { std::slice::from_raw_parts(buf.cast::<u8>(), size) })
}

/// `tcpcp_set_si`: see `include/tcpcp.h`.
///
/// # Safety
/// `bufptr` points to `size` readable bytes; `reslst` is NULL or points to writable storage.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn tcpcp_set_si(
    fd: c_int,
    flag: c_int,
    bufptr: *mut c_void,
    size: c_uint,
    reslst: *mut *mut ResultList,
) -> c_int {
    guard(|| {
        clear(reslst);
        // SAFETY: per the contract.
        let Some(buffer) = (unsafe { caller_bytes(bufptr, size as usize) }) else {
            set_errno(libc::EINVAL);
            return TCPCP_RET_NG;
        };
        let results =
            target(fd, flag).and_then(|t| table().set_si(Some(fd), t == Target::All, buffer));
        report(results, flag == TCPCP_EXEC_ONE, reslst, |r| {
            match &r.result {
                Ok(new_fd) => *new_fd,
                Err(f) => -f.errno,
            }
        })
    })
}

/// `tcpcp_start`: see `include/tcpcp.h`.
///
/// # Safety
/// `reslst` is NULL or points to writable storage for a pointer.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn tcpcp_start(
    fd: c_int,
    flag: c_int,
    reslst: *mut *mut ResultList,
) -> c_int {
    guard(|| {
        clear(reslst);
        let results = target(fd, flag).and_then(|t| table().start(t));
        report(results, flag == TCPCP_EXEC_ONE, reslst, errno_value)
    })
}

/// `tcpcp_close`: see `include/tcpcp.h`.
///
/// # Safety
/// `reslst` is NULL or points to writable storage for a pointer.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn tcpcp_close(_fd: c_int, reslst: *mut *mut ResultList) -> c_int {
    guard(|| {
        clear(reslst);
        let results = table().close();
        report(results, false, reslst, errno_value)
    })
}

/// `tcpcp_get`: see `include/tcpcp.h`.
#[unsafe(no_mangle)]
pub extern "C" fn tcpcp_get(fd: c_int) -> *mut c_void {
    let mut out = ptr::null_mut();
    guard(|| {
        let mut table = table();
        if let Err(failure) = table.stop(Target::One(fd)).and_then(first_ok) {
            return fail(&failure);
        }
        match table.get_si(Target::One(fd)) {
            Ok((buffer, _)) => {
                out = malloc_copy(&buffer);
                if out.is_null() {
                    set_errno(libc::ENOMEM);
                }
            }
            Err(failure) => {
                // Give the socket back as it was: the call had no effect.
                if let Err(err) = table.start(Target::One(fd)) {
                    tracing::error!(%err, fd, "cannot resume a socket after a failed tcpcp_get");
                }
                return fail(&failure);
            }
        }
        TCPCP_RET_OK
    });
    out
}

fn first_ok(results: Vec<FdResult>) -> Result<(), Failure> {
    match results.into_iter().next() {
        Some(FdResult { result: Err(f), .. }) => Err(f),
        _ => Ok(()),
    }
}

/// `tcpcp_size`: see `include/tcpcp.h`.
///
/// # Safety
/// `ici` is NULL or points to at least 4 readable bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn tcpcp_size(ici: *const c_void) -> c_int {
    // SAFETY: per the contract, 4 bytes.
    let Some(head) = (unsafe { caller_bytes(ici, 4) }) else {
        set_errno(libc::EINVAL);
        return -1;
    };
    match si::declared_len(head).and_then(|len| c_int::try_from(len).ok()) {
        Some(len) => len,
        None => {
            set_errno(libc::EOVERFLOW);
            -1
        }
    }
}

/// `tcpcp_create`: see `include/tcpcp.h`.
///
/// # Safety
/// `ici` is NULL or points to at least `tcpcp_size(ici)` readable bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn tcpcp_create(ici: *const c_void) -> c_int {
    let mut fd: RawFd = -1;
    guard(|| {
        // SAFETY: per the contract.
        let size = unsafe { tcpcp_size(ici) };
        if size < 0 {
            return TCPCP_RET_NG;
        }
        // SAFETY: per the contract.
        let Some(buffer) = (unsafe { caller_bytes(ici, size as usize) }) else {
            set_errno(libc::EINVAL);
            return TCPCP_RET_NG;
        };
        match table().set_si(None, false, buffer) {
            Ok(results) => match results.into_iter().next() {
                Some(FdResult {
                    result: Ok(new), ..
                }) => {
                    fd = new;
                    TCPCP_RET_OK
                }
                Some(FdResult {
                    result: Err(failure),
                    ..
                }) => fail(&failure),
                None => {
                    set_errno(libc::EINVAL);
                    TCPCP_RET_NG
                }
            },
            Err(failure) => fail(&failure),
        }
    });
    fd
}

/// `tcpcp_activate`: see `include/tcpcp.h`.
#[unsafe(no_mangle)]
pub extern "C" fn tcpcp_activate(fd: c_int) -> c_int {
    // SAFETY: errno of this thread.
    let saved = unsafe { *libc::__errno_location() };
    guard(|| match table().start(Target::One(fd)).and_then(first_ok) {
        Ok(()) => TCPCP_RET_OK,
        Err(failure) if failure.errno == libc::EALREADY => {
            set_errno(saved);
            TCPCP_RET_OK
        }
        Err(failure) => fail(&failure),
    })
}
