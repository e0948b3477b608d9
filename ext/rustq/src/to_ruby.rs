//! `serde_json` values → Ruby values, built as `JSON.parse` builds them, under the GVL.
//!
//! The Ruby host's threads get each job as a Hash made here from the payload the engine has
//! already parsed, instead of its JSON text parsed again by Ruby: for an ActiveJob payload this
//! is ~1 µs against `JSON.parse`'s ~6 µs, on the thread that holds the GVL (the one every job
//! waits for). The engine's runtime writes the parsed payload out into a [`Tape`] first, while it
//! is in that core's cache, so the Ruby thread reads one buffer in order rather than chasing a
//! few dozen allocations made on another core (−0.6 µs of the Ruby thread's ~27 µs per no-op
//! ActiveJob job).
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
use serde_json::Value as Json;

/// A job's fields written out in one buffer, in document order, by the engine's runtime thread
/// while the parsed payload is in its cache; the Ruby thread then reads them front to back
/// instead of following the parsed value's pointers from another core. `#[u8]` layout: a tag,
/// then for objects and arrays a `u32` count and the items (objects: key, value), for strings
/// and keys a `u32` length and the bytes, for numbers an `i64`/`u64` or the literal's text.
#[derive(Clone)]
pub struct Tape {
    bytes: Vec<u8>,
    /// Where `args[0]` starts, when it is an object (an ActiveJob wrapper's job data).
    first_arg: Option<usize>,
}

const OBJECT: u8 = b'{';
const ARRAY: u8 = b'[';
const STRING: u8 = b'"';
const INT: u8 = b'i';
const UINT: u8 = b'u';
const LITERAL: u8 = b'n';
const NULL: u8 = b'0';
const TRUE: u8 = b't';
const FALSE: u8 = b'f';

impl Tape {
    pub fn of(fields: &Fields) -> Tape {
        let mut bytes = Vec::with_capacity(512);
        let first_arg = write_object(&mut bytes, fields, true);
        Tape { bytes, first_arg }
    }

    /// Whether `args[0]` is an object, which [`first_arg_from_tape`] makes.
    pub fn has_first_arg(&self) -> bool {
        self.first_arg.is_some()
    }
}

fn write_len(tape: &mut Vec<u8>, len: usize) {
    tape.extend_from_slice(&(len as u32).to_le_bytes());
}

fn write_str(tape: &mut Vec<u8>, s: &str) {
    write_len(tape, s.len());
    tape.extend_from_slice(s.as_bytes());
}

/// Writes an object; with `find_first_arg` (the payload itself), returns where its `args[0]`
/// starts when that is an object.
fn write_object(tape: &mut Vec<u8>, fields: &Fields, find_first_arg: bool) -> Option<usize> {
    let mut first_arg = None;
    tape.push(OBJECT);
    write_len(tape, fields.len());
    for (key, value) in fields {
        write_str(tape, key);
        if find_first_arg && key == "args" {
            if let Json::Array(args) = value {
                if let Some(Json::Object(_)) = args.first() {
                    // Past the array's tag and count.
                    first_arg = Some(tape.len() + 1 + 4);
                }
            }
        }
        write_value(tape, value);
    }
    first_arg
}

fn write_value(tape: &mut Vec<u8>, value: &Json) {
    match value {
        Json::Null => tape.push(NULL),
        Json::Bool(true) => tape.push(TRUE),
        Json::Bool(false) => tape.push(FALSE),
        Json::Number(n) => {
            if let Some(i) = n.as_i64() {
                tape.push(INT);
                tape.extend_from_slice(&i.to_le_bytes());
            } else if let Some(u) = n.as_u64() {
                tape.push(UINT);
                tape.extend_from_slice(&u.to_le_bytes());
            } else {
                tape.push(LITERAL);
                write_str(tape, &n.to_string());
            }
        }
        Json::String(s) => {
            tape.push(STRING);
            write_str(tape, s);
        }
        Json::Array(items) => {
            tape.push(ARRAY);
            write_len(tape, items.len());
            for item in items {
                write_value(tape, item);
            }
        }
        Json::Object(fields) => {
            write_object(tape, fields, false);
        }
    }
}

