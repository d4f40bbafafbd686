//! SQLite's own page cache, wrapped so that the end of a transaction does not
//! scan the whole cache for nothing.
//!
//! Why: when a B-tree page splits, SQLite renumbers the new pages through a
//! temporary page number, the page holding the lock byte (262,145 with 4 KB
//! pages, 131,073 with 8 KB). That raises the cache's highest page number
//! far above the file's size, so at the end of the transaction the cache's
//! truncation to the file's size believes pages may lie beyond it and scans
//! every slot of its hash table. With a warm 64 MB cache that scan took
//! 18–26% of the writer's time under loyalty traffic (measured with perf and
//! gdb). The scan finds nothing: the renumbering moved the page away again
//! at once.
//!
//! The wrapper delegates everything to the default cache and keeps, per
//! cache, an upper bound of the page numbers it holds (not counting a page
//! parked at the temporary number, which it counts apart). A truncation
//! whose limit is above that bound has nothing to drop and is skipped; any
//! other is passed on.

use std::os::raw::{c_int, c_uint, c_void};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::OnceLock;

use rusqlite::ffi;

/// The byte SQLite locks in the database file (`PENDING_BYTE`): the page that
/// holds it is never used, which is why the B-tree borrows its number.
const PENDING_BYTE: u64 = 0x4000_0000;

/// What one cache holds, as far as truncation is concerned. SQLite calls a
/// cache only from the connection that owns it, one call at a time, so
/// relaxed atomics suffice (no lock on the page lookup path); they only make
/// the type shareable.
#[derive(Debug)]
pub(super) struct Bounds {
    /// At least the highest page number held, the parked page aside.
    highest: AtomicU32,
    /// Pages renumbered to the temporary number and not yet moved away.
    parked: AtomicU32,
    /// The temporary page number for this cache's page size.
    temporary: u32,
}

impl Bounds {
    /// Bounds for a cache of pages of `page_size` bytes.
    pub(super) fn new(page_size: u32) -> Bounds {
        let temporary = u32::try_from(PENDING_BYTE / u64::from(page_size.max(1)) + 1).unwrap_or(u32::MAX);
        Bounds { highest: AtomicU32::new(0), parked: AtomicU32::new(0), temporary }
    }

    /// A page was found or created under `key`.
    pub(super) fn fetched(&self, key: u32) {
        self.highest.fetch_max(key, Ordering::Relaxed);
    }

    /// A page moved from `old` to `new`.
    pub(super) fn rekeyed(&self, old: u32, new: u32) {
        if old == self.temporary && self.parked.load(Ordering::Relaxed) > 0 {
            self.parked.fetch_sub(1, Ordering::Relaxed);
        }
        if new == self.temporary {
            self.parked.fetch_add(1, Ordering::Relaxed);
        } else {
            self.highest.fetch_max(new, Ordering::Relaxed);
        }
    }

    /// Whether a truncation dropping pages numbered `limit` and above may drop
    /// anything; when it may, the bounds after it.
    pub(super) fn truncate(&self, limit: u32) -> bool {
        let needed = self.parked.load(Ordering::Relaxed) > 0 || limit <= self.highest.load(Ordering::Relaxed);
        if needed {
            self.highest.fetch_min(limit.saturating_sub(1), Ordering::Relaxed);
            if limit <= self.temporary {
                self.parked.store(0, Ordering::Relaxed);
            }
        }
        needed
    }
}

/// One wrapped cache: the default cache it delegates to and its bounds.
struct Wrapped {
    inner: *mut ffi::sqlite3_pcache,
    bounds: Bounds,
}

/// The default implementation, read once before the wrapper replaces it.
struct Default2(ffi::sqlite3_pcache_methods2);

// SAFETY: the methods table is plain function pointers and SQLite's own
// argument, which SQLite documents as usable from any thread.
unsafe impl Send for Default2 {}
unsafe impl Sync for Default2 {}

