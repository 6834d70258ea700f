//! The C ABI of engram: open a model with its memory store, generate with a streaming
//! callback, learn with a progress callback, ask, and move what was learned as deltas.
//!
//! Conventions (see `include/engram.h`):
//! - Every call returns an [`EngramStatus`]; on failure [`engram_last_error`] describes it (a
//!   thread-local message, valid until this thread's next engram call).
//! - Engines are opaque handles. A closed or made-up handle is detected and refused with
//!   `ENGRAM_STATUS_INVALID_HANDLE` (handles are never reused).
//! - Strings the library returns are owned by the caller and freed with [`engram_string_free`].
//! - Callbacks get the caller's `user_data` back; returning `false` stops the work.
//! - A panic never crosses the boundary: it becomes `ENGRAM_STATUS_PANIC`.
//! - Threads: one engine may be used from many threads at once. Generation and asking share
//!   it (they run side by side); learning, snapshots, imports, reverts, exports and
//!   checkpoints take it exclusively, so they wait for running generations and vice versa.

#![allow(clippy::missing_safety_doc)]

mod chat;

pub use chat::{EngramChat, EngramMemoryCallback, EngramMemoryEvent};

use std::cell::RefCell;
use std::collections::HashMap;
use std::ffi::{CStr, CString, c_char, c_void};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use engram::{
    Delta, DeltaPrecision, Engine, Error, ErrorKind, Fact, GenerateOptions, SharedEngine,
    SignaturePolicy, StoreKey,
};

/// What a call did.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EngramStatus {
    /// It worked.
    Ok = 0,
    /// A required pointer argument was null.
    NullArgument = 1,
    /// A string argument was not valid UTF-8.
    InvalidUtf8 = 2,
    /// The engine handle is closed or was never returned by `engram_open`.
    InvalidHandle = 3,
    /// An argument was out of range (or the prompt does not fit the context).
    InvalidArgument = 4,
    /// A file could not be read or written.
    Io = 5,
    /// A model, store or delta file is malformed, unsupported, or belongs to another model.
    BadFile = 6,
    /// The memory store is open for writing in another process.
    InUse = 7,
    /// A callback asked to stop.
    Interrupted = 8,
    /// An internal error (a bug); the engine should be closed.
    Panic = 9,
    /// A delta is unsigned or signed by a key the engine does not trust.
    Untrusted = 10,
}

/// An engine: a model, its tokenizer and (optionally) a memory store. Opaque.
pub struct EngramEngine {
    _private: [u8; 0],
}

/// Called with each piece of generated text (UTF-8, NUL-terminated); return false to stop.
pub type EngramTokenCallback =
    Option<unsafe extern "C" fn(piece: *const c_char, user_data: *mut c_void) -> bool>;

/// Called after every learning step (fact and step count from 0); return false to stop.
pub type EngramProgressCallback =
    Option<unsafe extern "C" fn(fact: u32, step: u32, loss: f64, user_data: *mut c_void) -> bool>;

struct Handle {
    engine: Arc<SharedEngine>,
}

/// Live engines by handle id. Ids only grow, so a closed handle is never valid again.
static HANDLES: Mutex<Option<HashMap<usize, Arc<Handle>>>> = Mutex::new(None);
static NEXT_ID: AtomicUsize = AtomicUsize::new(1);

thread_local! {
    static LAST_ERROR: RefCell<CString> = RefCell::new(CString::default());
}

struct Failure(EngramStatus, String);

type Outcome = Result<(), Failure>;

fn set_error(message: &str) {
    let c = CString::new(message.replace('\0', " ")).unwrap_or_default();
    LAST_ERROR.with(|e| *e.borrow_mut() = c);
}

