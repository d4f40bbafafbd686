//! Fewer, larger writes to SQLite's write-ahead log.
//!
//! Why: SQLite appends each frame of a commit to the log with two system
//! calls, one for the 24-byte frame header and one for the page. On this
//! machine a `pwrite` costs about 4 µs whatever its size up to a few pages, so
//! a commit of 150 frames spent over a millisecond in the kernel: 21% of the
//! writer thread's time under loyalty traffic, 11% under ingest (perf). One
//! write per commit costs 0.4 µs a frame.
//!
//! How: a VFS shim over the default one. Files other than logs are opened by
//! the default VFS in place and never pass through this module. A log's
//! appends are gathered in memory and written at once when the commit's last
//! frame is complete, so that nothing of a commit is left behind when SQLite
//! publishes it in the shared index (other connections read the file then;
//! the log flush thread syncs it after the commit returns). Any other use of
//! the file writes what is gathered first, so the file always reads as
//! SQLite wrote it. See [`Appends`] for the rule.

use std::os::raw::{c_char, c_int, c_void};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;

use rusqlite::ffi;

/// Bytes of a frame header in the log.
const FRAME_HEADER: usize = 24;

/// Gathered bytes written at once even before a commit ends (large commits).
const MAX_GATHERED: usize = 4 << 20;

/// The most the default (unix) VFS writes in one call: it keeps only the low
/// 17 bits of a write's length, and reports a longer write as a full disk.
const MAX_WRITE: usize = 31 * 4096;

/// The buffering rule, apart from SQLite so that it can be tested alone.
///
/// A write that continues the log where SQLite last wrote is an append and
/// is gathered; any other (SQLite rewriting a frame of the open transaction,
/// rewriting checksums, or starting the log again at offset 0) writes what
/// is gathered, then itself, at once. A frame header whose "database size"
/// field is not zero opens a commit frame: the page after it ends the commit,
/// and everything gathered is written then. So, when a commit's frames have
/// all been handed over, nothing remains gathered; what SQLite writes after
/// the last frame (checksum rewrites) is never an append.
#[derive(Default)]
pub(super) struct Appends {
    gathered: Vec<u8>,
    /// Where the gathered bytes go in the file.
    start: i64,
    /// One past the last byte SQLite wrote, gathered or not.
    end: i64,
    /// The last write was the header of a commit frame.
    commit_page_next: bool,
}

impl Appends {
    /// Take SQLite's write of `bytes` at `offset`; `out` writes to the file.
    pub(super) fn write(&mut self, offset: i64, bytes: &[u8], out: &mut impl FnMut(i64, &[u8]) -> c_int) -> c_int {
        let after = offset + bytes.len() as i64;
        if offset != self.end || bytes.is_empty() {
            let rc = self.flush(out);
            if rc != ffi::SQLITE_OK {
                return rc;
            }
            self.commit_page_next = false;
            self.end = if offset == 0 { after } else { self.end.max(after) };
            return out(offset, bytes);
        }
        if self.gathered.is_empty() {
            self.start = offset;
        }
        self.gathered.extend_from_slice(bytes);
        self.end = after;
        let ends_commit = self.commit_page_next;
        self.commit_page_next = bytes.len() == FRAME_HEADER && bytes[4..8] != [0; 4];
        if ends_commit || self.gathered.len() >= MAX_GATHERED {
            return self.flush(out);
        }
        ffi::SQLITE_OK
    }

    /// Write what is gathered.
    pub(super) fn flush(&mut self, out: &mut impl FnMut(i64, &[u8]) -> c_int) -> c_int {
        if self.gathered.is_empty() {
            return ffi::SQLITE_OK;
        }
        let rc = out(self.start, &self.gathered);
        self.gathered.clear();
        rc
    }
}

/// A log file opened through the shim: our header, then the default VFS's
/// file object at [`INNER_OFFSET`].
#[repr(C)]
struct LogFile {
    base: ffi::sqlite3_file,
    appends: Appends,
}

/// Where the default VFS's file object starts inside a [`LogFile`]'s memory.
const INNER_OFFSET: usize = std::mem::size_of::<LogFile>().next_multiple_of(16);

