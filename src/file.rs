//! A region in a file, mapped MAP_SHARED by every process that opens it.
//!
//! Creation is race-free without locks: the creator formats a private
//! temporary file beside the target and `link(2)`s it into place, which
//! fails if the name already exists. So the path only ever names a fully
//! formatted region, and every racing creator but one attaches to it.
//! A file is checked through `pread` before it is mapped, and its size must
//! be exactly what its header's slot count needs, so a truncated or foreign
//! file is an error, never a SIGBUS or an out-of-bounds read.

use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use crate::error::Error;
use crate::region::{self, Region, RegionError, HEADER_SIZE};

/// An mmap of a whole region file; unmapped on drop.
pub(crate) struct Mapping {
    ptr: *mut u8,
    len: usize,
}

// SAFETY: the mapping is plain shared memory reached through atomics.
unsafe impl Send for Mapping {}
// SAFETY: as above.
unsafe impl Sync for Mapping {}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: ptr/len are exactly what mmap returned; nothing uses the
        // region after its limiter (which owns this mapping) is dropped.
        unsafe { libc::munmap(self.ptr.cast(), self.len) };
    }
}

struct Fd(libc::c_int);

impl Drop for Fd {
    fn drop(&mut self) {
        // SAFETY: we own this descriptor.
        unsafe { libc::close(self.0) };
    }
}

fn io_err(path: &Path, op: &'static str) -> Error {
    Error::Io {
        path: path.display().to_string(),
        op,
        source: io::Error::last_os_error(),
    }
}

pub(crate) fn cpath(path: &Path) -> Result<CString, Error> {
    CString::new(path.as_os_str().as_bytes())
        .map_err(|_| Error::Invalid("path contains a NUL byte"))
}

/// How a region file is opened.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Access {
    /// Shared read-write mapping; with `create`, a missing file is made.
    Write { create: bool },
    /// A read-only descriptor mapped privately (copy-on-write): the process
    /// reads the live table, and nothing it does, not even the stores an
    /// atomic 128-bit load may make, can reach the file.
    ReadOnly,
    /// As `ReadOnly`, accepting a region of the previous layout version
    /// too: only to carry its counts into a new region.
    Migrate,
}

/// Opens (and with `create`, creates) the region file at `path`.
pub(crate) fn open(path: &Path, slots: u32, access: Access) -> Result<(Mapping, Region), Error> {
    open_as(path, slots, access, false)
}

/// As [`open`]; a file it creates is formatted for quota leases when
/// `leases` (an existing file is taken as its header says).
pub(crate) fn open_as(
    path: &Path,
    slots: u32,
    access: Access,
    leases: bool,
) -> Result<(Mapping, Region), Error> {
    let create = access == Access::Write { create: true };
    let c = cpath(path)?;
    // A creator that loses the race attaches; one more round covers a file
    // removed between our failed link and our open.
    for _ in 0..3 {
        let mode = match access {
            Access::ReadOnly | Access::Migrate => libc::O_RDONLY,
            Access::Write { .. } => libc::O_RDWR,
        };
        // SAFETY: `c` is a valid NUL-terminated path.
        let fd = unsafe { libc::open(c.as_ptr(), mode | libc::O_CLOEXEC) };
        if fd >= 0 {
            return attach_fd(path, Fd(fd), slots, access);
        }
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::ENOENT) || !create {
            return Err(Error::Io {
                path: path.display().to_string(),
                op: "open",
                source: e,
            });
        }
        // The count matters only for a file made here: an existing file is
        // taken with 0 slots whether `create` is on or off.
        if region::size_with(slots, leases).is_none() {
            return Err(Error::Invalid(
                "slot count must be 1 to 2^30 to create a region",
            ));
        }
        if let Some(done) = create_new(path, &c, slots, leases)? {
            return Ok(done);
        }
    }
    Err(io_err(path, "open"))
}

fn attach_fd(path: &Path, fd: Fd, slots: u32, access: Access) -> Result<(Mapping, Region), Error> {
    // SAFETY: zeroed stat is a valid out-parameter for fstat.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: fd is open; st is writable.
    if unsafe { libc::fstat(fd.0, &mut st) } != 0 {
        return Err(io_err(path, "stat"));
    }
    if st.st_mode & libc::S_IFMT != libc::S_IFREG {
        return Err(Error::Io {
            path: path.display().to_string(),
            op: "open",
            source: io::Error::new(io::ErrorKind::InvalidInput, "not a regular file"),
        });
    }
    let len = st.st_size as usize;
    let mut header = [0u8; HEADER_SIZE];
    if len < header.len() {
        return Err(Error::Region(RegionError::Size {
            len,
            needed: region::size_for(1).unwrap(),
        }));
    }
    // SAFETY: fd is open and `header` is writable for its length.
    let n = unsafe { libc::pread(fd.0, header.as_mut_ptr().cast(), header.len(), 0) };
    if n != header.len() as isize {
        return Err(io_err(path, "read"));
    }
    let legacy = access == Access::Migrate;
    let (found, needed) = Region::check_header_bytes(&header, legacy)?;
    if len != needed {
        return Err(Error::Region(RegionError::Size { len, needed }));
    }
    if slots != 0 && slots != found {
        return Err(Error::Region(RegionError::SlotCount {
            found,
            asked: slots,
        }));
    }
    if let Access::Write { .. } = access {
        // A file made sparse (by an older library, `truncate`, a copy) would
        // SIGBUS the first decision that touches a page the disk can't hold.
        reserve(path, &fd, len, false)?;
    }
    let mapping = map(path, &fd, len, access)?;
    // SAFETY: the mapping covers `len` bytes, is page-aligned, and lives in
    // the returned Mapping for as long as the Region is used.
    let region = unsafe { Region::attach_as(mapping.ptr, mapping.len, legacy) }?;
    Ok((mapping, region))
}