impl From<Error> for Failure {
    fn from(e: Error) -> Self {
        let status = match e.kind() {
            ErrorKind::Io => EngramStatus::Io,
            ErrorKind::BadFile => EngramStatus::BadFile,
            ErrorKind::InUse => EngramStatus::InUse,
            ErrorKind::Untrusted => EngramStatus::Untrusted,
            ErrorKind::Interrupted => EngramStatus::Interrupted,
            ErrorKind::Internal => EngramStatus::Panic,
            ErrorKind::InvalidArgument => EngramStatus::InvalidArgument,
        };
        Failure(status, e.to_string())
    }
}

/// Runs `body`, turning errors and panics into a status and the thread's last error.
fn guard(body: impl FnOnce() -> Outcome) -> EngramStatus {
    set_error("");
    match catch_unwind(AssertUnwindSafe(body)) {
        Ok(Ok(())) => EngramStatus::Ok,
        Ok(Err(Failure(status, message))) => {
            set_error(&message);
            status
        }
        Err(panic) => {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".into());
            set_error(&format!("internal error: {what}"));
            EngramStatus::Panic
        }
    }
}

unsafe fn text<'a>(p: *const c_char, name: &str) -> Result<&'a str, Failure> {
    if p.is_null() {
        return Err(Failure(
            EngramStatus::NullArgument,
            format!("{name} is null"),
        ));
    }
    // SAFETY: the caller passes a NUL-terminated string that outlives the call.
    unsafe { CStr::from_ptr(p) }.to_str().map_err(|e| {
        Failure(
            EngramStatus::InvalidUtf8,
            format!("{name} is not valid UTF-8 ({e})"),
        )
    })
}

unsafe fn optional_text<'a>(p: *const c_char, name: &str) -> Result<Option<&'a str>, Failure> {
    if p.is_null() {
        Ok(None)
    } else {
        unsafe { text(p, name) }.map(Some)
    }
}

fn handle(engine: *const EngramEngine) -> Result<Arc<Handle>, Failure> {
    live(
        &HANDLES,
        engine as usize,
        "engine",
        "is closed or was never opened",
    )
}

/// The live object a C handle names, or an invalid-handle failure saying which `kind` of
/// handle was null or `gone` (handles are ids from a counter, never pointers we follow).
pub(crate) fn live<T: Clone>(
    map: &Mutex<Option<HashMap<usize, T>>>,
    id: usize,
    kind: &str,
    gone: &str,
) -> Result<T, Failure> {
    let map = map.lock().unwrap_or_else(|e| e.into_inner());
    map.as_ref()
        .and_then(|m| m.get(&id))
        .cloned()
        .ok_or_else(|| {
            Failure(
                EngramStatus::InvalidHandle,
                if id == 0 {
                    format!("{kind} is null")
                } else {
                    format!("{kind} {id:#x} {gone}")
                },
            )
        })
}

fn with_shared<T>(
    engine: *const EngramEngine,
    f: impl FnOnce(&Engine) -> Result<T, Failure>,
) -> Result<T, Failure> {
    let h = handle(engine)?;
    let e = h.engine.read()?;
    f(&e)
}

fn with_exclusive<T>(
    engine: *const EngramEngine,
    f: impl FnOnce(&mut Engine) -> Result<T, Failure>,
) -> Result<T, Failure> {
    let h = handle(engine)?;
    let mut e = h.engine.write()?;
    f(&mut e)
}

/// Hands a string to the caller through `out` (if not null).
unsafe fn give(out: *mut *mut c_char, s: &str) {
    if !out.is_null() {
        let c = CString::new(s.replace('\0', " ")).unwrap_or_default();
        // SAFETY: `out` points to writable storage for one pointer.
        unsafe { *out = c.into_raw() };
    }
}

/// The library version, e.g. "0.1.0" (static; do not free).
#[unsafe(no_mangle)]
pub extern "C" fn engram_version() -> *const c_char {
    concat!(env!("CARGO_PKG_VERSION"), "\0").as_ptr().cast()
}

/// The last error on this thread ("" if the last call worked). Valid until this thread's
/// next engram call; do not free.
#[unsafe(no_mangle)]
pub extern "C" fn engram_last_error() -> *const c_char {
    LAST_ERROR.with(|e| e.borrow().as_ptr())
}

