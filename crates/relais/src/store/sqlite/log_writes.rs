//! Fewer, larger writes to SQLite's write-ahead log.
//!
//! Why: SQLite appends each frame of a commit to the log with two system
//! calls, one for the 24-byte frame header and one for the page. On this
//! machine a `pwrite` costs about 4 µs whatever its size up to a few pages, so
//! a commit of 150 frames spent over a millisecond in the kernel: 21% of the
//! writer thread's time under loyalty traffic, 11% under ingest (perf). One
//! write per commit costs 0.4 µs a frame.
//!
//! How: a VFS shim over the default (unix) one. Journals and temporary files
//! are opened by the default VFS in place and never pass through this module;
//! database files and logs are wrapped. A log's appends are gathered in
//! memory and written at once when the commit's last frame is complete, so
//! that nothing of a commit is left behind when SQLite publishes it in the
//! shared index (other connections read the file then; the log flush thread
//! syncs it after the commit returns). Any other use of the log writes what
//! is gathered first, so the file always reads as SQLite wrote it. The
//! database file's shared-memory barrier, passed before a commit is
//! published, writes anything still gathered (a backstop), and the release of
//! its write lock drops what a rolled-back transaction left. A failed write
//! drops what was gathered and is reported as an I/O error, so SQLite rolls
//! the whole transaction back. See [`Appends`] for the rule.

use std::os::raw::{c_char, c_int, c_void};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;

use rusqlite::ffi;

/// Bytes of a frame header in the log.
const FRAME_HEADER: usize = 24;

/// Gathered bytes written at once even before a commit ends (large commits).
const MAX_GATHERED: usize = 4 << 20;

/// The write lock's slot among the log index's locks (`WAL_WRITE_LOCK`).
const WAL_WRITE_LOCK: c_int = 0;

/// The most the default (unix) VFS writes in one call: it keeps only the low
/// 17 bits of a write's length, and reports a longer write as a full disk.
const MAX_WRITE: usize = 31 * 4096;

/// The buffering rule, apart from SQLite so that it can be tested alone.
///
/// A write that continues the log where SQLite last wrote through this
/// handle is an append and is gathered; any other (SQLite rewriting a frame
/// of the open transaction, rewriting checksums, starting the log again at
/// offset 0, or writing past frames another connection added) writes what is
/// gathered, then itself, at once. A frame header whose "database size" field
/// is not zero opens a commit frame: the write after it (its page) ends the
/// commit, and everything gathered is written then, whichever way the header
/// went. So, when a commit's frames have all been handed over, nothing
/// remains gathered; what SQLite writes after the last frame (checksum
/// rewrites) is never an append.
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
        // Whichever way the header went, the page after a commit frame's
        // header ends the commit.
        let ends_commit = self.commit_page_next;
        self.commit_page_next = bytes.len() == FRAME_HEADER && bytes[4..8] != [0; 4];
        if offset != self.end || bytes.is_empty() {
            let rc = self.flush(out);
            if rc != ffi::SQLITE_OK {
                return rc;
            }
            self.end = after;
            return out(offset, bytes);
        }
        if self.gathered.is_empty() {
            self.start = offset;
        }
        self.gathered.extend_from_slice(bytes);
        self.end = after;
        if ends_commit || self.gathered.len() >= MAX_GATHERED {
            return self.flush(out);
        }
        ffi::SQLITE_OK
    }

    /// Write what is gathered. A failure is reported as an I/O error, so that
    /// SQLite rolls the whole transaction back (not one statement), and the
    /// bytes are dropped with it: written later, they could bring back a
    /// commit SQLite was told had failed, or land on another writer's frames.
    pub(super) fn flush(&mut self, out: &mut impl FnMut(i64, &[u8]) -> c_int) -> c_int {
        if self.gathered.is_empty() {
            return ffi::SQLITE_OK;
        }
        let rc = out(self.start, &self.gathered);
        self.gathered.clear();
        if rc == ffi::SQLITE_OK {
            ffi::SQLITE_OK
        } else {
            ffi::SQLITE_IOERR_WRITE
        }
    }

    /// Whether bytes wait to be written.
    fn pending(&self) -> bool {
        !self.gathered.is_empty()
    }

    /// Drop what is gathered (a rolled-back transaction's frames).
    fn discard(&mut self) {
        self.gathered.clear();
        self.commit_page_next = false;
    }
}

