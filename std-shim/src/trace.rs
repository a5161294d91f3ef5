//! A timeline of a training run, per thread, for a trace viewer
//! (Perfetto, `chrome://tracing`): set `FIXNN_TRACE=FILE.json` and
//! `fixnn train` writes every span it recorded there when it ends.
//!
//! Spans: the phases of each training step (`batch`, `forward`, `loss`,
//! `backward`, `sgd`) and each block of steps (`block pool` or `block
//! one`, see the pace in `train`) on the training thread; every product of
//! the rayon backend on the thread that called it (`linear forward`,
//! `conv weight grad`, ...); and on every thread, the pieces of work a
//! split product or element pass ran there (`int8 pack A`, `int8 rows`,
//! `f32 rows`, `core pass`, ...). Times are microseconds from the first
//! span.
//!
//! Off (the variable unset), a span costs one relaxed atomic load. On,
//! two clock reads and an uncontended lock per span; an MNIST MLP epoch
//! and its test pass record about 41,000 spans (3 MB of JSON), and traced
//! epochs took as long as untraced ones within this host's noise (3 pairs,
//! 0.19-0.23 s).

use std::cell::RefCell;
use std::io::Write;
use std::path::Path;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Instant;

/// One recorded span.
#[derive(Clone, Copy, Debug)]
struct Event {
    name: &'static str,
    start: f64,
    dur: f64,
}

/// A thread's spans, shared with the registry that writes them out.
type Spans = Arc<Mutex<Vec<Event>>>;

/// 0: not decided yet, 1: off, 2: on.
static STATE: AtomicU8 = AtomicU8::new(0);
static EPOCH: OnceLock<Instant> = OnceLock::new();
/// Every thread's spans: its name and its buffer.
static THREADS: Mutex<Vec<(String, Spans)>> = Mutex::new(Vec::new());

thread_local! {
    static MINE: RefCell<Option<Spans>> = const { RefCell::new(None) };
}

/// Whether spans are recorded (`FIXNN_TRACE` is set and not empty).
#[inline]
pub fn enabled() -> bool {
    match STATE.load(Ordering::Relaxed) {
        2 => true,
        1 => false,
        _ => {
            let on = std::env::var_os("FIXNN_TRACE").is_some_and(|v| !v.is_empty());
            STATE.store(if on { 2 } else { 1 }, Ordering::Relaxed);
            on
        }
    }
}

/// A span being timed; recorded when dropped.
#[derive(Debug)]
#[must_use = "a span is recorded when it is dropped"]
pub struct Span {
    name: &'static str,
    start: Instant,
}

/// Starts timing `name` on this thread (`None` when tracing is off).
#[inline]
pub fn span(name: &'static str) -> Option<Span> {
    enabled().then(|| {
        let start = Instant::now();
        // Time 0: the start of the first span, whichever ends first.
        EPOCH.get_or_init(|| start);
        Span { name, start }
    })
}

impl Drop for Span {
    fn drop(&mut self) {
        let end = Instant::now();
        let epoch = *EPOCH.get_or_init(|| self.start); // set by `span`
        let us = |t: Instant| t.saturating_duration_since(epoch).as_secs_f64() * 1e6;
        let e = Event {
            name: self.name,
            start: us(self.start),
            dur: end.saturating_duration_since(self.start).as_secs_f64() * 1e6,
        };
        // Never panics, even while the thread unwinds or ends.
        let _ = MINE.try_with(|m| {
            let mut m = m.borrow_mut();
            let spans = m.get_or_insert_with(|| {
                let spans = Spans::default();
                let name = std::thread::current().name().map_or_else(
                    || format!("{:?}", std::thread::current().id()),
                    String::from,
                );
                if let Ok(mut all) = THREADS.lock() {
                    all.push((name, Arc::clone(&spans)));
                }
                spans
            });
            if let Ok(mut v) = spans.lock() {
                v.push(e);
            };
        });
    }
}

/// Writes every span recorded so far to `path` as a trace-event JSON file
/// (one complete event per span, one track per thread) and forgets them.
///
/// # Errors
///
/// The file could not be written.
pub fn write(path: &Path) -> Result<(), String> {
    let threads = THREADS.lock().map(|t| t.clone()).unwrap_or_default();
    let mut out = String::from("{\"traceEvents\":[");
    let mut first = true;
    for (tid, (name, spans)) in threads.iter().enumerate() {
        let events = spans
            .lock()
            .map(|mut v| std::mem::take(&mut *v))
            .unwrap_or_default();
        let meta = serde_json::json!({
            "name": "thread_name", "ph": "M", "pid": 1, "tid": tid,
            "args": { "name": name },
        });
        out.push_str(if first { "" } else { "," });
        first = false;
        out.push_str(&meta.to_string());
        for e in events {
            out.push_str(&format!(
                ",{{\"name\":\"{}\",\"ph\":\"X\",\"pid\":1,\"tid\":{tid},\"ts\":{:.3},\"dur\":{:.3}}}",
                e.name, e.start, e.dur
            ));
        }
    }
    out.push_str("]}");
    let mut f = std::fs::File::create(path)
        .map_err(|e| format!("cannot write the trace {}: {e}", path.display()))?;
    f.write_all(out.as_bytes())
        .map_err(|e| format!("cannot write the trace {}: {e}", path.display()))
}

/// Writes the spans to the file `FIXNN_TRACE` names, if it is set.
///
/// # Errors
///
/// As [`write`].
pub fn write_if_enabled() -> Result<Option<std::path::PathBuf>, String> {
    if !enabled() {
        return Ok(None);
    }
    let Some(path) = std::env::var_os("FIXNN_TRACE") else {
        return Ok(None);
    };
    let path = std::path::PathBuf::from(path);
    write(&path)?;
    Ok(Some(path))
}