/// Frees a string the library returned (null is fine).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn engram_string_free(s: *mut c_char) {
    if !s.is_null() {
        // SAFETY: `s` came from CString::into_raw in this library and is freed once.
        drop(unsafe { CString::from_raw(s) });
    }
}

/// Opens `model_path` (GGUF) and, if `memory_path` is not null, its memory store; with
/// `writable` the store is locked for this process and every change is journaled.
/// `threads` = 0 uses one per core. On success `*out` is the engine.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn engram_open(
    model_path: *const c_char,
    memory_path: *const c_char,
    writable: bool,
    threads: u32,
    out: *mut *mut EngramEngine,
) -> EngramStatus {
    guard(|| unsafe { open_engine(model_path, memory_path, writable, threads, None, out) })
}

unsafe fn open_engine(
    model_path: *const c_char,
    memory_path: *const c_char,
    writable: bool,
    threads: u32,
    store_key: Option<&[u8]>,
    out: *mut *mut EngramEngine,
) -> Outcome {
    if out.is_null() {
        return Err(Failure(EngramStatus::NullArgument, "out is null".into()));
    }
    let model = unsafe { text(model_path, "model_path") }?;
    let memory = unsafe { optional_text(memory_path, "memory_path") }?;
    let engine = SharedEngine::open_with_key(
        model,
        memory.map(Into::into),
        writable,
        threads as usize,
        store_key,
    )?;
    let id = NEXT_ID.fetch_add(1, Ordering::Relaxed) * 16;
    let mut map = HANDLES.lock().unwrap_or_else(|e| e.into_inner());
    map.get_or_insert_with(HashMap::new).insert(
        id,
        Arc::new(Handle {
            engine: Arc::new(engine),
        }),
    );
    // SAFETY: checked non-null above.
    unsafe { *out = id as *mut EngramEngine };
    Ok(())
}

/// [`engram_open`] for a memory store encrypted at rest: `store_key` points to the 32-byte
/// key (`key_len` must be 32), e.g. from the OS keychain; null opens a plain store. A store
/// made encrypted stays encrypted (journal and read keys too); a wrong key is
/// `ENGRAM_STATUS_BAD_FILE` with "wrong store key".
#[unsafe(no_mangle)]
pub unsafe extern "C" fn engram_open_with_key(
    model_path: *const c_char,
    memory_path: *const c_char,
    writable: bool,
    threads: u32,
    store_key: *const u8,
    key_len: usize,
    out: *mut *mut EngramEngine,
) -> EngramStatus {
    guard(|| {
        let key = if store_key.is_null() {
            None
        } else {
            // SAFETY: the caller passes `key_len` readable bytes at `store_key`.
            Some(unsafe { std::slice::from_raw_parts(store_key, key_len) })
        };
        unsafe { open_engine(model_path, memory_path, writable, threads, key, out) }
    })
}

/// Closes an engine (calls still running on other threads finish first). The handle is
/// invalid afterwards; closing it again returns `ENGRAM_STATUS_INVALID_HANDLE`.
#[unsafe(no_mangle)]
pub extern "C" fn engram_close(engine: *mut EngramEngine) -> EngramStatus {
    guard(|| {
        let removed = {
            let mut map = HANDLES.lock().unwrap_or_else(|e| e.into_inner());
            map.as_mut().and_then(|m| m.remove(&(engine as usize)))
        };
        match removed {
            Some(h) => {
                drop(h);
                Ok(())
            }
            None => handle(engine).map(|_| ()),
        }
    })
}