/// The default VFS, as it was before the shim was registered.
struct InnerVfs(*mut ffi::sqlite3_vfs);
// SAFETY: SQLite's VFS objects are immutable once registered and made to be
// used from any thread.
unsafe impl Send for InnerVfs {}
unsafe impl Sync for InnerVfs {}

static INNER: OnceLock<InnerVfs> = OnceLock::new();
static INSTALLED: AtomicBool = AtomicBool::new(false);

fn inner_vfs() -> *mut ffi::sqlite3_vfs {
    INNER.get().expect("the shim is registered only after the default VFS is read").0
}

/// Register the shim as SQLite's default VFS, once per process; connections
/// opened afterwards use it. Returns whether it is in place.
pub(super) fn install() -> bool {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // SAFETY: `sqlite3_vfs_find(NULL)` returns the default VFS, which lives
        // as long as the process. The copy keeps its methods and `pAppData`;
        // the default (unix) VFS's methods other than `xOpen` read nothing of
        // the VFS object but `mxPathname` and `pAppData`, which are copied, so
        // they work unchanged on the copy. `xOpen` is called with the original.
        unsafe {
            let inner = ffi::sqlite3_vfs_find(std::ptr::null());
            if inner.is_null() || INNER.set(InnerVfs(inner)).is_err() {
                return;
            }
            let Ok(size) = c_int::try_from(INNER_OFFSET) else { return };
            let mut shim: ffi::sqlite3_vfs = *inner;
            shim.szOsFile += size;
            shim.pNext = std::ptr::null_mut();
            shim.zName = c"relais-log-writes".as_ptr() as *const c_char;
            shim.xOpen = Some(open);
            let shim = Box::leak(Box::new(shim));
            if ffi::sqlite3_vfs_register(shim, 1) == ffi::SQLITE_OK {
                INSTALLED.store(true, Ordering::Relaxed);
            }
        }
    });
    INSTALLED.load(Ordering::Relaxed)
}

/// Whether the shim is in place.
pub fn log_writes_shim() -> bool {
    INSTALLED.load(Ordering::Relaxed)
}

unsafe extern "C" fn open(
    _: *mut ffi::sqlite3_vfs,
    name: ffi::sqlite3_filename,
    file: *mut ffi::sqlite3_file,
    flags: c_int,
    out_flags: *mut c_int,
) -> c_int {
    let inner = inner_vfs();
    let Some(inner_open) = (*inner).xOpen else { return ffi::SQLITE_CANTOPEN };
    if flags & ffi::SQLITE_OPEN_WAL == 0 {
        // Not a log: the default VFS's file object takes the memory as it is.
        return inner_open(inner, name, file, flags, out_flags);
    }
    let inner_file = (file as *mut u8).add(INNER_OFFSET) as *mut ffi::sqlite3_file;
    let rc = inner_open(inner, name, inner_file, flags, out_flags);
    // SQLite calls `xClose` whenever `pMethods` is set, even after a failed
    // open: set it exactly when the inner file needs closing.
    let methods = if (*inner_file).pMethods.is_null() { std::ptr::null() } else { &LOG_METHODS as *const _ };
    std::ptr::write(
        file as *mut LogFile,
        LogFile { base: ffi::sqlite3_file { pMethods: methods }, appends: Appends::default() },
    );
    rc
}

/// The log file object, and the default VFS's file inside it.
unsafe fn parts<'a>(file: *mut ffi::sqlite3_file) -> (&'a mut LogFile, *mut ffi::sqlite3_file) {
    // SAFETY: SQLite passes back the object `open` filled, for this file only,
    // from one thread at a time (a connection is used by one thread at once).
    (&mut *(file as *mut LogFile), (file as *mut u8).add(INNER_OFFSET) as *mut ffi::sqlite3_file)
}

/// The default VFS's methods for `inner`.
unsafe fn methods<'a>(inner: *mut ffi::sqlite3_file) -> &'a ffi::sqlite3_io_methods {
    &*(*inner).pMethods
}

/// Write what is gathered for `file`.
unsafe fn flush(file: *mut ffi::sqlite3_file) -> c_int {
    let (log, inner) = parts(file);
    log.appends.flush(&mut |offset, bytes| write_inner(inner, offset, bytes))
}

