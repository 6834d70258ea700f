//! Learning in the background of a chat: statements the user makes are remembered (and
//! facts forgotten) on a worker thread while the app goes on answering. A reply never waits
//! for a whole fact: a reader that asks for the engine makes the worker stop its fact at the
//! next gradient step (nothing of an unfinished fact is kept) and start it again once the
//! reader is done.

use std::cell::Cell;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, RwLockReadGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::forget::ForgetReport;
use super::{Engine, SharedEngine};
use crate::error::{Error, Result};
use crate::learn::{Fact, LearnOptions};

/// What the background learner did, told to its `on_event` in order, from its thread.
#[derive(Clone, Debug)]
pub enum LearnerEvent {
    /// A statement was learned and is durable (journaled) in the store.
    Remembered {
        /// The statement.
        text: String,
        /// Its number in the store's history (what `forget` takes).
        uid: u64,
        /// The earlier fact it replaced (forgotten first), if any.
        replaced: Option<ForgetReport>,
        /// Seconds from the first try to durable, the pauses for readers included.
        seconds: f64,
        /// How many times it was stopped so that a reader could go first.
        yielded: usize,
    },
    /// A learned fact was forgotten.
    Forgot(ForgetReport),
    /// A statement or a forget that did not go through; nothing of it was kept.
    Failed {
        /// The statement, or what named the fact to forget.
        what: String,
        /// Why, in one line.
        error: String,
    },
}

/// Work for the learner thread.
#[derive(Clone, Debug)]
enum Job {
    Remember(String),
    Forget(String),
}

/// The queue and the worker's state, behind one lock.
#[derive(Default)]
struct Queue {
    jobs: VecDeque<Job>,
    /// Whether the worker is on a job (taken off `jobs`, not yet reported).
    busy: bool,
    /// Set when the learner is finished: the worker ends once the queue is empty.
    stop: bool,
}

/// What the app's threads and the worker share.
struct Shared {
    engine: Arc<SharedEngine>,
    queue: Mutex<Queue>,
    /// Signalled when the queue, `busy` or `readers` change.
    changed: Condvar,
    /// Readers that hold or wait for the engine: the worker steps aside while any does.
    readers: AtomicUsize,
    /// Gradient steps taken so far, over every statement.
    steps: AtomicUsize,
}

/// A worker thread that learns statements and forgets facts in the order they are given,
/// while readers ([`Self::read`]) go first.
pub struct BackgroundLearner {
    shared: Arc<Shared>,
    worker: Option<JoinHandle<()>>,
}

/// The engine for reading, taken through a [`BackgroundLearner`]: while it lives the learner
/// pauses (a fact in progress is stopped at its next step and goes on from there after).
pub struct LearnerReadGuard<'a> {
    guard: Option<RwLockReadGuard<'a, Engine>>,
    shared: &'a Shared,
}

impl std::ops::Deref for LearnerReadGuard<'_> {
    type Target = Engine;

    fn deref(&self) -> &Engine {
        self.guard.as_ref().expect("held until dropped")
    }
}

impl Drop for LearnerReadGuard<'_> {
    fn drop(&mut self) {
        self.guard.take();
        self.shared.readers.fetch_sub(1, Ordering::SeqCst);
        let _queue = self.shared.queue.lock();
        self.shared.changed.notify_all();
    }
}

impl BackgroundLearner {
    /// Starts the worker for `engine` (its store open for writing), learning with `options`
    /// and telling `on_event` what it did.
    pub fn start(
        engine: Arc<SharedEngine>,
        options: LearnOptions,
        on_event: impl FnMut(LearnerEvent) + Send + 'static,
    ) -> Result<Self> {
        options.validate()?;
        let shared = Arc::new(Shared {
            engine,
            queue: Mutex::new(Queue::default()),
            changed: Condvar::new(),
            readers: AtomicUsize::new(0),
            steps: AtomicUsize::new(0),
        });
        let worker_shared = shared.clone();
        let worker = std::thread::Builder::new()
            .name("engram-learner".into())
            .spawn(move || work(&worker_shared, &options, on_event))
            .map_err(|e| Error::Internal(format!("cannot start the learner thread: {e}")))?;
        Ok(BackgroundLearner {
            shared,
            worker: Some(worker),
        })
    }

    /// Queues `statement` to be remembered (see [`Engine::remember`]).
    pub fn remember(&self, statement: &str) -> Result<()> {
        self.push(Job::Remember(statement.to_owned()))
    }

    /// Queues the learned fact `what` names (its number or words of it) to be forgotten.
    pub fn forget(&self, what: &str) -> Result<()> {
        self.push(Job::Forget(what.to_owned()))
    }

    fn push(&self, job: Job) -> Result<()> {
        let mut q = self.shared.queue.lock().map_err(|_| stopped())?;
        if q.stop {
            return Err(stopped());
        }
        q.jobs.push_back(job);
        self.shared.changed.notify_all();
        Ok(())
    }

    /// Gradient steps the worker has taken so far, over every statement (it moves while a
    /// statement is being learned: an app can show that learning is under way).
    pub fn steps(&self) -> usize {
        self.shared.steps.load(Ordering::SeqCst)
    }

    /// Jobs queued or in progress.
    pub fn pending(&self) -> usize {
        self.shared
            .queue
            .lock()
            .map_or(0, |q| q.jobs.len() + usize::from(q.busy))
    }

