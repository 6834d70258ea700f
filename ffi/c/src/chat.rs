//! Chat objects for C: a conversation on an engine that, when made learning, remembers the
//! user's statements in the background after each reply and says so through a callback.

use std::collections::HashMap;
use std::ffi::{CString, c_char, c_void};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use engram::{GenerateOptions, LearnOptions, LearnerEvent, LearningChat};

use super::{
    EngramEngine, EngramStatus, EngramTokenCallback, Failure, NEXT_ID, Outcome, give, guard,
    handle, live, text,
};

/// A chat: a conversation on an engine, learning in the background or not. Opaque.
pub struct EngramChat {
    _private: [u8; 0],
}

/// What a chat's background learner did.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EngramMemoryEvent {
    /// A statement was learned and is durable: `number` is its fact number, `text` the
    /// statement, `detail` the earlier fact it replaced (or NULL).
    Remembered = 0,
    /// A fact was forgotten: `number` and `text` are its; `detail` is NULL.
    Forgot = 1,
    /// A statement or forget did not go through (nothing of it kept): `text` is what was
    /// asked, `detail` why; `number` is 0.
    Failed = 2,
}

/// Called from the learner's thread with each [`EngramMemoryEvent`]; the strings are valid
/// during the call only.
pub type EngramMemoryCallback = Option<
    unsafe extern "C" fn(
        event: EngramMemoryEvent,
        number: u64,
        text: *const c_char,
        detail: *const c_char,
        user_data: *mut c_void,
    ),
>;

/// The caller's callback and its user data, moved to the learner's thread.
struct Listener {
    callback: EngramMemoryCallback,
    user_data: *mut c_void,
}

// SAFETY: engram_chat_new documents that the callback is called from another thread with
// this user_data; making that safe is the caller's part of the contract.
unsafe impl Send for Listener {}

impl Listener {
    fn tell(&self, event: LearnerEvent) {
        let Some(cb) = self.callback else { return };
        let c = |s: &str| CString::new(s.replace('\0', " ")).unwrap_or_default();
        let (kind, number, text, detail) = match event {
            LearnerEvent::Remembered {
                text,
                uid,
                replaced,
                ..
            } => (
                EngramMemoryEvent::Remembered,
                uid,
                c(&text),
                replaced.map(|r| c(&r.text)),
            ),
            LearnerEvent::Forgot(r) => (EngramMemoryEvent::Forgot, r.uid, c(&r.text), None),
            LearnerEvent::Failed { what, error } => {
                (EngramMemoryEvent::Failed, 0, c(&what), Some(c(&error)))
            }
        };
        let detail_ptr = detail.as_ref().map_or(std::ptr::null(), |d| d.as_ptr());
        // SAFETY: the caller's callback with its own user_data; the strings outlive the call.
        unsafe { cb(kind, number, text.as_ptr(), detail_ptr, self.user_data) };
    }
}

/// Live chats by handle id (from the engines' counter: ids are never reused).
static CHATS: Mutex<Option<HashMap<usize, Arc<LearningChat>>>> = Mutex::new(None);

fn chat(chat: *const EngramChat) -> Result<Arc<LearningChat>, Failure> {
    live(&CHATS, chat as usize, "chat", "is freed or was never made")
}

/// Starts a chat on `engine`. With `learn` (the engine's store opened writable), statements
/// the user makes are learned in the background after each reply, and `on_event` (may be
/// null) is called from the learner's thread with `user_data` as each is learned, forgotten
/// or fails. On success `*out_chat` is the chat; free it with `engram_chat_free`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn engram_chat_new(
    engine: *const EngramEngine,
    learn: bool,
    on_event: EngramMemoryCallback,
    user_data: *mut c_void,
    out_chat: *mut *mut EngramChat,
) -> EngramStatus {
    guard(|| {
        if out_chat.is_null() {
            return Err(Failure(
                EngramStatus::NullArgument,
                "out_chat is null".into(),
            ));
        }
        let shared = handle(engine)?.engine.clone();
        let c = if learn {
            let listener = Listener {
                callback: on_event,
                user_data,
            };
            LearningChat::learning(shared, LearnOptions::default(), move |e| {
                listener.tell(e);
                true
            })?
        } else {
            LearningChat::new(shared)
        };
        let id = NEXT_ID.fetch_add(1, Ordering::Relaxed) * 16;
        let mut map = CHATS.lock().unwrap_or_else(|e| e.into_inner());
        map.get_or_insert_with(HashMap::new).insert(id, Arc::new(c));
        // SAFETY: checked non-null above.
        unsafe { *out_chat = id as *mut EngramChat };
        Ok(())
    })
}