/// Write `bytes` at `offset` through the default VFS, in pieces it accepts.
unsafe fn write_inner(inner: *mut ffi::sqlite3_file, offset: i64, bytes: &[u8]) -> c_int {
    let Some(write) = methods(inner).xWrite else { return ffi::SQLITE_IOERR_WRITE };
    let mut at = offset;
    for piece in bytes.chunks(MAX_WRITE) {
        // A piece is at most MAX_WRITE bytes, which fits in a c_int.
        let rc = write(inner, piece.as_ptr() as *const c_void, piece.len() as c_int, at);
        if rc != ffi::SQLITE_OK {
            return rc;
        }
        at += piece.len() as i64;
    }
    ffi::SQLITE_OK
}

/// Flush, then pass the call on (`$method` of the default VFS's file).
macro_rules! flushed {
    ($file:ident, $method:ident $(, $arg:expr)*) => {{
        let rc = flush($file);
        if rc != ffi::SQLITE_OK {
            return rc;
        }
        let (_, inner) = parts($file);
        match methods(inner).$method {
            Some(f) => f(inner $(, $arg)*),
            None => ffi::SQLITE_IOERR,
        }
    }};
}

unsafe extern "C" fn close(file: *mut ffi::sqlite3_file) -> c_int {
    let flushed = flush(file);
    let (log, inner) = parts(file);
    let closed = methods(inner).xClose.map_or(ffi::SQLITE_OK, |f| f(inner));
    std::ptr::drop_in_place(&mut log.appends);
    if flushed != ffi::SQLITE_OK {
        flushed
    } else {
        closed
    }
}

unsafe extern "C" fn read(file: *mut ffi::sqlite3_file, data: *mut c_void, amount: c_int, offset: i64) -> c_int {
    flushed!(file, xRead, data, amount, offset)
}

unsafe extern "C" fn write(file: *mut ffi::sqlite3_file, data: *const c_void, amount: c_int, offset: i64) -> c_int {
    let (log, inner) = parts(file);
    let bytes = if amount <= 0 { &[][..] } else { std::slice::from_raw_parts(data as *const u8, amount as usize) };
    log.appends.write(offset, bytes, &mut |offset, bytes| write_inner(inner, offset, bytes))
}

unsafe extern "C" fn truncate(file: *mut ffi::sqlite3_file, size: i64) -> c_int {
    let rc = flushed!(file, xTruncate, size);
    let (log, _) = parts(file);
    log.appends.end = log.appends.end.min(size);
    rc
}

unsafe extern "C" fn sync(file: *mut ffi::sqlite3_file, flags: c_int) -> c_int {
    flushed!(file, xSync, flags)
}

unsafe extern "C" fn file_size(file: *mut ffi::sqlite3_file, size: *mut i64) -> c_int {
    flushed!(file, xFileSize, size)
}

unsafe extern "C" fn lock(file: *mut ffi::sqlite3_file, level: c_int) -> c_int {
    flushed!(file, xLock, level)
}

unsafe extern "C" fn unlock(file: *mut ffi::sqlite3_file, level: c_int) -> c_int {
    flushed!(file, xUnlock, level)
}

unsafe extern "C" fn check_reserved_lock(file: *mut ffi::sqlite3_file, out: *mut c_int) -> c_int {
    flushed!(file, xCheckReservedLock, out)
}

unsafe extern "C" fn file_control(file: *mut ffi::sqlite3_file, op: c_int, arg: *mut c_void) -> c_int {
    flushed!(file, xFileControl, op, arg)
}

unsafe extern "C" fn sector_size(file: *mut ffi::sqlite3_file) -> c_int {
    let (_, inner) = parts(file);
    methods(inner).xSectorSize.map_or(4096, |f| f(inner))
}

unsafe extern "C" fn device_characteristics(file: *mut ffi::sqlite3_file) -> c_int {
    let (_, inner) = parts(file);
    methods(inner).xDeviceCharacteristics.map_or(0, |f| f(inner))
}