/// Continues `prompt` greedily for at most `max_tokens` tokens, calling `on_token` (may be
/// null) with each piece; the whole text goes to `*out_text` (may be null; free it).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn engram_generate(
    engine: *const EngramEngine,
    prompt: *const c_char,
    max_tokens: u32,
    on_token: EngramTokenCallback,
    user_data: *mut c_void,
    out_text: *mut *mut c_char,
) -> EngramStatus {
    guard(|| {
        let prompt = unsafe { text(prompt, "prompt") }?;
        let options = GenerateOptions {
            max_tokens: max_tokens as usize,
            ..Default::default()
        };
        let g = with_shared(engine, |e| {
            e.generate(prompt, &options, |piece| match on_token {
                Some(cb) => {
                    let c = CString::new(piece.replace('\0', " ")).unwrap_or_default();
                    // SAFETY: the caller's callback, with its own user_data.
                    unsafe { cb(c.as_ptr(), user_data) }
                }
                None => true,
            })
            .map_err(Failure::from)
        })?;
        unsafe { give(out_text, &g.text) };
        Ok(())
    })
}

/// Asks `question` through the chat template, greedily; the answer goes to `*out_answer`
/// (free it).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn engram_ask(
    engine: *const EngramEngine,
    question: *const c_char,
    max_tokens: u32,
    out_answer: *mut *mut c_char,
) -> EngramStatus {
    guard(|| {
        if out_answer.is_null() {
            return Err(Failure(
                EngramStatus::NullArgument,
                "out_answer is null".into(),
            ));
        }
        let q = unsafe { text(question, "question") }?;
        let answer = with_shared(engine, |e| {
            e.ask(q, max_tokens as usize).map_err(Failure::from)
        })?;
        unsafe { give(out_answer, &answer) };
        Ok(())
    })
}

fn learn(
    engine: *const EngramEngine,
    fact: Fact,
    steps: u32,
    on_progress: EngramProgressCallback,
    user_data: *mut c_void,
) -> Outcome {
    with_exclusive(engine, |e| {
        e.learn_one(fact, steps as usize, &mut |f, s, loss| match on_progress {
            // SAFETY: the caller's callback, with its own user_data.
            Some(cb) => unsafe { cb(f as u32, s as u32, loss, user_data) },
            None => true,
        })
        .map(|_| ())
        .map_err(Failure::from)
    })
}

/// Learns a note (e.g. "My sister Ana lives in Porto."); `steps` = 0 uses the default.
/// With a writable store the fact is journaled before `on_progress` hears of its last step;
/// stopped before that, nothing of it is kept.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn engram_learn_note(
    engine: *const EngramEngine,
    note: *const c_char,
    steps: u32,
    on_progress: EngramProgressCallback,
    user_data: *mut c_void,
) -> EngramStatus {
    guard(|| {
        let note = unsafe { text(note, "note") }?;
        learn(engine, Fact::note(note), steps, on_progress, user_data)
    })
}

/// Learns a question and its answer; `steps` = 0 uses the default.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn engram_learn_qa(
    engine: *const EngramEngine,
    question: *const c_char,
    answer: *const c_char,
    steps: u32,
    on_progress: EngramProgressCallback,
    user_data: *mut c_void,
) -> EngramStatus {
    guard(|| {
        let q = unsafe { text(question, "question") }?;
        let a = unsafe { text(answer, "answer") }?;
        learn(engine, Fact::qa(q, a), steps, on_progress, user_data)
    })
}

/// Learns `statement`, something the user said about themselves (e.g. in a chat), after
/// forgetting the earlier fact it changes, if any ("We moved to Coimbra." replaces "We live in
/// Braga."). The replaced fact's text goes to `*out_replaced` (free it), or NULL when none
/// was replaced; `out_replaced` may be null.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn engram_remember(
    engine: *const EngramEngine,
    statement: *const c_char,
    out_replaced: *mut *mut c_char,
) -> EngramStatus {
    guard(|| {
        let statement = unsafe { text(statement, "statement") }?;
        if !out_replaced.is_null() {
            // SAFETY: `out_replaced` points to writable storage for one pointer.
            unsafe { *out_replaced = std::ptr::null_mut() };
        }
        let r = with_exclusive(engine, |e| {
            e.remember(
                statement,
                &engram::LearnOptions::default(),
                &mut |_, _, _| true,
            )
            .map_err(Failure::from)
        })?;
        if let Some(old) = r.replaced {
            unsafe { give(out_replaced, &old.text) };
        }
        Ok(())
    })
}

