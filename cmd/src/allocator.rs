//! The process's allocator: mimalloc instead of glibc's malloc.
//!
//! The servers build and drop many small JSON values per request; under a scheduling
//! burst glibc's free lists (`_int_free`, `malloc_consolidate`, `unlink_chunk`) took
//! about a third of the busiest thread, and pods bound per second rose by about 60%
//! with mimalloc (BENCHMARKS.md, scheduling, session 11).
//!
//! Two of mimalloc's defaults trade memory for speed in a way a cluster of small
//! processes cannot afford: arenas committed eagerly are never purged (an idle
//! `keelson up` held twice the memory), and freed pages go back to the OS only after
//! a delay. Both are set before the first allocation (by a constructor, which runs
//! before Rust's runtime allocates), unless the environment sets them
//! (`MIMALLOC_ARENA_EAGER_COMMIT`, `MIMALLOC_PURGE_DELAY`).

use std::ffi::{c_int, c_long, CStr};

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

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

const OPTIONS: [(c_int, &CStr, c_long); 2] =
    [(ARENA_EAGER_COMMIT, c"MIMALLOC_ARENA_EAGER_COMMIT", 0), (PURGE_DELAY, c"MIMALLOC_PURGE_DELAY", 0)];

extern "C" fn set_options() {
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

#[used]
#[link_section = ".init_array"]
static SET_OPTIONS: extern "C" fn() = set_options;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
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