    /// The engine for reading (to answer, list, ask): the learner steps aside at its next
    /// gradient step and waits until the guard is dropped. Take one at a time per thread.
    pub fn read(&self) -> Result<LearnerReadGuard<'_>> {
        self.shared.readers.fetch_add(1, Ordering::SeqCst);
        let guard = LearnerReadGuard {
            guard: None,
            shared: &self.shared,
        };
        let engine = self.shared.engine.read();
        let mut guard = guard;
        guard.guard = Some(engine?);
        Ok(guard)
    }

    /// Waits until every queued job is done (each reported to `on_event`).
    pub fn wait_idle(&self) -> Result<()> {
        let mut q = self.shared.queue.lock().map_err(|_| stopped())?;
        while !q.jobs.is_empty() || q.busy {
            q = self.shared.changed.wait(q).map_err(|_| stopped())?;
        }
        Ok(())
    }

    /// Finishes the queued jobs and ends the worker.
    pub fn finish(mut self) -> Result<()> {
        self.stop_and_join()
    }

    fn stop_and_join(&mut self) -> Result<()> {
        if let Ok(mut q) = self.shared.queue.lock() {
            q.stop = true;
            self.shared.changed.notify_all();
        }
        match self.worker.take().map(JoinHandle::join) {
            Some(Err(_)) => Err(Error::Internal("the learner thread panicked".into())),
            _ => Ok(()),
        }
    }
}

impl Drop for BackgroundLearner {
    /// Statements already queued are still learned: the user was told they would be.
    fn drop(&mut self) {
        let _ = self.stop_and_join();
    }
}

fn stopped() -> Error {
    Error::Internal("the background learner has stopped".into())
}

/// The worker: takes jobs in order, each with the engine locked for writing only while no
/// reader wants it.
fn work(shared: &Shared, options: &LearnOptions, mut on_event: impl FnMut(LearnerEvent)) {
    loop {
        let job = {
            let Ok(mut q) = shared.queue.lock() else {
                return;
            };
            loop {
                if let Some(job) = q.jobs.pop_front() {
                    q.busy = true;
                    break job;
                }
                if q.stop {
                    return;
                }
                q = match shared.changed.wait(q) {
                    Ok(q) => q,
                    Err(_) => return,
                };
            }
        };
        let event = run_job(shared, options, &job);
        on_event(event);
        if let Ok(mut q) = shared.queue.lock() {
            q.busy = false;
            shared.changed.notify_all();
        }
    }
}

/// Runs one job to its end, stepping aside for readers (a statement stopped for one goes on
/// from the step where it stopped; an earlier fact it replaces is forgotten once).
fn run_job(shared: &Shared, options: &LearnOptions, job: &Job) -> LearnerEvent {
    let started = Instant::now();
    let mut yielded = 0;
    let mut replaced: Option<ForgetReport> = None;
    // What the statement's fact records as replaced (see `Engine::remember`).
    let mut earlier: Vec<String> = Vec::new();
    let mut replacement_checked = false;
    let what = match job {
        Job::Remember(t) | Job::Forget(t) => t.clone(),
    };
    let failed = |e: Error| LearnerEvent::Failed {
        what: what.clone(),
        error: e.to_string(),
    };
    loop {
        wait_for_no_readers(shared);
        let mut engine = match shared.engine.write() {
            Ok(e) => e,
            Err(e) => return failed(e),
        };
        let text = match job {
            Job::Forget(what) => {
                return match engine.forget_matching(what) {
                    Ok(r) => LearnerEvent::Forgot(r),
                    Err(e) => failed(e),
                };
            }
            Job::Remember(text) => text,
        };
        // What the statement replaces is forgotten once, before its first try.
        if !replacement_checked {
            replacement_checked = true;
            if let Some(uid) = engine.replaced_by(text) {
                match engine.forget_replaced(uid) {
                    Ok((r, texts)) => {
                        replaced = Some(r);
                        earlier = texts;
                    }
                    Err(e) => return failed(e),
                }
            }
        }
        let stepped_aside = Cell::new(false);
        let (readers, steps) = (&shared.readers, &shared.steps);
        let result =
            engine.learn_replacing(&[Fact::note(text)], &earlier, options, &mut |_, _, _| {
                steps.fetch_add(1, Ordering::SeqCst);
                let go_on = readers.load(Ordering::SeqCst) == 0;
                stepped_aside.set(!go_on);
                go_on
            });
        match result {
            Ok(_) => {
                let uid = engine.learned_facts().last().map_or(0, |f| f.uid);
                return LearnerEvent::Remembered {
                    text: text.clone(),
                    uid,
                    replaced,
                    seconds: started.elapsed().as_secs_f64(),
                    yielded,
                };
            }
            // Stopped for a reader: nothing of the fact is in the memory while the reader
            // reads; the learner's state keeps its steps, and the next try goes on from them.
            Err(Error::Interrupted(_)) if stepped_aside.get() => yielded += 1,
            Err(e) => return failed(e),
        }
    }
}

/// Blocks while a reader holds or wants the engine.
fn wait_for_no_readers(shared: &Shared) {
    let Ok(mut q) = shared.queue.lock() else {
        return;
    };
    while shared.readers.load(Ordering::SeqCst) > 0 {
        // Woken by a reader's drop; the timeout covers a wake-up lost between the load and
        // the wait.
        q = match shared.changed.wait_timeout(q, Duration::from_millis(50)) {
            Ok((q, _)) => q,
            Err(_) => return,
        };
    }
}