/// A database or log file opened through the shim: this header, then the
/// default VFS's file object at [`INNER_OFFSET`].
#[repr(C)]
struct Wrapped {
    base: ffi::sqlite3_file,
    /// A log's gathered appends (unused for a database file).
    appends: Appends,
    /// Whether this is a main database file (else a log).
    database: bool,
    /// Whether a log gathers its appends: not when SQLite pads commits to
    /// sector boundaries (no power-safe overwrite), which splits frames.
    gathering: bool,
    /// A log and its database file point at each other while both are open.
    /// At the database file's shared-memory barrier, which SQLite passes
    /// before it publishes a commit to other connections, what the log
    /// gathered is written; at the write lock's release it is dropped (only a
    /// rolled-back transaction can leave any, and written later it could land
    /// on another writer's frames).
    peer: *mut Wrapped,
}

/// Where the default VFS's file object starts inside a [`Wrapped`]'s memory.
const INNER_OFFSET: usize = std::mem::size_of::<Wrapped>().next_multiple_of(16);

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
        // the unix VFS's methods other than `xOpen` do not read the VFS object
        // they are given, so they work unchanged on the copy. `xOpen` is
        // called with the original. Any other default VFS (the unix variants
        // without shared memory among them) is left alone.
        unsafe {
            let inner = ffi::sqlite3_vfs_find(std::ptr::null());
            if inner.is_null() || std::ffi::CStr::from_ptr((*inner).zName).to_bytes() != b"unix" {
                return;
            }
            if INNER.set(InnerVfs(inner)).is_err() {
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
    let database = flags & ffi::SQLITE_OPEN_MAIN_DB != 0;
    if !database && flags & ffi::SQLITE_OPEN_WAL == 0 {
        // Journals, temporary files: the default VFS's object takes the memory.
        return inner_open(inner, name, file, flags, out_flags);
    }
    let inner_file = (file as *mut u8).add(INNER_OFFSET) as *mut ffi::sqlite3_file;
    let rc = inner_open(inner, name, inner_file, flags, out_flags);
    // SQLite calls `xClose` whenever `pMethods` is set, even after a failed
    // open: set it exactly when the inner file needs closing.
    let opened = !(*inner_file).pMethods.is_null();
    std::ptr::write(
        file as *mut Wrapped,
        Wrapped {
            base: ffi::sqlite3_file { pMethods: if opened { &METHODS } else { std::ptr::null() } },
            appends: Appends::default(),
            database,
            gathering: false,
            peer: std::ptr::null_mut(),
        },
    );
    if opened && !database {
        // A log gathers only beside its database file opened through the shim
        // (whose barrier is the backstop), and only when SQLite does not pad
        // commits to sector boundaries, which it decides from that file.
        let db = ffi::sqlite3_database_file_object(name);
        if !db.is_null() && std::ptr::eq((*db).pMethods, &METHODS) && parts(db).0.database {
            let (_, db_inner) = parts(db);
            let power_safe = methods(db_inner)
                .xDeviceCharacteristics
                .is_some_and(|f| f(db_inner) & ffi::SQLITE_IOCAP_POWERSAFE_OVERWRITE != 0);
            if power_safe {
                let db = db as *mut Wrapped;
                (*db).peer = file as *mut Wrapped;
                let log = &mut *(file as *mut Wrapped);
                log.peer = db;
                log.gathering = true;
            }
        }
    }
    rc
}

/// The shim's object for `file`, and the default VFS's file inside it.
unsafe fn parts<'a>(file: *mut ffi::sqlite3_file) -> (&'a mut Wrapped, *mut ffi::sqlite3_file) {
    // SAFETY: SQLite passes back the object `open` filled, for this file only,
    // from one thread at a time (a connection is used by one thread at once);
    // a log's peer belongs to the same connection.
    (&mut *(file as *mut Wrapped), (file as *mut u8).add(INNER_OFFSET) as *mut ffi::sqlite3_file)
}

/// The default VFS's methods for `inner`.
unsafe fn methods<'a>(inner: *mut ffi::sqlite3_file) -> &'a ffi::sqlite3_io_methods {
    &*(*inner).pMethods
}

/// Write what the log `file` gathered.
unsafe fn flush(file: *mut ffi::sqlite3_file) -> c_int {
    let (log, inner) = parts(file);
    log.appends.flush(&mut |offset, bytes| write_inner(inner, offset, bytes))
}

