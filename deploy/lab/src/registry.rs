//! Every lab this process started and has not cleaned yet, so a Ctrl-C
//! (SIGINT), SIGTERM or SIGHUP of the process cleans them all before it
//! exits with status 130. Drop handles the ordinary and the panicking
//! paths; this handles the ones where destructors never run.

use std::sync::{Arc, Mutex, Once, PoisonError, Weak};

use crate::lab::Inner;

static LIVE: Mutex<Vec<Weak<Mutex<Inner>>>> = Mutex::new(Vec::new());

pub(crate) fn register(lab: &Arc<Mutex<Inner>>) {
    install_handler();
    LIVE.lock()
        .unwrap_or_else(PoisonError::into_inner)
        .push(Arc::downgrade(lab));
}

pub(crate) fn unregister(lab: &Arc<Mutex<Inner>>) {
    LIVE.lock()
        .unwrap_or_else(PoisonError::into_inner)
        .retain(|w| w.strong_count() > 0 && !std::ptr::eq(w.as_ptr(), Arc::as_ptr(lab)));
}

fn install_handler() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        if let Err(e) = ctrlc::set_handler(on_signal) {
            eprintln!("shoal-lab: no Ctrl-C cleanup ({e}); labs are still removed when dropped");
        }
    });
}

fn on_signal() {
    let labs: Vec<Arc<Mutex<Inner>>> = LIVE
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .iter()
        .filter_map(Weak::upgrade)
        .collect();
    if !labs.is_empty() {
        eprintln!("shoal-lab: interrupted, removing {} lab(s)", labs.len());
    }
    for lab in labs {
        let problems = lab.lock().unwrap_or_else(PoisonError::into_inner).cleanup();
        for p in problems {
            eprintln!("shoal-lab: cleanup: {p}");
        }
    }
    std::process::exit(130);
}
