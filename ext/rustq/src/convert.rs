//! Ruby values → `serde_json` values, directly (no trip through Ruby's JSON), under the GVL.
//!
//! Two strictness levels, as in Sidekiq 7:
//! - job `args` must be native JSON types: nil, true, false, Integer, finite Float, String,
//!   Array, and Hash with String keys, checked by exact class like Sidekiq's
//!   `RECURSIVE_JSON_UNSAFE` (so a Symbol, a Time or a `HashWithIndifferentAccess` is refused);
//! - everything else in the job hash (options like `retry`, `tags`, `bid`) is written the way
//!   `JSON.generate` would: Symbols as Strings, Classes by name, other objects by `as_json`
//!   (when ActiveSupport defines it) or `to_s`.

use magnus::rb_sys::{AsRawValue, FromRawValue};
use magnus::{
    prelude::*, r_hash::ForEach, Error, Float, Integer, RArray, RClass, RHash, RString, Ruby,
    Symbol, Value,
};
use rustq_core::{wire, BulkArgs, Fields, JobError};
use serde_json::Value as Json;

use crate::errors;

/// `JSON.generate`'s default `max_nesting`: deeper structures (and cycles) are refused.
const MAX_NESTING: usize = 100;

/// A job hash converted for `rustq-core`, plus the first argument that is not native JSON.
///
/// The bad argument is reported only after the core's own checks pass, so a push that is wrong
/// in several ways fails with the message Sidekiq gives first ("Job args must be an Array",
/// "Bulk arguments must be an Array of Arrays", …).
pub struct JobItem {
    pub fields: Fields,
    pub bad_args: Option<String>,
    /// A bulk push's arguments written straight to JSON, when `args` is an Array of Arrays;
    /// `fields` then holds `"args": []` in their place.
    pub bulk_args: Option<BulkArgs>,
}

/// Converts a push hash (`push`/`push_bulk`): String or Symbol keys (others by `to_s`, as
/// Sidekiq's `transform_keys(&:to_s)`), `class`/`wrapped` as a Class or a String, `args`
/// strictly, `at` as any Numeric. For a bulk push (`bulk`) whose `args` is an Array of Arrays,
/// each job's arguments are written straight to JSON (see [`JobItem::bulk_args`]).
pub fn job_item(ruby: &Ruby, item: RHash, bulk: bool) -> Result<JobItem, Error> {
    let mut pairs = Vec::with_capacity(item.len());
    for (key, value) in hash_pairs(item)? {
        pairs.push((key_string(ruby, key)?, value));
    }
    // Sidekiq names `wrapped || class` in its native-JSON message.
    let named = |key: &str| pairs.iter().rev().find(|(k, _)| k == key).map(|(_, v)| *v);
    let message_class = named("wrapped")
        .or_else(|| named("class"))
        .and_then(|v| class_name(ruby, v))
        .unwrap_or_default();

    let mut fields = Fields::new();
    let mut bad_args = None;
    let mut bulk_args = None;
    for (key, value) in pairs {
        let json = match key.as_str() {
            "args" if bulk && array_of_arrays(value)? => {
                let list = RArray::from_value(value).expect("checked above");
                let mut writer = StrictWriter::new(ruby, &message_class, list.len());
                for i in 0..list.len() {
                    let job_args: Value = list.entry(i as isize)?;
                    writer.write(ruby, job_args, 1)?;
                    writer.args.end_job();
                }
                bad_args = bad_args.or(writer.strict.bad);
                bulk_args = Some(writer.args);
                Json::Array(Vec::new())
            }
            "class" | "wrapped" => match class_name(ruby, value) {
                Some(name) => Json::String(name),
                // Neither a named Class nor a String: the core refuses it with Sidekiq's message.
                None => Json::Null,
            },
            "args" if RArray::from_value(value).is_some() => {
                let mut strict = Strict {
                    class_name: &message_class,
                    bad: None,
                };
                let json = strict.convert(ruby, value, 0)?;
                bad_args = bad_args.or(strict.bad);
                json
            }
            "at" => at(ruby, value)?,
            _ => lenient(ruby, value, 0)?,
        };
        fields.insert(key, json);
    }
    Ok(JobItem {
        fields,
        bad_args,
        bulk_args,
    })
}

/// Sidekiq's `args.is_a?(Array) && args.all?(Array)`.
fn array_of_arrays(value: Value) -> Result<bool, Error> {
    let Some(list) = RArray::from_value(value) else {
        return Ok(false);
    };
    for i in 0..list.len() {
        if RArray::from_value(list.entry::<Value>(i as isize)?).is_none() {
            return Ok(false);
        }
    }
    Ok(true)
}