/// Forgets one learned fact exactly, named by its number (as text, e.g. "3") or by words of
/// its text that match it alone; its text goes to `*out_text` (free it; may be null). Naming
/// none or several is an error whose message lists them.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn engram_forget(
    engine: *const EngramEngine,
    what: *const c_char,
    out_text: *mut *mut c_char,
) -> EngramStatus {
    guard(|| {
        let what = unsafe { text(what, "what") }?;
        let r = with_exclusive(engine, |e| e.forget_matching(what).map_err(Failure::from))?;
        unsafe { give(out_text, &r.text) };
        Ok(())
    })
}

/// 1 when `text`, a user's chat turn, states something to remember about them or their world;
/// 0 for a question, request, supposition or chit-chat (and for NULL or invalid UTF-8).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn engram_is_statement(text: *const c_char) -> i32 {
    if text.is_null() {
        return 0;
    }
    // SAFETY: the caller passes a NUL-terminated string.
    let s = unsafe { CStr::from_ptr(text) };
    // No panic may cross into C (none is expected here: the rules only compare words).
    catch_unwind(|| {
        s.to_str()
            .is_ok_and(|t| engram::classify_turn(t) == engram::TurnKind::Statement) as i32
    })
    .unwrap_or(0)
}

/// Names the memory's current state (for `engram_delta_export(…, since = name, …)`).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn engram_snapshot(
    engine: *const EngramEngine,
    name: *const c_char,
) -> EngramStatus {
    guard(|| {
        let name = unsafe { text(name, "name") }?;
        with_exclusive(engine, |e| e.snapshot(name).map_err(Failure::from))
    })
}

/// Folds the journal into the store file: the changed rows and the history written in place,
/// logged first so a crash part way is finished on the next open (an encrypted store is
/// written whole, atomically).
#[unsafe(no_mangle)]
pub extern "C" fn engram_checkpoint(engine: *const EngramEngine) -> EngramStatus {
    guard(|| {
        with_exclusive(engine, |e| {
            e.checkpoint().map(|_| ()).map_err(Failure::from)
        })
    })
}

/// Writes what was learned (since the beginning, or since snapshot `since` if not null) to a
/// delta file at `path`; its id goes to `*out_id` (may be null; free it).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn engram_delta_export(
    engine: *const EngramEngine,
    since: *const c_char,
    f16: bool,
    label: *const c_char,
    path: *const c_char,
    out_id: *mut *mut c_char,
) -> EngramStatus {
    guard(|| {
        let since = unsafe { optional_text(since, "since") }?;
        let label = unsafe { optional_text(label, "label") }?.unwrap_or("");
        let path = unsafe { text(path, "path") }?;
        let precision = if f16 {
            DeltaPrecision::F16
        } else {
            DeltaPrecision::F32
        };
        let delta = with_exclusive(engine, |e| {
            e.export_delta(since, precision, label)
                .map_err(Failure::from)
        })?;
        delta.write(path)?;
        unsafe { give(out_id, &delta.id) };
        Ok(())
    })
}

/// Imports the delta file at `path` (a second import of the same delta changes nothing);
/// its id goes to `*out_id` (may be null; free it).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn engram_delta_import(
    engine: *const EngramEngine,
    path: *const c_char,
    out_id: *mut *mut c_char,
) -> EngramStatus {
    guard(|| {
        let path = unsafe { text(path, "path") }?;
        let delta = Delta::read(path)?;
        let report = with_exclusive(engine, |e| e.import_delta(&delta).map_err(Failure::from))?;
        unsafe { give(out_id, &report.id) };
        Ok(())
    })
}

