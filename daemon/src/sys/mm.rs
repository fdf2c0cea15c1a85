//! Memory and page cache: `madvise` on narund's own mappings, `posix_fadvise` on a file.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};

/// The `madvise` advice narund gives. Only advice that never changes what the process
/// reads from its memory is offered (not `MADV_DONTNEED`, `MADV_FREE`, `MADV_REMOVE`, …),
/// which is what makes [`madvise`] safe.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Advice {
    /// `MADV_RANDOM`: a fault reads only the page that faulted (no read-around).
    Random,
    /// `MADV_PAGEOUT` (Linux ≥ 5.4): reclaim the pages now; clean file pages are read
    /// again from the file on the next access, anonymous ones go to swap (or stay).
    PageOut,
}

/// `madvise(start, len, advice)` on a range of this process's address space (`start`
/// page-aligned, as every mapping in `/proc/self/maps` is). Unmapped parts give `ENOMEM`.
pub fn madvise(start: usize, len: usize, advice: Advice) -> io::Result<()> {
    let advice = match advice {
        Advice::Random => libc::MADV_RANDOM,
        Advice::PageOut => libc::MADV_PAGEOUT,
    };
    // SAFETY: neither MADV_RANDOM nor MADV_PAGEOUT changes the contents of the range: both
    // only change how clean, file-backed pages are read or kept, and a paged-out page is read
    // again from the file (or swap) on the next access. The kernel checks the range itself.
    let rc = unsafe { libc::madvise(start as *mut libc::c_void, len, advice) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// `posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED)`: drop the whole file's cached pages that
/// no process maps and that are clean (the cache only; the file is unchanged).
pub fn fadvise_dontneed(fd: BorrowedFd<'_>) -> io::Result<()> {
    // SAFETY: posix_fadvise on a valid, open fd; offset 0 and length 0 (= to the end) fit
    // off_t on every target, 32-bit included.
    let rc = unsafe { libc::posix_fadvise(fd.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::from_raw_os_error(rc))
    }
}
