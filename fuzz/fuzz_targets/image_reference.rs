//! Image references: `shoal_runtime::parse_reference` (docker's grammar)
//! on what `service create`, `run`, `image pull` and stored specs name.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(init: shoal_fuzz::seed_hook("image_reference"), |data: &[u8]| {
    if let Ok(s) = std::str::from_utf8(data) {
        if let Ok(r) = shoal_runtime::parse_reference(s) {
            // What parses normalises to itself.
            let whole = r.whole();
            let again = shoal_runtime::parse_reference(&whole).map(|r| r.whole());
            assert_eq!(again.ok().as_deref(), Some(whole.as_str()), "{s:?}");
        }
    }
});
