//! The process's allocator: mimalloc for the control plane, glibc's malloc elsewhere.
//!
//! Servers build and drop many small JSON values per request; under a scheduling burst
//! glibc's free lists (`_int_free`, `malloc_consolidate`, `unlink_chunk`) took about a
//! third of the busiest thread, and pods bound per second rose by about 60% with
//! mimalloc (BENCHMARKS.md, scheduling, session 11). mimalloc holds 2–3 MB more per
//! process, though, and agents, the launcher and the one shim per container gain
//! nothing from its speed: they keep glibc's. Hollow agents, which stand for thousands
//! of nodes in a benchmark, take mimalloc with the servers.
//!
//! The choice is made once, by a constructor, before the first allocation (glibc passes
//! `argc`/`argv` to `.init_array` functions, and Rust's runtime allocates only after
//! them), so every block is freed by the allocator that gave it.
//!
//! Two of mimalloc's defaults are changed the same way, unless the environment sets
//! them (`MIMALLOC_ARENA_EAGER_COMMIT`, `MIMALLOC_PURGE_DELAY`): arenas committed
//! eagerly are never purged (an idle `keelson up` held twice the memory), and freed
//! pages go back to the OS half a second after they were freed, long enough to cover a
//! burst (with no delay a scheduling burst faulted the same pages in again within
//! milliseconds: page faults and `madvise` were an eighth of the busiest member), short
//! enough that an idle cluster keeps no more than 2–3 MB of it.

use std::alloc::{GlobalAlloc, Layout, System};
use std::ffi::{c_char, c_int, c_long, CStr};
use std::sync::atomic::{AtomicBool, Ordering};

use mimalloc::MiMalloc;

/// Set once by [`choose`], before anything is allocated; never changed after.
static MIMALLOC: AtomicBool = AtomicBool::new(false);

struct Chosen;

#[global_allocator]
static ALLOCATOR: Chosen = Chosen;

// SAFETY: every call goes to the one allocator chosen before the first allocation, so
// each block is reallocated and freed by the allocator that gave it.
unsafe impl GlobalAlloc for Chosen {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if MIMALLOC.load(Ordering::Relaxed) {
            MiMalloc.alloc(layout)
        } else {
            System.alloc(layout)
        }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if MIMALLOC.load(Ordering::Relaxed) {
            MiMalloc.alloc_zeroed(layout)
        } else {
            System.alloc_zeroed(layout)
        }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if MIMALLOC.load(Ordering::Relaxed) {
            MiMalloc.dealloc(ptr, layout)
        } else {
            System.dealloc(ptr, layout)
        }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if MIMALLOC.load(Ordering::Relaxed) {
            MiMalloc.realloc(ptr, layout, new_size)
        } else {
            System.realloc(ptr, layout, new_size)
        }
    }
}

/// Whether a process started with these arguments takes mimalloc: `keelson server …`,
/// or a hollow agent (`keelson agent … --hollow N`), global options allowed first.
fn wants_mimalloc<'a>(args: impl Iterator<Item = &'a [u8]>) -> bool {
    let mut args = args.skip(1);
    let mut value_follows = false;
    let command = args.by_ref().find(|a| {
        let value = std::mem::replace(&mut value_follows, *a == b"--data-dir" || *a == b"--log-format");
        !value && !a.starts_with(b"-")
    });
    match command {
        Some(b"server") => true,
        Some(b"agent") => args.any(|a| a == b"--hollow" || a.starts_with(b"--hollow=")),
        _ => false,
    }
}

// `mi_option_t` of mimalloc 3 (`mimalloc.h`); the test below checks the numbering.
const ARENA_EAGER_COMMIT: c_int = 4;
const PURGE_DELAY: c_int = 15;
#[cfg(test)]
const ARENA_RESERVE: c_int = 23;

extern "C" {
    fn mi_option_set(option: c_int, value: c_long);
    #[cfg(test)]
    fn mi_option_get(option: c_int) -> c_long;
}

/// Option, its environment variable (which wins), and the value set otherwise.
const OPTIONS: [(c_int, &CStr, c_long); 2] =
    [(ARENA_EAGER_COMMIT, c"MIMALLOC_ARENA_EAGER_COMMIT", 0), (PURGE_DELAY, c"MIMALLOC_PURGE_DELAY", 500)];

#[cfg_attr(not(all(target_os = "linux", target_env = "gnu")), allow(dead_code))]
extern "C" fn choose(argc: c_int, argv: *const *const c_char, _envp: *const *const c_char) {
    // SAFETY: glibc calls `.init_array` functions with the process's argc and argv (as
    // Rust's std relies on for its own arguments); each is a NUL-terminated string.
    let args = (0..usize::try_from(argc).unwrap_or(0))
        .map(|i| unsafe { *argv.add(i) })
        .take_while(|a| !a.is_null())
        .map(|a| unsafe { CStr::from_ptr(a) }.to_bytes());
    MIMALLOC.store(!argv.is_null() && wants_mimalloc(args), Ordering::Relaxed);
    for (option, variable, value) in OPTIONS {
        // SAFETY: getenv with a NUL-terminated name, before any thread exists; setting an
        // option only writes mimalloc's option table.
        unsafe {
            if libc::getenv(variable.as_ptr()).is_null() {
                mi_option_set(option, value);
            }
        }
    }
}

/// Only where the C library hands `.init_array` functions their arguments (glibc, as
/// Rust's std assumes for the same trick); elsewhere every process keeps the system's
/// allocator.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[used]
#[link_section = ".init_array"]
static CHOOSE: extern "C" fn(c_int, *const *const c_char, *const *const c_char) = choose;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn servers_and_hollow_agents_take_mimalloc() {
        let takes = |line: &str| wants_mimalloc(line.split(' ').map(str::as_bytes));
        assert!(takes("keelson server --name server-1"));
        assert!(takes("/bin/keelson agent --name hollow --hollow 5000"));
        assert!(takes("keelson agent --hollow=10"));
        assert!(!takes("keelson agent --name agent-1"));
        assert!(!takes("keelson up"));
        assert!(!takes("keelson shim /var/lib/x"));
        assert!(!takes("keelson shim-spawner /var/lib/x"));
        assert!(!takes("keelson"));
        assert!(takes("keelson --data-dir server --log-format=json server --name s"));
        assert!(!takes("keelson --data-dir server agent --name a"));
        // The constructor ran in this test binary too, and chose by its arguments.
        let args: Vec<Vec<u8>> = std::env::args_os().map(|a| a.into_encoded_bytes()).collect();
        assert_eq!(MIMALLOC.load(Ordering::Relaxed), wants_mimalloc(args.iter().map(Vec::as_slice)));
    }

    #[test]
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    fn options_are_set_before_the_first_allocation() {
        // SAFETY: reading mimalloc's option table.
        let get = |o| unsafe { mi_option_get(o) };
        // A default that only this numbering gives (1 GiB, in KiB): the enum still matches.
        if std::env::var_os("MIMALLOC_ARENA_RESERVE").is_none() {
            assert_eq!(get(ARENA_RESERVE), 1 << 20, "mimalloc's option numbering changed");
        }
        for (option, variable, value) in OPTIONS {
            if std::env::var_os(variable.to_str().unwrap()).is_none() {
                assert_eq!(get(option), value, "{variable:?}");
            }
        }
    }
}