unsafe extern "C" fn shm_map(
    file: *mut ffi::sqlite3_file,
    region: c_int,
    size: c_int,
    extend: c_int,
    out: *mut *mut c_void,
) -> c_int {
    flushed!(file, xShmMap, region, size, extend, out)
}

unsafe extern "C" fn shm_lock(file: *mut ffi::sqlite3_file, offset: c_int, n: c_int, flags: c_int) -> c_int {
    flushed!(file, xShmLock, offset, n, flags)
}

unsafe extern "C" fn shm_barrier(file: *mut ffi::sqlite3_file) {
    // Nothing to report an error to: a failed write shows at the next call.
    let _ = flush(file);
    let (_, inner) = parts(file);
    if let Some(f) = methods(inner).xShmBarrier {
        f(inner)
    }
}

unsafe extern "C" fn shm_unmap(file: *mut ffi::sqlite3_file, delete: c_int) -> c_int {
    flushed!(file, xShmUnmap, delete)
}

unsafe extern "C" fn fetch(file: *mut ffi::sqlite3_file, offset: i64, amount: c_int, out: *mut *mut c_void) -> c_int {
    flushed!(file, xFetch, offset, amount, out)
}

unsafe extern "C" fn unfetch(file: *mut ffi::sqlite3_file, offset: i64, page: *mut c_void) -> c_int {
    flushed!(file, xUnfetch, offset, page)
}

static LOG_METHODS: ffi::sqlite3_io_methods = ffi::sqlite3_io_methods {
    iVersion: 3,
    xClose: Some(close),
    xRead: Some(read),
    xWrite: Some(write),
    xTruncate: Some(truncate),
    xSync: Some(sync),
    xFileSize: Some(file_size),
    xLock: Some(lock),
    xUnlock: Some(unlock),
    xCheckReservedLock: Some(check_reserved_lock),
    xFileControl: Some(file_control),
    xSectorSize: Some(sector_size),
    xDeviceCharacteristics: Some(device_characteristics),
    xShmMap: Some(shm_map),
    xShmLock: Some(shm_lock),
    xShmBarrier: Some(shm_barrier),
    xShmUnmap: Some(shm_unmap),
    xFetch: Some(fetch),
    xUnfetch: Some(unfetch),
};

#[cfg(test)]
mod tests {
    use super::*;

    /// The file as the shim wrote it, and the calls it made.
    #[derive(Default)]
    struct File {
        bytes: Vec<u8>,
        calls: usize,
    }