/// Reverts an imported delta, given its id (or a unique prefix) or its file.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn engram_delta_revert(
    engine: *const EngramEngine,
    id_or_path: *const c_char,
) -> EngramStatus {
    guard(|| {
        let arg = unsafe { text(id_or_path, "id_or_path") }?;
        with_exclusive(engine, |e| {
            e.revert_delta_or_file(arg)
                .map(|_| ())
                .map_err(Failure::from)
        })
    })
}

/// Makes a new delta-signing key: the secret-key file `secret_path` (readable by its owner
/// only) and `secret_path.pub`; neither may exist. The public key (64 hex digits) goes to
/// `*out_public` (may be null; free it).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn engram_key_generate(
    secret_path: *const c_char,
    label: *const c_char,
    out_public: *mut *mut c_char,
) -> EngramStatus {
    guard(|| {
        let path = unsafe { text(secret_path, "secret_path") }?;
        let label = unsafe { optional_text(label, "label") }?.unwrap_or("");
        let public = engram::generate_key_files(path.as_ref(), label)?;
        unsafe { give(out_public, &public.to_string()) };
        Ok(())
    })
}

/// Signs the delta file at `path` with the secret-key file `key_path`, in place (atomically).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn engram_delta_sign(
    path: *const c_char,
    key_path: *const c_char,
) -> EngramStatus {
    guard(|| {
        let path = unsafe { text(path, "path") }?;
        let key = unsafe { text(key_path, "key_path") }?;
        engram::sign_delta_file(path.as_ref(), key.as_ref(), None)?;
        Ok(())
    })
}

/// Checks the delta file at `path` (checksum, signature) and, if `trusted_signers_path` is not
/// null, that a key in that file signed it. The signer (64 hex digits, or "" when unsigned)
/// goes to `*out_signer` (may be null; free it).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn engram_delta_verify(
    path: *const c_char,
    trusted_signers_path: *const c_char,
    out_signer: *mut *mut c_char,
) -> EngramStatus {
    guard(|| {
        let path = unsafe { text(path, "path") }?;
        let trusted = unsafe { optional_text(trusted_signers_path, "trusted_signers_path") }?;
        let delta = engram::verify_delta_file(path.as_ref(), trusted.map(AsRef::as_ref))?;
        let signer = delta.signature.map(|s| s.signer.to_string());
        unsafe { give(out_signer, &signer.unwrap_or_default()) };
        Ok(())
    })
}

/// From now on this engine imports only deltas signed by a key in the trusted-signers file
/// at `trusted_signers_path`; null lifts the requirement (unsigned deltas import again).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn engram_trust_signers(
    engine: *const EngramEngine,
    trusted_signers_path: *const c_char,
) -> EngramStatus {
    guard(|| {
        let trusted = unsafe { optional_text(trusted_signers_path, "trusted_signers_path") }?;
        let policy = SignaturePolicy::from_file(trusted.map(AsRef::as_ref))?;
        with_exclusive(engine, |e| {
            e.set_delta_policy(policy);
            Ok(())
        })
    })
}

/// Encrypts the plain memory store at `memory_path` under the 32-byte `store_key` (journal
/// included), or with `decrypt` turns the store encrypted under it back into a plain one. A
/// crash leaves the store whole in its old form or its new one.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn engram_store_encrypt(
    memory_path: *const c_char,
    store_key: *const u8,
    key_len: usize,
    decrypt: bool,
) -> EngramStatus {
    guard(|| {
        let path = unsafe { text(memory_path, "memory_path") }?;
        if store_key.is_null() {
            return Err(Failure(
                EngramStatus::NullArgument,
                "store_key is null".into(),
            ));
        }
        // SAFETY: the caller passes `key_len` readable bytes at `store_key`.
        let key = StoreKey::from_slice(unsafe { std::slice::from_raw_parts(store_key, key_len) })?;
        let (from, to) = if decrypt {
            (Some(&key), None)
        } else {
            (None, Some(&key))
        };
        engram::reseal_store_file(path.as_ref(), from, to)?;
        Ok(())
    })
}
