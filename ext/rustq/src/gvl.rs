//! Releasing Ruby's global VM lock around work that waits (Redis round trips), so other Ruby
//! threads (Puma's, Sidekiq's) run meanwhile.

use std::ffi::c_void;
use std::panic::{catch_unwind, AssertUnwindSafe};

use magnus::{Error, Ruby};

use crate::errors;

/// Runs `work` without the GVL and returns its result.
///
/// `work` must not touch any Ruby value: convert arguments before calling and results after.
/// `unblock` is Ruby's unblock function: Ruby calls it from another thread when this one is
/// interrupted (`Thread#kill`, `Thread#raise`, Ctrl-C), and it must make `work` return soon.
/// A panic in either closure is caught here and raised as `Rustq::Error`, never unwound into
/// Ruby's C frames. A pending interrupt is raised (as a Ruby exception) after `work` returns.
pub fn without_gvl<W, R, U>(ruby: &Ruby, work: W, unblock: U) -> Result<R, Error>
where
    W: FnOnce() -> R,
    U: Fn() + Sync,
{
    // Ruby calls `unblock` only while it is registered, under the thread's interrupt lock, so a
    // borrow of this frame's closure is enough.
    nogvl(ruby, work, &unblock, 0)
}

/// What an interrupt does to a waiting call. Any `Fn() + Sync` closure is one.
pub trait Unblock: Sync {
    fn unblock(&self);
}

impl<F: Fn() + Sync> Unblock for F {
    fn unblock(&self) {
        self()
    }
}

/// [`without_gvl`] for an `unblock` that is async-signal-safe (it only touches atomics and calls
/// `write(2)`) and lives for the whole process: Ruby may call it straight from a signal handler,
/// on any thread, even just after this call has returned, so it must not borrow this frame.
/// Otherwise Ruby 3.1 starts a helper thread to call it for every call made by the main thread
/// of a single-threaded program (a script, a rake task): 9 futex calls and ~45 µs per push.
pub fn without_gvl_signal_safe<W, R, U>(
    ruby: &Ruby,
    work: W,
    unblock: &'static U,
) -> Result<R, Error>
where
    W: FnOnce() -> R,
    U: Unblock,
{
    nogvl(ruby, work, unblock, rb_sys::RB_NOGVL_UBF_ASYNC_SAFE as i32)
}

fn nogvl<W, R, U>(ruby: &Ruby, work: W, unblock: &U, flags: i32) -> Result<R, Error>
where
    W: FnOnce() -> R,
    U: Unblock,
{
    struct Call<W, R> {
        work: Option<W>,
        result: Option<std::thread::Result<R>>,
    }

    unsafe extern "C" fn call<W: FnOnce() -> R, R>(data: *mut c_void) -> *mut c_void {
        // SAFETY: `data` is the `Call` below, alive for the whole rb_nogvl call.
        let call = unsafe { &mut *data.cast::<Call<W, R>>() };
        if let Some(work) = call.work.take() {
            call.result = Some(catch_unwind(AssertUnwindSafe(work)));
        }
        std::ptr::null_mut()
    }

    unsafe extern "C" fn unblock_fn<U: Unblock>(data: *mut c_void) {
        // SAFETY: `data` is `unblock` below, alive as long as Ruby may call this (see the two
        // callers); `U: Sync` makes the call from another thread sound.
        let unblock = unsafe { &*data.cast_const().cast::<U>() };
        // Unwinding out of an `extern "C"` fn aborts; a failed unblock only means a slower stop.
        let _ = catch_unwind(AssertUnwindSafe(|| unblock.unblock()));
    }

    let mut state = Call::<W, R> {
        work: Some(work),
        result: None,
    };
    let data = std::ptr::addr_of_mut!(state).cast::<c_void>();
    let unblock_data = std::ptr::from_ref(unblock).cast_mut().cast::<c_void>();
    // rb_nogvl raises pending interrupts once `call` returns; `protect` turns that into an
    // `Err` instead of a longjmp across these Rust frames.
    magnus::rb_sys::protect(|| unsafe {
        rb_sys::rb_nogvl(
            Some(call::<W, R>),
            data,
            Some(unblock_fn::<U>),
            unblock_data,
            flags,
        );
        rb_sys::Qnil as rb_sys::VALUE
    })?;
    match state.result {
        Some(Ok(value)) => Ok(value),
        Some(Err(panic)) => Err(errors::internal(ruby, &panic_message(&panic))),
        None => Err(errors::interrupted(ruby)),
    }
}

fn panic_message(panic: &Box<dyn std::any::Any + Send>) -> String {
    format!(
        "rustq internal error: {}",
        rustq_engine::failure::panic_message(panic.as_ref())
    )
}
