//! `serde_json` values → Ruby values, built as `JSON.parse` builds them, under the GVL.
//!
//! The Ruby host's threads get each job as a Hash made here from the payload the engine has
//! already parsed, instead of its JSON text parsed again by Ruby: for an ActiveJob payload this
//! is ~1 µs against `JSON.parse`'s ~6 µs, on the thread that holds the GVL (the one every job
//! waits for).
//!
//! What `JSON.parse` (json 2.x, default options) gives, and so what this gives:
//! - objects: Hashes in document order (the payload keeps its order: serde_json's
//!   `preserve_order`), keys as frozen, deduplicated UTF-8 Strings, the last of duplicate keys
//!   winning in the first one's place;
//! - strings: new, unfrozen UTF-8 Strings;
//! - numbers: Integers for integer literals of any size (Bignums too), Floats for literals with
//!   a fraction or an exponent, rounded as `strtod` does (serde_json's `arbitrary_precision`
//!   keeps every literal's text);
//! - true, false, null: true, false, nil.
//!
//! The raw `rb_*` calls below cannot raise on the values they are given (new Hashes and Arrays,
//! valid UTF-8, digit strings) short of running out of memory, which Ruby raises anywhere.

use std::cell::RefCell;
use std::ffi::CString;

use magnus::rb_sys::FromRawValue;
use magnus::{RHash, Ruby, Value};
use rb_sys::VALUE;
use rustc_hash::FxHashMap;
use rustq_core::Fields;
use serde_json::{Number, Value as Json};

/// The job's fields as a Ruby Hash.
pub fn hash(_ruby: &Ruby, fields: &Fields) -> RHash {
    // SAFETY: called holding the GVL (the `&Ruby`); every VALUE made here is reachable from the
    // stack (Ruby scans it) or from the Hash being built until it is returned.
    unsafe { RHash::from_value(Value::from_raw(object(fields))).expect("rb_hash_new makes a Hash") }
}

unsafe fn object(fields: &Fields) -> VALUE {
    let hash = rb_sys::rb_hash_new();
    for (key, value) in fields {
        rb_sys::rb_hash_aset(hash, key_string(key), convert(value));
    }
    hash
}

thread_local! {
    /// Hash keys (and queue names) made so far on this thread: payloads repeat the same few
    /// dozen (Sidekiq's fields, ActiveJob's), and a lookup here is cheaper than Ruby's fstring
    /// table. Each is kept alive for good (`rb_gc_register_mark_object`), so the cache is
    /// bounded.
    static KEYS: RefCell<FxHashMap<Box<str>, VALUE>> = RefCell::default();
}

/// How many keys [`KEYS`] keeps per thread; keys past that are made each time.
const KEYS_CACHED: usize = 256;

/// A Hash key, as [`interned`] makes it, from the cache when it is there.
unsafe fn key_string(key: &str) -> VALUE {
    if let Some(v) = KEYS.with_borrow(|keys| keys.get(key).copied()) {
        return v;
    }
    let v = interned(key);
    if KEYS.with_borrow(|keys| keys.len() < KEYS_CACHED) {
        // Registered before the cache is borrowed again: should Ruby raise here (out of memory),
        // no borrow is left held.
        rb_sys::rb_gc_register_mark_object(v);
        KEYS.with_borrow_mut(|keys| keys.insert(key.into(), v));
    }
    v
}

unsafe fn convert(value: &Json) -> VALUE {
    match value {
        Json::Null => rb_sys::Qnil as VALUE,
        Json::Bool(true) => rb_sys::Qtrue as VALUE,
        Json::Bool(false) => rb_sys::Qfalse as VALUE,
        Json::Number(n) => number(n),
        Json::String(s) => string(s),
        Json::Array(items) => {
            let array = rb_sys::rb_ary_new_capa(items.len() as _);
            for item in items {
                rb_sys::rb_ary_push(array, convert(item));
            }
            array
        }
        Json::Object(fields) => object(fields),
    }
}

unsafe fn number(n: &Number) -> VALUE {
    if let Some(i) = n.as_i64() {
        return rb_sys::rb_ll2inum(i);
    }
    if let Some(u) = n.as_u64() {
        return rb_sys::rb_ull2inum(u);
    }
    // With `arbitrary_precision` the Number is its literal, exactly as written.
    let literal = n.to_string();
    if literal.bytes().any(|b| matches!(b, b'.' | b'e' | b'E')) {
        // Rust's parse rounds correctly, as strtod does; a literal past f64's range is
        // ±Infinity, as in JSON.parse.
        let float = literal.parse::<f64>().unwrap_or(f64::NAN);
        rb_sys::rb_float_new(float)
    } else {
        // An integer literal past 64 bits: a Bignum, as JSON.parse makes.
        let digits = CString::new(literal).expect("a JSON number has no NUL byte");
        rb_sys::rb_cstr2inum(digits.as_ptr(), 10)
    }
}

unsafe fn string(s: &str) -> VALUE {
    rb_sys::rb_utf8_str_new(bytes(s), s.len() as _)
}

/// A frozen, deduplicated String: what Ruby makes of a String Hash key anyway.
unsafe fn interned(s: &str) -> VALUE {
    rb_sys::rb_enc_interned_str(bytes(s), s.len() as _, rb_sys::rb_utf8_encoding())
}

/// The text's bytes for Ruby's C API, which reads through the pointer even for an empty string
/// (Rust's empty `&str` points nowhere).
fn bytes(s: &str) -> *const std::os::raw::c_char {
    static EMPTY: [u8; 1] = [0];
    if s.is_empty() {
        EMPTY.as_ptr().cast()
    } else {
        s.as_ptr().cast()
    }
}

/// A frozen, deduplicated String for a short word handed to Ruby per job (a queue name, an
/// outlook), from the same cache as Hash keys: no new object once Ruby has one.
pub fn word(_ruby: &Ruby, s: &str) -> Value {
    // SAFETY: called holding the GVL.
    unsafe { Value::from_raw(key_string(s)) }
}