/// Converts an options hash (`default_job_options`): keys stringified, values leniently.
pub fn options(ruby: &Ruby, hash: RHash) -> Result<Fields, Error> {
    let mut fields = Fields::new();
    for (key, value) in hash_pairs(hash)? {
        fields.insert(key_string(ruby, key)?, lenient(ruby, value, 0)?);
    }
    Ok(fields)
}

/// The pairs of a Hash in order. The values stay reachable through the Hash itself, which the
/// caller holds for the whole conversion.
fn hash_pairs(hash: RHash) -> Result<Vec<(Value, Value)>, Error> {
    let mut pairs = Vec::with_capacity(hash.len());
    hash.foreach(|key: Value, value: Value| {
        pairs.push((key, value));
        Ok(ForEach::Continue)
    })?;
    Ok(pairs)
}

/// Ruby's `value.class`: the real class, never a singleton class (magnus's `class()` may
/// answer the singleton class, which would fail every exact-class check below).
fn class_of(value: Value) -> rb_sys::VALUE {
    // SAFETY: rb_obj_class only reads the object's class pointer; it neither raises nor allocates.
    unsafe { rb_sys::rb_obj_class(value.as_raw()) }
}

fn is(value: Value, class: RClass) -> bool {
    class_of(value) == class.as_raw()
}

/// A Hash key as Ruby's JSON writes it: Strings as they are, anything else by `to_s`.
fn key_string(ruby: &Ruby, key: Value) -> Result<String, Error> {
    if let Some(s) = RString::from_value(key) {
        return utf8(ruby, s);
    }
    if let Some(sym) = Symbol::from_value(key) {
        return Ok(sym.name()?.into_owned());
    }
    let s: RString = key.funcall("to_s", ())?;
    utf8(ruby, s)
}

fn utf8(ruby: &Ruby, s: RString) -> Result<String, Error> {
    s.to_string().map_err(|_| {
        errors::invalid_job_message(
            ruby,
            format!(
                "Job strings must be valid UTF-8, but {} is not",
                s.as_value().inspect()
            ),
        )
    })
}

/// The name of a Class or Module, or the String itself; `None` for anything else (and for
/// anonymous classes, which Sidekiq could not load by name either).
fn class_name(ruby: &Ruby, value: Value) -> Option<String> {
    if let Some(s) = RString::from_value(value) {
        return s.to_string().ok();
    }
    if value.is_kind_of(ruby.class_module()) {
        return value.funcall::<_, _, Option<String>>("name", ()).ok()?;
    }
    None
}

/// `at`: any Numeric as epoch seconds. Anything else is left for the core to refuse with
/// "Job 'at' must be a Numeric timestamp"; an Array (bulk, one time per job) element-wise.
fn at(ruby: &Ruby, value: Value) -> Result<Json, Error> {
    if let Some(list) = RArray::from_value(value) {
        let mut times = Vec::with_capacity(list.len());
        for entry in list.into_iter() {
            times.push(at(ruby, entry)?);
        }
        return Ok(Json::Array(times));
    }
    if let Some(int) = Integer::from_value(value) {
        return integer(int);
    }
    if value.is_kind_of(ruby.class_numeric()) {
        let secs: f64 = value.funcall("to_f", ())?;
        // NaN and infinities become null, which the core refuses as a bad `at`.
        return Ok(wire::float_value(secs));
    }
    lenient(ruby, value, 0)
}

fn integer(int: Integer) -> Result<Json, Error> {
    if let Ok(i) = int.to_i64() {
        return Ok(Json::from(i));
    }
    if let Ok(u) = int.to_u64() {
        return Ok(Json::from(u));
    }
    // A Bignum: its decimal digits are a valid JSON number (arbitrary precision is on).
    let digits: String = int.funcall("to_s", ())?;
    Ok(digits
        .parse::<serde_json::Number>()
        .map(Json::Number)
        .unwrap_or(Json::Null))
}

fn finite_float(f: f64) -> Option<Json> {
    f.is_finite().then(|| wire::float_value(f))
}

/// Job arguments: native JSON types only. The first offender is recorded (with Sidekiq 7's
/// message) and written as null so conversion can go on to the core's shape checks.
struct Strict<'a> {
    class_name: &'a str,
    bad: Option<String>,
}

