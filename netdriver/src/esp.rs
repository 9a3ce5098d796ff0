//! Whether this kernel can do IPsec ESP with AES-GCM, the transform kernel
//! encrypted overlays would need: an SA is added and deleted for real in a
//! scratch network namespace (util-linux `unshare --net`, iproute2 `ip
//! xfrm`), so the answer is the kernel's own, reason included, and not a
//! guess from loaded modules. Shoal's encrypted overlays use the
//! userspace data path either way; this is reported, not acted on.

use std::process::Command;

/// `Ok` when an `rfc4106(gcm(aes))` ESP SA can be installed; else the
/// kernel's (or the tools') reason, e.g. "Requested AEAD algorithm not
/// found".
pub fn probe_esp() -> Result<(), String> {
    let key = format!("0x{}", "42".repeat(36)); // 256-bit key + 32-bit salt
    let script = format!(
        "ip xfrm state add src 192.0.2.1 dst 192.0.2.2 proto esp spi 0x5e1 reqid 1 \
         mode transport aead 'rfc4106(gcm(aes))' {key} 128 && \
         ip xfrm state delete src 192.0.2.1 dst 192.0.2.2 proto esp spi 0x5e1"
    );
    let out = Command::new("unshare")
        .args(["--net", "sh", "-c", &script])
        .output()
        .map_err(|e| format!("cannot run unshare: {e}"))?;
    if out.status.success() {
        return Ok(());
    }
    let reason = String::from_utf8_lossy(&out.stderr).trim().to_string();
    Err(if reason.is_empty() {
        format!("ip xfrm state add failed ({})", out.status)
    } else {
        reason
    })
}