fn map(path: &Path, fd: &Fd, len: usize, access: Access) -> Result<Mapping, Error> {
    let share = match access {
        Access::ReadOnly | Access::Migrate => libc::MAP_PRIVATE,
        Access::Write { .. } => libc::MAP_SHARED,
    };
    // SAFETY: a fresh mapping of an open descriptor; the kernel chooses the
    // address. A private mapping may be writable over a read-only descriptor.
    let ptr = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            share,
            fd.0,
            0,
        )
    };
    if ptr == libc::MAP_FAILED {
        return Err(io_err(path, "mmap"));
    }
    // Huge pages where the file system gives them (tmpfs with
    // transparent_hugepage/shmem_enabled = advise or within_size); failure
    // leaves ordinary pages.
    // SAFETY: advice on the mapping just made.
    unsafe { libc::madvise(ptr, len, libc::MADV_HUGEPAGE) };
    Ok(Mapping {
        ptr: ptr.cast(),
        len,
    })
}

/// Gives every byte of the file's `len` blocks on disk (or in tmpfs) now, so
/// no later store into the mapping can meet a full file system: that would
/// be a SIGBUS in whichever process touched the page, not an error.
/// `fresh`: the file is our new temporary one, whose partly reserved blocks
/// are given back before the free space is measured.
fn reserve(path: &Path, fd: &Fd, len: usize, fresh: bool) -> Result<(), Error> {
    // SAFETY: fd is open for writing; posix_fallocate returns the error
    // number instead of setting errno.
    let rc = unsafe { libc::posix_fallocate(fd.0, 0, len as libc::off_t) };
    if rc != 0 && fresh {
        // SAFETY: fd is open for writing and the file is ours alone.
        unsafe { libc::ftruncate(fd.0, 0) };
    }
    match rc {
        0 => Ok(()),
        libc::ENOSPC | libc::EFBIG => Err(Error::NoSpace {
            path: path.display().to_string(),
            needed: len as u64,
            free: free_bytes(fd),
        }),
        e => Err(Error::Io {
            path: path.display().to_string(),
            op: "reserve",
            source: io::Error::from_raw_os_error(e),
        }),
    }
}

/// Bytes an unprivileged writer may still use on the file's file system.
fn free_bytes(fd: &Fd) -> u64 {
    // SAFETY: zeroed statvfs is a valid out-parameter.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: fd is open; st is writable.
    if unsafe { libc::fstatvfs(fd.0, &mut st) } != 0 {
        return 0;
    }
    st.f_bavail as u64 * st.f_frsize as u64
}

/// A name beside `path` for a file that is built in private and then
/// published with [`publish`]: hidden, and unique to this process and `tag`.
pub(crate) fn temp_beside(path: &Path, tag: &str) -> Result<std::path::PathBuf, Error> {
    let name = path
        .file_name()
        .ok_or(Error::Invalid("path has no file name"))?;
    let mut tmp = std::ffi::OsString::from(".");
    tmp.push(name);
    tmp.push(format!(".{}.{tag}.tmp", std::process::id()));
    Ok(path.with_file_name(tmp))
}

/// Links the finished temporary file `tmp` to `path` with `link(2)`, which
/// fails if `path` exists: so `path` only ever names a whole region, and
/// an existing one is never replaced. `false` if `path` already existed.
/// The caller removes `tmp` either way.
pub(crate) fn publish(tmp: &CString, c: &CString, path: &Path) -> Result<bool, Error> {
    // SAFETY: both are valid NUL-terminated paths.
    if unsafe { libc::link(tmp.as_ptr(), c.as_ptr()) } == 0 {
        return Ok(true);
    }
    let e = io::Error::last_os_error();
    if e.raw_os_error() == Some(libc::EEXIST) {
        return Ok(false);
    }
    Err(Error::Io {
        path: path.display().to_string(),
        op: "link",
        source: e,
    })
}

/// Formats a temporary file and links it into place. `None` if another
/// process got there first (then the caller attaches to theirs).
fn create_new(
    path: &Path,
    c: &CString,
    slots: u32,
    leases: bool,
) -> Result<Option<(Mapping, Region)>, Error> {
    let len = region::size_with(slots, leases).expect("checked by open");
    let tmp = temp_beside(path, &crate::now_ms().to_string())?;
    let ctmp = cpath(&tmp)?;
    // SAFETY: valid path; O_EXCL makes the file ours alone.
    let fd = unsafe {
        libc::open(
            ctmp.as_ptr(),
            libc::O_RDWR | libc::O_CREAT | libc::O_EXCL | libc::O_CLOEXEC,
            0o666 as libc::c_uint,
        )
    };
    if fd < 0 {
        return Err(io_err(path, "create"));
    }
    let fd = Fd(fd);
    let result = (|| {
        // Named by the path asked for: the temporary name means nothing
        // to whoever reads the message.
        reserve(path, &fd, len, true)?;
        let mapping = map(&tmp, &fd, len, Access::Write { create: true })?;
        // SAFETY: a fresh file extended with ftruncate reads as zeros; the
        // mapping is ours alone until the link below publishes it.
        let region =
            unsafe { Region::format_as(mapping.ptr, mapping.len, crate::now_ms(), true, leases) }?;
        if !publish(&ctmp, c, path)? {
            return Ok(None);
        }
        Ok(Some((mapping, region)))
    })();
    // SAFETY: valid path; the temporary name is ours.
    unsafe { libc::unlink(ctmp.as_ptr()) };
    result
}
