//! Panic capture: the hook records each panic's message on the panicking thread,
//! so the exit guard of the actor being unwound can report *why* it died.
//!
//! tokio runs an actor's task inside `catch_unwind` and drops the task's future while
//! still unwinding (`std::thread::panicking()` is true), so the guard knows it is a
//! crash and reads the message from this thread-local. The hook is process-wide by
//! nature (`std::panic::set_hook`); it holds no state of its own.

use std::cell::RefCell;
use std::sync::Once;

thread_local! {
    static LAST_PANIC: RefCell<Option<String>> = const { RefCell::new(None) };
}

static INSTALL: Once = Once::new();

/// The message of a panic injected through the chaos door: expected, so not echoed.
pub(crate) const CHAOS_PANIC: &str = "killed through the chaos door";

/// Installs the hook once per process. With `echo`, the previous hook still runs
/// (prints to stderr); without, panics are reported through `tracing` only.
pub fn install_panic_hook(echo: bool) {
    INSTALL.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let message = match info.payload().downcast_ref::<&str>() {
                Some(s) => (*s).to_string(),
                None => match info.payload().downcast_ref::<String>() {
                    Some(s) => s.clone(),
                    None => "panic with a non-string payload".to_string(),
                },
            };
            let location = info.location().map(|l| format!("{}:{}", l.file(), l.line())).unwrap_or_default();
            let chaos = message == CHAOS_PANIC;
            if chaos {
                tracing::info!(%location, "{message}");
            } else {
                tracing::error!(%location, "panic: {message}");
            }
            LAST_PANIC.with(|p| *p.borrow_mut() = Some(message));
            if echo && !chaos {
                previous(info);
            }
        }));
    });
}

/// Takes the message of the panic this thread is unwinding from.
pub(crate) fn take_last_panic() -> String {
    LAST_PANIC
        .with(|p| p.borrow_mut().take())
        .unwrap_or_else(|| "panic (message not captured: hook not installed)".to_string())
}