    impl File {
        fn out(&mut self) -> impl FnMut(i64, &[u8]) -> c_int + '_ {
            |offset, bytes| {
                let end = offset as usize + bytes.len();
                if self.bytes.len() < end {
                    self.bytes.resize(end, 0);
                }
                self.bytes[offset as usize..end].copy_from_slice(bytes);
                self.calls += 1;
                ffi::SQLITE_OK
            }
        }
    }

    fn header(commit: bool) -> [u8; FRAME_HEADER] {
        let mut h = [7u8; FRAME_HEADER];
        h[4..8].copy_from_slice(&(if commit { 12u32 } else { 0 }).to_be_bytes());
        h
    }

    const PAGE: usize = 512;

    /// Frames of a transaction at the log's end, the last one a commit.
    fn append_frames(appends: &mut Appends, file: &mut File, at: i64, frames: usize, fill: u8) -> i64 {
        let mut offset = at;
        for i in 0..frames {
            let h = header(i + 1 == frames);
            assert_eq!(appends.write(offset, &h, &mut file.out()), ffi::SQLITE_OK);
            assert_eq!(appends.write(offset + FRAME_HEADER as i64, &[fill; PAGE], &mut file.out()), ffi::SQLITE_OK);
            offset += (FRAME_HEADER + PAGE) as i64;
        }
        offset
    }

    #[test]
    fn a_commit_is_written_whole_in_one_call_when_its_last_page_arrives() {
        let (mut appends, mut file) = (Appends::default(), File::default());
        assert_eq!(appends.write(0, &[1; 32], &mut file.out()), ffi::SQLITE_OK);
        let end = append_frames(&mut appends, &mut file, 32, 5, 9);
        assert_eq!(file.calls, 1, "the log header and five frames go in one write");
        assert_eq!(file.bytes.len() as i64, end, "nothing is left gathered after the commit");
        let end2 = append_frames(&mut appends, &mut file, end, 3, 8);
        assert_eq!(file.calls, 2);
        assert_eq!(file.bytes.len() as i64, end2);
        assert_eq!(file.bytes[end as usize + FRAME_HEADER], 8);
    }

    #[test]
    fn frames_before_the_commit_frame_wait_until_something_else_needs_the_file() {
        let (mut appends, mut file) = (Appends::default(), File::default());
        let h = header(false);
        appends.write(0, &h, &mut file.out());
        appends.write(FRAME_HEADER as i64, &[3; PAGE], &mut file.out());
        assert_eq!(file.calls, 0, "a spilled frame of an open transaction may wait");
        assert_eq!(appends.flush(&mut file.out()), ffi::SQLITE_OK);
        assert_eq!(file.bytes.len(), FRAME_HEADER + PAGE);
        assert_eq!(file.bytes[FRAME_HEADER], 3);
    }

    #[test]
    fn rewrites_after_the_last_frame_are_written_at_once_never_left_behind() {
        let (mut appends, mut file) = (Appends::default(), File::default());
        let end = append_frames(&mut appends, &mut file, 32, 4, 5);
        let calls = file.calls;
        // SQLite rewrites the checksums of the frames, the commit frame's last:
        // header-only writes inside what is already written.
        let frame = (FRAME_HEADER + PAGE) as i64;
        for i in 0..4 {
            let mut h = header(i == 3);
            h[0] = 42;
            assert_eq!(appends.write(32 + i * frame, &h, &mut file.out()), ffi::SQLITE_OK);
        }
        assert_eq!(file.calls, calls + 4, "each rewrite is written through");
        assert_eq!(file.bytes[(32 + 3 * frame) as usize], 42, "the commit frame's new header is in the file");
        assert_eq!(file.bytes.len() as i64, end);
    }

    #[test]
    fn a_page_rewritten_in_place_sends_the_gathered_appends_first() {
        let (mut appends, mut file) = (Appends::default(), File::default());
        let h = header(false);
        appends.write(0, &h, &mut file.out());
        appends.write(FRAME_HEADER as i64, &[1; PAGE], &mut file.out());
        appends.write((FRAME_HEADER + PAGE) as i64, &h, &mut file.out());
        appends.write((2 * FRAME_HEADER + PAGE) as i64, &[2; PAGE], &mut file.out());
        assert_eq!(file.calls, 0);
        // The first frame's page changes again within the transaction.
        appends.write(FRAME_HEADER as i64, &[6; PAGE], &mut file.out());
        assert_eq!(file.calls, 2, "the gathered frames, then the rewrite");
        assert_eq!(file.bytes[FRAME_HEADER], 6, "the rewrite lands after, not under, the gathered copy");
        assert_eq!(file.bytes[2 * FRAME_HEADER + PAGE], 2);
    }

    #[test]
    fn the_log_starting_again_at_its_beginning_is_written_in_order() {
        let (mut appends, mut file) = (Appends::default(), File::default());
        let end = append_frames(&mut appends, &mut file, 0, 3, 4);
        assert!(end > 32);
        assert_eq!(appends.write(0, &[9; 32], &mut file.out()), ffi::SQLITE_OK);
        let calls = file.calls;
        append_frames(&mut appends, &mut file, 32, 2, 7);
        assert_eq!(file.calls, calls + 1, "appends after the restart are gathered again");
        assert_eq!(file.bytes[32 + FRAME_HEADER], 7);
    }

    #[test]
    fn a_failed_write_is_reported_and_nothing_stays_gathered() {
        let mut appends = Appends::default();
        let mut failing = |_: i64, _: &[u8]| ffi::SQLITE_IOERR_WRITE;
        assert_eq!(appends.write(0, &header(true), &mut failing), ffi::SQLITE_OK);
        assert_eq!(appends.write(FRAME_HEADER as i64, &[0; PAGE], &mut failing), ffi::SQLITE_IOERR_WRITE);
        assert!(appends.gathered.is_empty());
    }
}