static DEFAULT: OnceLock<Default2> = OnceLock::new();
static INSTALLED: AtomicBool = AtomicBool::new(false);
static SKIPPED: AtomicU64 = AtomicU64::new(0);

fn default() -> &'static ffi::sqlite3_pcache_methods2 {
    &DEFAULT.get().expect("the wrapper is installed only after the default is read").0
}

/// Install the wrapper, once per process, before SQLite is first used.
/// Returns whether it is in place (it cannot be once SQLite has started).
pub(super) fn install() -> bool {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let mut methods: ffi::sqlite3_pcache_methods2 = unsafe { std::mem::zeroed() };
        // SAFETY: GETPCACHE2 copies the current implementation into `methods`;
        // PCACHE2 copies ours. Both fail harmlessly (SQLITE_MISUSE) once
        // SQLite is initialised, in which case the default stays.
        unsafe {
            if ffi::sqlite3_config(ffi::SQLITE_CONFIG_GETPCACHE2, &mut methods as *mut ffi::sqlite3_pcache_methods2)
                != ffi::SQLITE_OK
            {
                return;
            }
            if DEFAULT.set(Default2(methods)).is_err() {
                return;
            }
            let wrapper = ffi::sqlite3_pcache_methods2 {
                iVersion: 1,
                pArg: std::ptr::null_mut(),
                xInit: Some(init),
                xShutdown: Some(shutdown),
                xCreate: Some(create),
                xCachesize: Some(cachesize),
                xPagecount: Some(pagecount),
                xFetch: Some(fetch),
                xUnpin: Some(unpin),
                xRekey: Some(rekey),
                xTruncate: Some(truncate),
                xDestroy: Some(destroy),
                xShrink: Some(shrink),
            };
            if ffi::sqlite3_config(ffi::SQLITE_CONFIG_PCACHE2, &wrapper as *const ffi::sqlite3_pcache_methods2)
                == ffi::SQLITE_OK
            {
                INSTALLED.store(true, Ordering::Relaxed);
            }
        }
    });
    INSTALLED.load(Ordering::Relaxed)
}

/// Whether the wrapper is in place, and how many truncations it has skipped.
pub fn page_cache_wrapper() -> (bool, u64) {
    (INSTALLED.load(Ordering::Relaxed), SKIPPED.load(Ordering::Relaxed))
}

fn wrapped<'a>(cache: *mut ffi::sqlite3_pcache) -> &'a Wrapped {
    // SAFETY: every cache SQLite hands back was created by `create` below.
    unsafe { &*(cache as *const Wrapped) }
}

unsafe extern "C" fn init(_: *mut c_void) -> c_int {
    let d = default();
    d.xInit.map_or(ffi::SQLITE_OK, |f| f(d.pArg))
}

unsafe extern "C" fn shutdown(_: *mut c_void) {
    let d = default();
    if let Some(f) = d.xShutdown {
        f(d.pArg)
    }
}

unsafe extern "C" fn create(page_size: c_int, extra: c_int, purgeable: c_int) -> *mut ffi::sqlite3_pcache {
    let Some(f) = default().xCreate else { return std::ptr::null_mut() };
    let inner = f(page_size, extra, purgeable);
    if inner.is_null() {
        return inner;
    }
    let bounds = Bounds::new(u32::try_from(page_size).unwrap_or(4096));
    Box::into_raw(Box::new(Wrapped { inner, bounds })) as *mut ffi::sqlite3_pcache
}

unsafe extern "C" fn cachesize(cache: *mut ffi::sqlite3_pcache, size: c_int) {
    if let Some(f) = default().xCachesize {
        f(wrapped(cache).inner, size)
    }
}

unsafe extern "C" fn pagecount(cache: *mut ffi::sqlite3_pcache) -> c_int {
    default().xPagecount.map_or(0, |f| f(wrapped(cache).inner))
}