/// Write what the log of the database file `file` gathered, if any.
unsafe fn flush_peer(file: *mut ffi::sqlite3_file) -> c_int {
    let (db, _) = parts(file);
    if db.peer.is_null() || !(*db.peer).appends.pending() {
        return ffi::SQLITE_OK;
    }
    flush(db.peer as *mut ffi::sqlite3_file)
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

/// Write what `$file` gathered, then pass the call on to the default VFS's
/// file (`$method`). A database file never gathers, so for it this only
/// passes the call on.
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

/// Close a wrapped file and undo its peer's link. SQLite closes a log only
/// outside a write transaction, when nothing committed is left gathered.
unsafe extern "C" fn close(file: *mut ffi::sqlite3_file) -> c_int {
    let (wrapped, inner) = parts(file);
    if !wrapped.peer.is_null() {
        (*wrapped.peer).peer = std::ptr::null_mut();
    }
    let closed = methods(inner).xClose.map_or(ffi::SQLITE_OK, |f| f(inner));
    std::ptr::drop_in_place(&mut wrapped.appends);
    closed
}

unsafe extern "C" fn read(file: *mut ffi::sqlite3_file, data: *mut c_void, amount: c_int, offset: i64) -> c_int {
    flushed!(file, xRead, data, amount, offset)
}

unsafe extern "C" fn write(file: *mut ffi::sqlite3_file, data: *const c_void, amount: c_int, offset: i64) -> c_int {
    let (log, inner) = parts(file);
    let bytes = if amount <= 0 { &[][..] } else { std::slice::from_raw_parts(data as *const u8, amount as usize) };
    if !log.gathering {
        return write_inner(inner, offset, bytes);
    }
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
    let (wrapped, inner) = parts(file);
    if offset == WAL_WRITE_LOCK && flags & ffi::SQLITE_SHM_UNLOCK != 0 && !wrapped.peer.is_null() {
        // The write transaction is over: anything still gathered belongs to
        // one that was rolled back.
        (*wrapped.peer).appends.discard();
    }
    methods(inner).xShmLock.map_or(ffi::SQLITE_IOERR, |f| f(inner, offset, n, flags))
}

unsafe extern "C" fn shm_barrier(file: *mut ffi::sqlite3_file) {
    // SQLite passes this barrier between its two copies of a new log-index
    // header, so before a commit is published: every frame must be in the
    // file. Gathering ends at each commit's last frame, so nothing should be
    // left here; if something is and cannot be written, publishing would
    // expose missing frames, and stopping the process leaves a log that
    // recovery reads up to the last complete commit (never acknowledged).
    if flush_peer(file) != ffi::SQLITE_OK {
        tracing::error!("the write-ahead log could not be written before a commit was published; stopping");
        std::process::abort();
    }
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

/// The methods of wrapped files, databases and logs alike: a database file
/// never gathers, so for it writing what is gathered first does nothing, and
/// its shared-memory calls act on its log (`peer`).
static METHODS: ffi::sqlite3_io_methods = ffi::sqlite3_io_methods {
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
    fn a_failed_write_is_an_io_error_and_its_bytes_are_dropped() {
        let mut appends = Appends::default();
        let mut failing = |_: i64, _: &[u8]| ffi::SQLITE_FULL;
        assert_eq!(appends.write(0, &header(true), &mut failing), ffi::SQLITE_OK);
        assert_eq!(
            appends.write(FRAME_HEADER as i64, &[5; PAGE], &mut failing),
            ffi::SQLITE_IOERR_WRITE,
            "an I/O error, so SQLite rolls the whole transaction back"
        );
        assert!(!appends.pending(), "a failed commit's frames are never written later");
        let mut file = File::default();
        assert_eq!(appends.flush(&mut file.out()), ffi::SQLITE_OK);
        assert_eq!(file.calls, 0);
    }

    #[test]
    fn a_commit_whose_header_is_not_an_append_still_ends_with_its_page_written() {
        // A new handle on a log other connections wrote: SQLite's first frame
        // lies past what this handle has seen, and may be the commit frame.
        let (mut appends, mut file) = (Appends::default(), File::default());
        let at = 32 + 7 * (FRAME_HEADER + PAGE) as i64;
        assert_eq!(appends.write(at, &header(true), &mut file.out()), ffi::SQLITE_OK);
        assert_eq!(appends.write(at + FRAME_HEADER as i64, &[4; PAGE], &mut file.out()), ffi::SQLITE_OK);
        assert!(!appends.pending(), "nothing of the commit is left gathered");
        assert_eq!(file.bytes.len() as i64, at + (FRAME_HEADER + PAGE) as i64);
        assert_eq!(file.bytes[(at as usize) + FRAME_HEADER], 4);
    }
}
