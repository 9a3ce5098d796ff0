//! The daemon config file (TOML): `shoal::config::Config::parse`
//! (`toml::from_str`), then `Config::upstreams` on its DNS upstreams.
#![no_main]
use libfuzzer_sys::fuzz_target;
use shoal::config::Config;

fuzz_target!(init: shoal_fuzz::seed_hook("daemon_config"), |data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(c) = Config::parse(text, std::path::Path::new("fuzz.toml")) {
        // Empty upstreams read /etc/resolv.conf: not this input's bytes.
        if !c.dns_upstream.is_empty() {
            let _ = c.upstreams();
        }
    }
});