/// Answers `text` greedily (at most `max_tokens` tokens), calling `on_token` (may be null)
/// with each piece; the reply goes to `*out_reply` (may be null; free it). In a learning chat
/// a statement about the user is queued to be learned once the reply is done.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn engram_chat_say(
    chat_handle: *const EngramChat,
    text_in: *const c_char,
    max_tokens: u32,
    on_token: EngramTokenCallback,
    user_data: *mut c_void,
    out_reply: *mut *mut c_char,
) -> EngramStatus {
    guard(|| {
        let said = unsafe { text(text_in, "text") }?;
        let options = GenerateOptions {
            max_tokens: max_tokens as usize,
            ..Default::default()
        };
        let reply = chat(chat_handle)?.say(said, &options, |piece| match on_token {
            Some(cb) => {
                let c = CString::new(piece.replace('\0', " ")).unwrap_or_default();
                // SAFETY: the caller's callback, with its own user_data.
                unsafe { cb(c.as_ptr(), user_data) }
            }
            None => true,
        })?;
        unsafe { give(out_reply, reply.generation.text.trim()) };
        Ok(())
    })
}

fn queued(
    chat_handle: *const EngramChat,
    f: impl FnOnce(&LearningChat) -> engram::Result<()>,
) -> Outcome {
    let c = chat(chat_handle)?;
    Ok(f(&c)?)
}

/// Queues `statement` to be remembered (whatever its form); the callback hears when it is.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn engram_chat_remember(
    chat_handle: *const EngramChat,
    statement: *const c_char,
) -> EngramStatus {
    guard(|| {
        let statement = unsafe { text(statement, "statement") }?;
        queued(chat_handle, |c| c.remember(statement))
    })
}

/// Queues the learned fact `what` names (its number as text, or words of it alone) to be
/// forgotten; the callback hears when it is, or why not.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn engram_chat_forget(
    chat_handle: *const EngramChat,
    what: *const c_char,
) -> EngramStatus {
    guard(|| {
        let what = unsafe { text(what, "what") }?;
        queued(chat_handle, |c| c.forget(what))
    })
}

/// Waits until everything the chat queued is done (each told to the callback).
#[unsafe(no_mangle)]
pub extern "C" fn engram_chat_wait_idle(chat_handle: *const EngramChat) -> EngramStatus {
    guard(|| queued(chat_handle, LearningChat::wait_idle))
}

/// Forgets the chat's turns so far (not what was learned).
#[unsafe(no_mangle)]
pub extern "C" fn engram_chat_reset(chat_handle: *const EngramChat) -> EngramStatus {
    guard(|| {
        chat(chat_handle)?.reset();
        Ok(())
    })
}

/// Makes the chat answer `reply` (copied) to a question about the user that nothing learned
/// answers, instead of letting the model invent one; `NULL` turns it off (the default). Needs
/// the routing read gate (the default).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn engram_chat_set_abstention(
    chat_handle: *const EngramChat,
    reply: *const c_char,
) -> EngramStatus {
    guard(|| {
        let reply = if reply.is_null() {
            None
        } else {
            Some(unsafe { text(reply, "reply") }?.to_owned())
        };
        chat(chat_handle)?.set_abstention(reply);
        Ok(())
    })
}

/// Finishes what the chat queued, stops its learner and frees it. The handle is invalid
/// afterwards; freeing it again returns `ENGRAM_STATUS_INVALID_HANDLE`.
#[unsafe(no_mangle)]
pub extern "C" fn engram_chat_free(chat_handle: *mut EngramChat) -> EngramStatus {
    guard(|| {
        let removed = {
            let mut map = CHATS.lock().unwrap_or_else(|e| e.into_inner());
            map.as_mut().and_then(|m| m.remove(&(chat_handle as usize)))
        };
        match removed {
            Some(c) => Ok(c.stop_learning()?),
            None => chat(chat_handle).map(|_| ()),
        }
    })
}
