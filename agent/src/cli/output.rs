//! How the CLI shows what the daemon answered: tables in Docker's column
//! formats, JSON, and the line writer every output goes through.

/// `println!` for the CLI's output: a closed stdout (`shoal info | grep -q
/// active`, `| head -1`) ends the command quietly with exit code 0, as
/// `ls | head` does, instead of a panic.
macro_rules! outln {
    ($($arg:tt)*) => {
        $crate::cli::output::write_line(format_args!($($arg)*))
    };
}

use serde::Serialize;
use shoal_api::{NodeInfo, NodeRow, Response, ServiceRow, VersionInfo};
use shoal_model::service::{PortConfig, Task};

use super::Format;

/// Write one line to stdout (see [`outln!`]).
pub(crate) fn write_line(args: std::fmt::Arguments<'_>) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    if let Err(e) = out.write_fmt(args).and_then(|()| out.write_all(b"\n")) {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(0);
        }
        eprintln!("Error: cannot write the output: {e}");
        std::process::exit(1);
    }
}

/// `2/3`-style replica column.
pub(super) fn replicas_column(r: &ServiceRow) -> String {
    format!("{}/{}", r.running, r.desired)
}

/// `*:8080->80/tcp` list.
pub fn ports_column(ports: &[PortConfig]) -> String {
    ports
        .iter()
        .map(|p| p.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// Docker's "Running 5 seconds ago", with `(healthy)` or `(unhealthy)`
/// for a task whose health check passed or failed.
pub fn state_column(t: &Task, now_ms: u64) -> String {
    let ago = now_ms.saturating_sub(t.updated_at) / 1000;
    let when = match ago {
        0..=1 => "about a second ago".to_string(),
        2..=59 => format!("{ago} seconds ago"),
        60..=3599 => format!("{} minutes ago", ago / 60),
        _ => format!("{} hours ago", ago / 3600),
    };
    if t.is_pending() {
        return format!("pending {when}");
    }
    use shoal_model::health::{MSG_HEALTHY, MSG_UNHEALTHY};
    let health = match t.message.as_str() {
        MSG_HEALTHY => " (healthy)",
        m if m.starts_with(MSG_UNHEALTHY) => " (unhealthy)",
        _ => "",
    };
    format!("{} {}{health}", t.state, when)
}

pub(super) fn print_response(format: Format, resp: Response, quiet: bool) {
    match (format, resp) {
        (Format::Json, Response::Message(m)) => print_json(&serde_json::json!({ "message": m })),
        (Format::Json, Response::Token { token, .. }) => {
            print_json(&serde_json::json!({ "token": token }))
        }
        (Format::Json, Response::Nodes(rows)) => print_json(&rows),
        (Format::Json, Response::Members(m)) => print_json(&m),
        (Format::Json, Response::Images(i)) => print_json(&i),
        (Format::Table, Response::Images(i)) => print_table(
            &["REPOSITORY", "TAG", "IMAGE ID", "CREATED", "SIZE"],
            i.iter()
                .map(|i| {
                    vec![
                        i.repository.clone(),
                        i.tag.clone(),
                        i.id.trim_start_matches("sha256:")
                            .chars()
                            .take(12)
                            .collect(),
                        i.created.clone().unwrap_or_else(|| "N/A".into()),
                        human_size(i.size),
                    ]
                })
                .collect(),
        ),
        (Format::Json, Response::Workloads(w)) => print_json(&w),
        (Format::Table, Response::Workloads(w)) => print_table(
            &[
                "ID", "NAME", "IMAGE", "STATE", "NETWORK", "IP", "PID", "COMMAND",
            ],
            w.iter()
                .map(|w| {
                    vec![
                        w.id.chars().take(12).collect(),
                        w.name.clone(),
                        w.image.clone().unwrap_or_else(|| "(host)".into()),
                        w.state.clone(),
                        w.attachments
                            .iter()
                            .map(|a| a.network.name.as_str())
                            .collect::<Vec<_>>()
                            .join(","),
                        w.attachments
                            .iter()
                            .map(|a| a.endpoint.ip.to_string())
                            .collect::<Vec<_>>()
                            .join(","),
                        w.pid.to_string(),
                        w.argv.join(" "),
                    ]
                })
                .collect(),
        ),
        (Format::Json, Response::Entries(e)) => print_json(&e),
        (Format::Json, Response::Metrics(m)) => print_json(&m),
        (Format::Table, Response::Members(m)) => print_table(
            &[
                "NODE ID",
                "GOSSIP ADDRESS",
                "DATA PATH",
                "STATE",
                "INCARNATION",
            ],
            m.iter()
                .map(|v| {
                    vec![
                        v.info.node_id.clone(),
                        v.info.gossip_addr.to_string(),
                        v.info.data_path_addr.to_string(),
                        format!("{:?}", v.state).to_lowercase(),
                        v.incarnation.to_string(),
                    ]
                })
                .collect(),
        ),
        (Format::Table, Response::Entries(e)) => print_table(
            &["TABLE", "KEY", "OWNER", "VERSION", "VALUE"],
            e.iter()
                .map(|x| {
                    vec![
                        x.table.clone(),
                        x.key.clone(),
                        x.owner.clone(),
                        x.version.to_string(),
                        x.value.clone(),
                    ]
                })
                .collect(),
        ),
        (Format::Json, other) => print_json(&other),
        (Format::Table, Response::Message(m)) => outln!("{}", m.trim_end()),
        (Format::Table, Response::Token { token, message }) => {
            if quiet {
                outln!("{token}");
            } else {
                outln!("{}", message.trim_end());
            }
        }
        (Format::Table, Response::Nodes(rows)) => print_nodes(&rows),
        (Format::Table, other) => print_json(&other),
    }
}

pub(super) fn print_nodes(rows: &[NodeRow]) {
    print_table(
        &[
            "ID",
            "HOSTNAME",
            "STATUS",
            "AVAILABILITY",
            "MANAGER STATUS",
            "GOSSIP",
        ],
        rows.iter()
            .map(|r| {
                vec![
                    format!("{}{}", r.node.id, if r.is_self { " *" } else { "" }),
                    r.node.hostname.clone(),
                    r.node.status.to_string(),
                    r.node.availability.to_string(),
                    r.manager_status.clone(),
                    r.gossip.clone(),
                ]
            })
            .collect(),
    );
}

/// Print aligned columns, docker style (three spaces between columns).
/// Docker's image sizes: `1.23MB` (decimal units).
/// How long ago unix ms `at` was, as docker words it (`5 minutes ago`).
pub(super) fn ago(at: u64) -> String {
    let s = shoal_model::now_ms().saturating_sub(at) / 1000;
    let (m, h, d) = (s / 60, s / 3600, s / 86400);
    let text = match s {
        0 => "Less than a second".to_string(),
        1..=59 => format!("{s} seconds"),
        60..=119 => "About a minute".into(),
        120..=3599 => format!("{m} minutes"),
        3600..=7199 => "About an hour".into(),
        7200..=172_799 => format!("{h} hours"),
        172_800..=1_209_599 => format!("{d} days"),
        _ => format!("{} weeks", d / 7),
    };
    format!("{text} ago")
}

fn human_size(bytes: u64) -> String {
    let b = bytes as f64;
    match bytes {
        0..1_000 => format!("{bytes}B"),
        1_000..1_000_000 => format!("{:.3}kB", b / 1e3),
        1_000_000..1_000_000_000 => format!("{:.3}MB", b / 1e6),
        _ => format!("{:.3}GB", b / 1e9),
    }
}

pub(super) fn print_table(header: &[&str], rows: Vec<Vec<String>>) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in &rows {
        for (w, v) in widths.iter_mut().zip(r) {
            *w = (*w).max(v.len());
        }
    }
    let line = |cells: Vec<&str>| {
        let mut s = String::new();
        for (i, (v, w)) in cells.iter().zip(&widths).enumerate() {
            if i + 1 == cells.len() {
                s.push_str(v);
            } else {
                s.push_str(&format!("{v:<w$}   ", w = *w));
            }
        }
        outln!("{}", s.trim_end());
    };
    line(header.to_vec());
    for r in &rows {
        line(r.iter().map(String::as_str).collect());
    }
}

pub(super) fn print_json<T: Serialize>(v: &T) {
    match serde_json::to_string_pretty(v) {
        Ok(s) => outln!("{s}"),
        Err(e) => eprintln!("Error: cannot encode output: {e}"),
    }
}

pub(super) fn print_version(v: &VersionInfo) {
    outln!(" Version:      {}", v.version);
    outln!(" API version:  {}", v.protocol);
    outln!(" OS/Arch:      {}", v.os_arch);
}

pub(super) fn print_info(i: &NodeInfo) {
    outln!("Node ID:        {}", i.node_id);
    outln!("Hostname:       {}", i.hostname);
    outln!("Addresses:      {}", i.addresses.join(", "));
    outln!("Data dir:       {}", i.data_dir);
    outln!("Daemon version: {}", i.daemon_version);
    outln!("Swarm:          {}", i.swarm.state);
    if let Some(c) = &i.swarm.cluster_id {
        outln!(" Cluster ID:    {c}");
    }
    if let Some(r) = &i.swarm.role {
        outln!(" Role:          {r}");
    }
    if let Some(a) = &i.swarm.node_addr {
        outln!(" Node Address:  {a}");
    }
    if let Some(a) = &i.swarm.data_path_addr {
        outln!(" Data Path:     {a}");
    }
    if !i.swarm.managers.is_empty() {
        outln!(" Managers:      {}", i.swarm.managers.join(", "));
    }
    if let Some(r) = &i.swarm.raft {
        outln!(
            " Raft:          id {} term {} leader {} commit {} applied {} ({} of {} managers reachable)",
            r.id,
            r.term,
            r.leader.map(|l| l.to_string()).unwrap_or_else(|| "none".into()),
            r.commit,
            r.applied,
            r.reachable,
            r.voters
        );
    }
}