/// Reads a [`Tape`] front to back.
struct Reader<'a> {
    tape: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn byte(&mut self) -> u8 {
        let b = self.tape[self.at];
        self.at += 1;
        b
    }

    fn bytes<const N: usize>(&mut self) -> [u8; N] {
        let b: [u8; N] = self.tape[self.at..self.at + N].try_into().expect("N bytes");
        self.at += N;
        b
    }

    fn len(&mut self) -> usize {
        u32::from_le_bytes(self.bytes()) as usize
    }

    fn str(&mut self) -> &'a str {
        let len = self.len();
        let bytes = &self.tape[self.at..self.at + len];
        self.at += len;
        // Written from a `&str` by `write_str`.
        std::str::from_utf8(bytes).expect("the tape holds UTF-8 text")
    }
}

/// The job's fields, written out by [`Tape::of`], as a Ruby Hash.
pub fn hash_from_tape(ruby: &Ruby, tape: &Tape) -> RHash {
    hash_at(ruby, tape, 0)
}

/// The job's `args[0]` alone as a Ruby Hash, when it is an object.
pub fn first_arg_from_tape(ruby: &Ruby, tape: &Tape) -> Option<RHash> {
    tape.first_arg.map(|at| hash_at(ruby, tape, at))
}

fn hash_at(_ruby: &Ruby, tape: &Tape, at: usize) -> RHash {
    let mut reader = Reader {
        tape: &tape.bytes,
        at,
    };
    // SAFETY: called holding the GVL (the `&Ruby`); every VALUE made here is reachable from the
    // stack (Ruby scans it) or from the Hash or Array being built until it is returned.
    unsafe {
        RHash::from_value(Value::from_raw(read_value(&mut reader)))
            .expect("the tape holds an object there")
    }
}

unsafe fn read_value(reader: &mut Reader<'_>) -> VALUE {
    match reader.byte() {
        OBJECT => {
            let count = reader.len();
            let hash = rb_sys::rb_hash_new();
            for _ in 0..count {
                let key = key_string(reader.str());
                rb_sys::rb_hash_aset(hash, key, read_value(reader));
            }
            hash
        }
        ARRAY => {
            let count = reader.len();
            let array = rb_sys::rb_ary_new_capa(count as _);
            for _ in 0..count {
                rb_sys::rb_ary_push(array, read_value(reader));
            }
            array
        }
        STRING => string(reader.str()),
        INT => rb_sys::rb_ll2inum(i64::from_le_bytes(reader.bytes())),
        UINT => rb_sys::rb_ull2inum(u64::from_le_bytes(reader.bytes())),
        LITERAL => literal(reader.str()),
        NULL => rb_sys::Qnil as VALUE,
        TRUE => rb_sys::Qtrue as VALUE,
        FALSE => rb_sys::Qfalse as VALUE,
        other => unreachable!("tape tag {other}"),
    }
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

/// The longest key [`KEYS`] keeps (bytes): field names are short, and a payload's long keys
/// (whoever writes to Redis chooses them) must not stay in memory for the life of the process.
const KEY_CACHED_MAX_LEN: usize = 64;

/// A Hash key, as [`interned`] makes it, from the cache when it is there.
unsafe fn key_string(key: &str) -> VALUE {
    if let Some(v) = KEYS.with_borrow(|keys| keys.get(key).copied()) {
        return v;
    }
    let v = interned(key);
    if key.len() <= KEY_CACHED_MAX_LEN && KEYS.with_borrow(|keys| keys.len() < KEYS_CACHED) {
        // Registered before the cache is borrowed again: should Ruby raise here (out of memory),
        // no borrow is left held.
        rb_sys::rb_gc_register_mark_object(v);
        KEYS.with_borrow_mut(|keys| keys.insert(key.into(), v));
    }
    v
}

/// A number past 64-bit integers, from its literal: a Float, or a Bignum.
unsafe fn literal(literal: &str) -> VALUE {
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
