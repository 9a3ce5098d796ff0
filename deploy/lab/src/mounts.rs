//! Mount points under a lab's directory. A daemon (or a test) may
//! bind-mount namespace files or directories under its run dir; deleting
//! the lab directory must unmount those first, or the delete would fail
//! (nsfs files) or reach through a bind mount into someone else's files.

use std::fs;
use std::path::{Path, PathBuf};

/// Undoes the octal escapes of /proc/self/mountinfo (`\040` is a space).
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let octal = b
            .get(i + 1..i + 4)
            .filter(|d| b[i] == b'\\' && d.iter().all(|c| (b'0'..=b'7').contains(c)));
        match octal {
            Some(d) => {
                let v = d.iter().fold(0u32, |acc, c| acc * 8 + u32::from(c - b'0'));
                out.push(u8::try_from(v).unwrap_or(b'?'));
                i += 4;
            }
            None => {
                out.push(b[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Mount points in `mountinfo` text at or below `dir`, deepest first.
pub(crate) fn mounts_under(mountinfo: &str, dir: &Path) -> Vec<PathBuf> {
    let mut found: Vec<PathBuf> = mountinfo
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|mp| PathBuf::from(unescape(mp)))
        .filter(|mp| mp.starts_with(dir))
        .collect();
    found.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    found.dedup();
    found
}

/// Detaches every mount at or below `dir` in this mount namespace.
pub(crate) fn unmount_under(dir: &Path) -> Vec<String> {
    let Ok(info) = fs::read_to_string("/proc/self/mountinfo") else {
        return Vec::new();
    };
    mounts_under(&info, dir)
        .into_iter()
        .filter_map(|mp| {
            nix::mount::umount2(&mp, nix::mount::MntFlags::MNT_DETACH)
                .err()
                .map(|e| format!("unmounting {}: {e}", mp.display()))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_mounts_below_the_lab_dir_only() {
        let info = "\
22 1 0:21 / / rw - ext4 /dev/sda rw
30 22 0:4 net:[4026532] /run/shoal-lab/slabc123/h1/run/netns/ov1 rw - nsfs nsfs rw
31 22 0:4 / /run/shoal-lab/slabc123/h1/a\\040b rw - tmpfs tmpfs rw
32 22 0:4 / /run/shoal-lab/slabc1234 rw - tmpfs tmpfs rw
33 22 0:4 / /run/shoal-lab/slabc123 rw - tmpfs tmpfs rw
";
        let got = mounts_under(info, Path::new("/run/shoal-lab/slabc123"));
        assert_eq!(
            got,
            vec![
                PathBuf::from("/run/shoal-lab/slabc123/h1/run/netns/ov1"),
                PathBuf::from("/run/shoal-lab/slabc123/h1/a b"),
                PathBuf::from("/run/shoal-lab/slabc123"),
            ]
        );
        assert!(mounts_under("", Path::new("/x")).is_empty());
        assert!(mounts_under("garbage\n1 2\n", Path::new("/x")).is_empty());
    }

    #[test]
    fn unescapes_octal() {
        assert_eq!(unescape("a\\040b\\134c"), "a b\\c");
        assert_eq!(unescape("trailing\\04"), "trailing\\04");
    }
}