unsafe extern "C" fn fetch(
    cache: *mut ffi::sqlite3_pcache,
    key: c_uint,
    create: c_int,
) -> *mut ffi::sqlite3_pcache_page {
    let Some(f) = default().xFetch else { return std::ptr::null_mut() };
    let cache = wrapped(cache);
    let page = f(cache.inner, key, create);
    if !page.is_null() {
        cache.bounds.fetched(key);
    }
    page
}

unsafe extern "C" fn unpin(cache: *mut ffi::sqlite3_pcache, page: *mut ffi::sqlite3_pcache_page, discard: c_int) {
    if let Some(f) = default().xUnpin {
        f(wrapped(cache).inner, page, discard)
    }
}

unsafe extern "C" fn rekey(
    cache: *mut ffi::sqlite3_pcache,
    page: *mut ffi::sqlite3_pcache_page,
    old: c_uint,
    new: c_uint,
) {
    if let Some(f) = default().xRekey {
        let cache = wrapped(cache);
        f(cache.inner, page, old, new);
        cache.bounds.rekeyed(old, new);
    }
}

unsafe extern "C" fn truncate(cache: *mut ffi::sqlite3_pcache, limit: c_uint) {
    let cache = wrapped(cache);
    if !cache.bounds.truncate(limit) {
        SKIPPED.fetch_add(1, Ordering::Relaxed);
        return;
    }
    if let Some(f) = default().xTruncate {
        f(cache.inner, limit)
    }
}

unsafe extern "C" fn destroy(cache: *mut ffi::sqlite3_pcache) {
    // SAFETY: created by `create` with Box::into_raw; SQLite destroys a cache once.
    let cache = Box::from_raw(cache as *mut Wrapped);
    if let Some(f) = default().xDestroy {
        f(cache.inner)
    }
}

unsafe extern "C" fn shrink(cache: *mut ffi::sqlite3_pcache) {
    if let Some(f) = default().xShrink {
        f(wrapped(cache).inner)
    }
}

#[cfg(test)]
mod tests {
    use super::Bounds;

    #[test]
    fn a_truncation_above_every_page_held_is_skipped() {
        let bounds = Bounds::new(4096);
        bounds.fetched(10);
        bounds.fetched(3);
        assert!(!bounds.truncate(11), "nothing is numbered 11 or above");
        assert!(bounds.truncate(10), "page 10 must be dropped");
        assert!(!bounds.truncate(10), "after the truncation, nothing above 9 is left");
        bounds.fetched(12);
        assert!(bounds.truncate(12));
    }

    #[test]
    fn renumbering_through_the_lock_byte_page_does_not_raise_the_bound() {
        let bounds = Bounds::new(4096);
        assert_eq!(bounds.temporary, 262_145);
        bounds.fetched(40);
        bounds.fetched(41);
        // What a B-tree split does to sort two new pages: 41 → temporary, 40 → 41, temporary → 40.
        bounds.rekeyed(41, 262_145);
        bounds.rekeyed(40, 41);
        bounds.rekeyed(262_145, 40);
        assert_eq!(bounds.parked.load(std::sync::atomic::Ordering::Relaxed), 0);
        assert!(!bounds.truncate(42), "the parked page has moved back under the file's size");
        // A page renumbered above the file (a vacuum moving pages) still counts.
        bounds.rekeyed(5, 90);
        assert!(bounds.truncate(42));
    }

    #[test]
    fn a_truncation_while_a_page_is_parked_is_passed_on() {
        let bounds = Bounds::new(4096);
        bounds.fetched(7);
        bounds.rekeyed(7, 262_145);
        assert!(bounds.truncate(8), "the parked page lies above the limit");
        assert_eq!(bounds.parked.load(std::sync::atomic::Ordering::Relaxed), 0, "and the truncation dropped it");
        assert!(!bounds.truncate(8));
    }

    #[test]
    fn the_temporary_number_follows_the_page_size() {
        assert_eq!(Bounds::new(1024).temporary, 1_048_577);
        assert_eq!(Bounds::new(8192).temporary, 131_073);
        assert_eq!(Bounds::new(65_536).temporary, 16_385);
    }
}
