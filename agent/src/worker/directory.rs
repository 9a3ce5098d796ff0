//! The service directory as a task sees it (from the leader's service
//! views): the VIP rules of its namespace, and the names its embedded DNS
//! answers (`web`, `tasks.web`).

use std::net::Ipv4Addr;
use std::sync::RwLock;

use shoal_api::Workload;
use shoal_model::service::EndpointMode;
use shoal_netdriver::nft::VipRule;

use crate::proto::session::ServiceView;

/// VIP rules for a task: every VIP service on a network the task is on.
pub(super) fn vip_rules(w: &Workload, services: &[ServiceView]) -> Vec<VipRule> {
    let mut out = Vec::new();
    for a in &w.attachments {
        for s in services
            .iter()
            .filter(|s| s.endpoint_mode == EndpointMode::Vip)
        {
            if let Some(vip) = s.vips.get(&a.network.id) {
                out.push(VipRule {
                    vip: *vip,
                    backends: s
                        .backends
                        .iter()
                        .filter(|(n, _)| *n == a.network.id)
                        .map(|(_, ip)| *ip)
                        .collect(),
                });
            }
        }
    }
    out
}

/// Names a task on `nets` can resolve: `<service>` (VIP, or the task
/// addresses with dnsrr) and `tasks.<service>`, for services sharing one
/// of its networks, and a service's aliases on the networks they are set
/// on. `None`: not ours, forward it.
pub(super) fn lookup(
    dir: &RwLock<Vec<ServiceView>>,
    nets: &[String],
    name: &str,
) -> Option<Vec<Ipv4Addr>> {
    let dir = dir.read().ok()?;
    let (tasks, svc) = match name.strip_prefix("tasks.") {
        Some(s) => (true, s),
        None => (false, name),
    };
    let aliased = |s: &&ServiceView| {
        nets.iter()
            .any(|n| s.aliases.get(n).is_some_and(|a| a.iter().any(|a| a == svc)))
    };
    let (s, alias) = match dir.iter().find(|s| s.name == svc) {
        Some(s) => (s, false),
        None => (dir.iter().find(aliased)?, true),
    };
    let shared: Vec<&String> = nets
        .iter()
        .filter(|n| s.vips.contains_key(*n) || s.backends.iter().any(|(bn, _)| bn == *n))
        // An alias names the service only on the networks it is set on.
        .filter(|n| {
            !alias
                || s.aliases
                    .get(*n)
                    .is_some_and(|a| a.iter().any(|a| a == svc))
        })
        .collect();
    let on_shared = |ips: &mut Vec<Ipv4Addr>| {
        for (n, ip) in &s.backends {
            if shared.contains(&n) && !ips.contains(ip) {
                ips.push(*ip);
            }
        }
    };
    let mut ips = Vec::new();
    if shared.is_empty() {
        // A service on none of this task's networks is not visible.
        return None;
    }
    if tasks || s.endpoint_mode == EndpointMode::Dnsrr {
        on_shared(&mut ips);
    } else if let Some(vip) = nets.iter().find_map(|n| s.vips.get(n)) {
        ips.push(*vip);
    }
    Some(ips)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn view(name: &str, mode: EndpointMode) -> ServiceView {
        ServiceView {
            id: format!("id-{name}"),
            name: name.into(),
            endpoint_mode: mode,
            vips: if mode == EndpointMode::Vip {
                [("n1".to_string(), Ipv4Addr::new(10, 0, 1, 2))].into()
            } else {
                BTreeMap::new()
            },
            ports: vec![],
            backends: vec![
                ("n1".into(), Ipv4Addr::new(10, 0, 1, 3)),
                ("n1".into(), Ipv4Addr::new(10, 0, 1, 4)),
            ],
            aliases: BTreeMap::new(),
        }
    }

    #[test]
    fn names_vip_dnsrr_tasks_and_visibility() {
        let dir = RwLock::new(vec![
            view("web", EndpointMode::Vip),
            view("db", EndpointMode::Dnsrr),
        ]);
        let on = vec!["n1".to_string()];
        assert_eq!(
            lookup(&dir, &on, "web"),
            Some(vec![Ipv4Addr::new(10, 0, 1, 2)])
        );
        assert_eq!(lookup(&dir, &on, "tasks.web").map(|v| v.len()), Some(2));
        assert_eq!(lookup(&dir, &on, "db").map(|v| v.len()), Some(2));
        assert_eq!(lookup(&dir, &on, "example.com"), None);
        // Not on a shared network: not visible.
        assert_eq!(lookup(&dir, &["n2".to_string()], "web"), None);
    }

    #[test]
    fn aliases_name_a_service_on_their_network_only() {
        let mut web = view("app_web", EndpointMode::Vip);
        web.vips.insert("n2".into(), Ipv4Addr::new(10, 0, 2, 2));
        web.aliases.insert("n1".into(), vec!["web".into()]);
        let dir = RwLock::new(vec![web]);
        let vip = Some(vec![Ipv4Addr::new(10, 0, 1, 2)]);
        assert_eq!(lookup(&dir, &["n1".to_string()], "web"), vip);
        assert_eq!(lookup(&dir, &["n1".to_string()], "app_web"), vip);
        assert_eq!(lookup(&dir, &["n2".to_string()], "web"), None);
        assert_eq!(
            lookup(&dir, &["n2".to_string()], "app_web"),
            Some(vec![Ipv4Addr::new(10, 0, 2, 2)])
        );
    }
}
