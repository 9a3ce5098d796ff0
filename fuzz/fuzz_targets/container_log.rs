//! Workload logs `<run-dir>/workloads/<id>.log`: docker json-file records
//! as `logs` and `service logs` read them back (a torn line is skipped).
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(init: shoal_fuzz::seed_hook("container_log"), |data: &[u8]| {
    for line in String::from_utf8_lossy(data).lines() {
        if let Some(r) = shoal_runtime::logfile::Record::decode(line) {
            let _ = r.stamp();
        }
    }
});