impl Strict<'_> {
    fn refuse(&mut self, value: Value) -> Json {
        if self.bad.is_none() {
            let error = JobError::NotNativeJson {
                class: self.class_name.to_string(),
                value: value.inspect(),
                // SAFETY: a class VALUE from rb_obj_class is a live Class object.
                type_name: unsafe { Value::from_raw(class_of(value)) }.inspect(),
            };
            self.bad = Some(error.to_string());
        }
        Json::Null
    }

    fn convert(&mut self, ruby: &Ruby, value: Value, depth: usize) -> Result<Json, Error> {
        if let Some(json) = literal(ruby, value, depth)? {
            return Ok(json);
        }
        if is(value, ruby.class_integer()) {
            if let Some(int) = Integer::from_value(value) {
                return integer(int);
            }
        }
        if is(value, ruby.class_float()) {
            if let Some(f) = Float::from_value(value) {
                return Ok(finite_float(f.to_f64()).unwrap_or_else(|| self.refuse(value)));
            }
        }
        if is(value, ruby.class_string()) {
            if let Some(s) = RString::from_value(value) {
                return Ok(Json::String(utf8(ruby, s)?));
            }
        }
        if is(value, ruby.class_array()) {
            if let Some(list) = RArray::from_value(value) {
                let mut out = Vec::with_capacity(list.len());
                for entry in list.into_iter() {
                    out.push(self.convert(ruby, entry, depth + 1)?);
                }
                return Ok(Json::Array(out));
            }
        }
        if is(value, ruby.class_hash()) {
            if let Some(hash) = RHash::from_value(value) {
                let mut out = Fields::new();
                for (key, entry) in hash_pairs(hash)? {
                    // Sidekiq accepts String keys only (`String === k`); a Symbol key is the
                    // classic mistake: it comes back a String in `perform`.
                    let key = match RString::from_value(key) {
                        Some(s) => utf8(ruby, s)?,
                        None => {
                            self.refuse(key);
                            continue;
                        }
                    };
                    out.insert(key, self.convert(ruby, entry, depth + 1)?);
                }
                return Ok(Json::Object(out));
            }
        }
        Ok(self.refuse(value))
    }
}

/// [`Strict`], writing JSON bytes instead of building values: the same checks, and the same
/// bytes `serde_json` writes for the values [`Strict::convert`] would build. Each value's class
/// is looked up once, and Integers that fit a machine word are read without a call into Ruby.
struct StrictWriter<'a> {
    strict: Strict<'a>,
    args: BulkArgs,
    classes: NativeClasses,
}

/// The classes whose instances are native JSON, as raw VALUEs to compare `rb_obj_class` with.
struct NativeClasses {
    integer: rb_sys::VALUE,
    float: rb_sys::VALUE,
    string: rb_sys::VALUE,
    array: rb_sys::VALUE,
    hash: rb_sys::VALUE,
    true_class: rb_sys::VALUE,
    false_class: rb_sys::VALUE,
}

impl NativeClasses {
    fn new(ruby: &Ruby) -> NativeClasses {
        NativeClasses {
            integer: ruby.class_integer().as_raw(),
            float: ruby.class_float().as_raw(),
            string: ruby.class_string().as_raw(),
            array: ruby.class_array().as_raw(),
            hash: ruby.class_hash().as_raw(),
            true_class: ruby.class_true_class().as_raw(),
            false_class: ruby.class_false_class().as_raw(),
        }
    }
}

/// A Fixnum's value, read from the VALUE itself (Ruby tags Fixnums with the lowest bit).
fn fixnum(value: Value) -> Option<i64> {
    let raw = value.as_raw() as i64;
    (raw & 1 == 1).then_some(raw >> 1)
}

impl<'a> StrictWriter<'a> {
    fn new(ruby: &Ruby, class_name: &'a str, jobs: usize) -> StrictWriter<'a> {
        StrictWriter {
            strict: Strict {
                class_name,
                bad: None,
            },
            args: BulkArgs::with_capacity(jobs),
            classes: NativeClasses::new(ruby),
        }
    }

    fn json(&mut self, value: &impl serde::Serialize) {
        serde_json::to_writer(self.args.buffer(), value).expect("a JSON value serializes");
    }

    fn text(&mut self, ruby: &Ruby, s: RString) -> Result<(), Error> {
        // SAFETY: the str is written out before any Ruby code can run.
        match unsafe { s.test_as_str() } {
            Some(text) => self.json(&text),
            None => self.json(&utf8(ruby, s)?),
        }
        Ok(())
    }

    fn write(&mut self, ruby: &Ruby, value: Value, depth: usize) -> Result<(), Error> {
        if depth > MAX_NESTING {
            return Err(too_deep(ruby));
        }
        if let Some(i) = fixnum(value) {
            self.json(&i);
            return Ok(());
        }
        if value.is_nil() {
            self.args.buffer().extend_from_slice(b"null");
            return Ok(());
        }
        let class = class_of(value);
        let classes = &self.classes;
        if class == classes.string {
            if let Some(s) = RString::from_value(value) {
                return self.text(ruby, s);
            }
        } else if class == classes.array {
            if let Some(list) = RArray::from_value(value) {
                self.args.buffer().push(b'[');
                // By index, reading the length each time: no copy of the Array is made, and
                // an `inspect` run for an error message cannot pull it from under us.
                let mut i = 0;
                while i < list.len() {
                    if i > 0 {
                        self.args.buffer().push(b',');
                    }
                    let entry: Value = list.entry(i as isize)?;
                    self.write(ruby, entry, depth + 1)?;
                    i += 1;
                }
                self.args.buffer().push(b']');
                return Ok(());
            }
        } else if class == classes.hash {
            if let Some(hash) = RHash::from_value(value) {
                self.args.buffer().push(b'{');
                let mut first = true;
                for (key, entry) in hash_pairs(hash)? {
                    // As in Strict::convert: a key that is not a String is refused and left out.
                    let Some(key) = RString::from_value(key) else {
                        self.strict.refuse(key);
                        continue;
                    };
                    if !first {
                        self.args.buffer().push(b',');
                    }
                    first = false;
                    self.text(ruby, key)?;
                    self.args.buffer().push(b':');
                    self.write(ruby, entry, depth + 1)?;
                }
                self.args.buffer().push(b'}');
                return Ok(());
            }
        } else if class == classes.float {
            if let Some(f) = Float::from_value(value) {
                let json = finite_float(f.to_f64()).unwrap_or_else(|| self.strict.refuse(value));
                self.json(&json);
                return Ok(());
            }
        } else if class == classes.integer {
            if let Some(int) = Integer::from_value(value) {
                let json = integer(int)?;
                self.json(&json);
                return Ok(());
            }
        } else if class == classes.true_class {
            self.args.buffer().extend_from_slice(b"true");
            return Ok(());
        } else if class == classes.false_class {
            self.args.buffer().extend_from_slice(b"false");
            return Ok(());
        }
        let json = self.strict.refuse(value);
        self.json(&json);
        Ok(())
    }
}

/// `nil`, `true` and `false`, which both conversions write alike; errors past the nesting limit.
fn literal(ruby: &Ruby, value: Value, depth: usize) -> Result<Option<Json>, Error> {
    if depth > MAX_NESTING {
        return Err(too_deep(ruby));
    }
    if value.is_nil() {
        return Ok(Some(Json::Null));
    }
    if is(value, ruby.class_true_class()) {
        return Ok(Some(Json::Bool(true)));
    }
    if is(value, ruby.class_false_class()) {
        return Ok(Some(Json::Bool(false)));
    }
    Ok(None)
}

fn too_deep(ruby: &Ruby) -> Error {
    errors::invalid_job_message(
        ruby,
        format!("Job arguments nest deeper than {MAX_NESTING} levels (or contain themselves)"),
    )
}

/// Everything but `args`: written as `JSON.generate` would write it.
fn lenient(ruby: &Ruby, value: Value, depth: usize) -> Result<Json, Error> {
    if let Some(json) = literal(ruby, value, depth)? {
        return Ok(json);
    }
    if let Some(int) = Integer::from_value(value) {
        return integer(int);
    }
    if let Some(f) = Float::from_value(value) {
        return finite_float(f.to_f64()).ok_or_else(|| {
            errors::invalid_job_message(
                ruby,
                format!(
                    "Job options must be finite numbers, not {}",
                    value.inspect()
                ),
            )
        });
    }
    if let Some(s) = RString::from_value(value) {
        return Ok(Json::String(utf8(ruby, s)?));
    }
    if let Some(sym) = Symbol::from_value(value) {
        return Ok(Json::String(sym.name()?.into_owned()));
    }
    if let Some(list) = RArray::from_value(value) {
        let mut out = Vec::with_capacity(list.len());
        for entry in list.into_iter() {
            out.push(lenient(ruby, entry, depth + 1)?);
        }
        return Ok(Json::Array(out));
    }
    if let Some(hash) = RHash::from_value(value) {
        let mut out = Fields::new();
        for (key, entry) in hash_pairs(hash)? {
            out.insert(key_string(ruby, key)?, lenient(ruby, entry, depth + 1)?);
        }
        return Ok(Json::Object(out));
    }
    if let Some(name) = class_name(ruby, value) {
        return Ok(Json::String(name));
    }
    if value.respond_to("as_json", false)? {
        let json: Value = value.funcall("as_json", ())?;
        // An `as_json` that answers itself would loop; the depth limit ends it either way.
        return lenient(ruby, json, depth + 1);
    }
    let s: RString = value.funcall("to_s", ())?;
    Ok(Json::String(utf8(ruby, s)?))
}
