//! Engine API routes of nodes (`/nodes`), networks (`/networks`) and image
//! digests (`/distribution`).

use std::collections::BTreeMap;

use hyper::StatusCode;
use serde_json::{json, Value};
use shoal_api::engine::convert::{node_to_docker, rfc3339, NetRef, Nets};
use shoal_api::engine::gojson::{self, any_match, labels_match};
use shoal_api::engine::types as d;
use shoal_api::{NodeRow, Request, Response};
use shoal_model::network::NetworkSpec;
use shoal_model::state::Availability;
use shoal_model::Role;

use super::system::{require_manager, unexpected};
use super::{ask, empty, json as reply, ok, Answer, Call, Failure};
use crate::daemon::Daemon;

async fn node_rows(d: &Daemon, req: Request) -> Result<Vec<NodeRow>, Failure> {
    match ask(d, req).await? {
        Response::Nodes(rows) => Ok(rows),
        other => Err(unexpected(&other)),
    }
}

async fn trust_root(d: &Daemon) -> Result<String, Failure> {
    match ask(d, Request::SwarmInspect).await? {
        Response::Swarm(s) => Ok(s.ca_cert_pem),
        other => Err(unexpected(&other)),
    }
}

/// `GET /nodes[?filters=]`.
pub async fn node_list(d: &Daemon, c: &Call) -> Answer {
    require_manager(d).await?;
    let f = c.filters()?;
    gojson::check_filters(
        &f,
        &["id", "name", "label", "role", "membership", "node.label"],
    )
    .map_err(Failure::bad)?;
    let root = trust_root(d).await?;
    let nodes: Vec<d::Node> = node_rows(d, Request::NodeList)
        .await?
        .iter()
        .filter(|r| {
            let n = &r.node;
            any_match(f.get("id"), |v| n.id.as_str().starts_with(v))
                && any_match(f.get("name"), |v| n.hostname.starts_with(v))
                && any_match(f.get("role"), |v| v == n.role.to_string())
                && any_match(f.get("membership"), |v| v == "accepted")
                && labels_match(&r.labels, f.get("node.label"))
                // Engine labels: Shoal's nodes have none.
                && f.get("label").is_none_or(|l| l.is_empty())
        })
        .map(|r| node_to_docker(r, &root))
        .collect();
    ok(&nodes)
}

async fn one_node(d: &Daemon, id: &str) -> Result<NodeRow, Failure> {
    node_rows(d, Request::NodeInspect { node: id.into() })
        .await?
        .into_iter()
        .next()
        .ok_or_else(|| Failure::not_found(format!("node {id} not found")))
}

/// `GET /nodes/{id}`.
pub async fn node_inspect(d: &Daemon, id: &str) -> Answer {
    require_manager(d).await?;
    let row = one_node(d, id).await?;
    ok(&node_to_docker(&row, &trust_root(d).await?))
}

/// `POST /nodes/{id}/update?version=N` with the whole `NodeSpec`: the
/// availability, labels and role that differ are changed.
pub async fn node_update(d: &Daemon, c: &Call, id: &str) -> Answer {
    require_manager(d).await?;
    let spec: d::NodeSpec = c.decode()?;
    let version = c.version()?;
    let row = one_node(d, id).await?;
    let n = &row.node;
    if version != n.version {
        return Err(Failure::bad(format!(
            "update out of sequence: node {} is at version {}, not {version}",
            n.id, n.version
        )));
    }
    let availability = match spec.availability.as_str() {
        "" => None,
        a => Some(a.parse::<Availability>().map_err(Failure::bad)?),
    }
    .filter(|a| *a != n.availability);
    let role = match spec.role.as_str() {
        "" => None,
        "worker" => Some(Role::Worker),
        "manager" => Some(Role::Manager),
        r => {
            return Err(Failure::bad(format!(
                "invalid role {r:?}: expected worker or manager"
            )))
        }
    }
    .filter(|r| *r != n.role);
    let label_rm: Vec<String> = row
        .labels
        .keys()
        .filter(|k| !spec.labels.contains_key(*k))
        .cloned()
        .collect();
    let label_add: BTreeMap<String, String> = spec
        .labels
        .iter()
        .filter(|(k, v)| row.labels.get(*k) != Some(v))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    if availability.is_some() || !label_add.is_empty() || !label_rm.is_empty() {
        ask(
            d,
            Request::NodeUpdate {
                node: n.id.to_string(),
                availability,
                label_add,
                label_rm,
            },
        )
        .await?;
    }
    if let Some(role) = role {
        ask(
            d,
            Request::NodeSetRole {
                nodes: vec![n.id.to_string()],
                role,
            },
        )
        .await?;
    }
    empty(StatusCode::OK)
}

/// `DELETE /nodes/{id}[?force=1]`.
pub async fn node_remove(d: &Daemon, c: &Call, id: &str) -> Answer {
    require_manager(d).await?;
    ask(
        d,
        Request::NodeRemove {
            nodes: vec![id.into()],
            force: c.flag("force"),
        },
    )
    .await?;
    empty(StatusCode::OK)
}

// --- networks -------------------------------------------------------------

/// Shoal's network document with what Docker's has besides.
fn docker_network(mut doc: Value) -> Value {
    if let Some(ms) = doc["Created"].as_u64() {
        doc["Created"] = rfc3339(ms).into();
    }
    doc["EnableIPv4"] = true.into();
    doc["EnableIPv6"] = false.into();
    doc["ConfigFrom"] = json!({"Network": ""});
    doc["ConfigOnly"] = false.into();
    doc["IPAM"]["Options"] = json!({});
    // Shoal's own section, only where there is something to say.
    if let Some(o) = doc.as_object_mut() {
        if o.get("Encryption").is_some_and(Value::is_null) {
            o.remove("Encryption");
        }
    }
    doc
}

async fn network_docs(d: &Daemon, req: Request) -> Result<Vec<Value>, Failure> {
    match ask(d, req).await? {
        // Swarm networks only: the node's local shoal_gwbridge is not
        // the Engine API's business here.
        Response::Networks(docs) => Ok(docs
            .into_iter()
            .filter(|d| d["Scope"] != "local")
            .map(docker_network)
            .collect()),
        other => Err(unexpected(&other)),
    }
}

/// The swarm's networks by id, as the service and task renderers need
/// them.
pub async fn nets(d: &Daemon) -> Result<Nets, Failure> {
    let docs = network_docs(d, Request::NetworkList).await?;
    Ok(docs
        .iter()
        .map(|n| {
            let s = |k: &str| n[k].as_str().unwrap_or_default().to_string();
            let prefix = n["IPAM"]["Config"][0]["Subnet"]
                .as_str()
                .and_then(|s| s.rsplit_once('/'))
                .and_then(|(_, p)| p.parse().ok())
                .unwrap_or(32);
            let r = NetRef {
                id: s("Id"),
                name: s("Name"),
                prefix,
                labels: serde_json::from_value(n["Labels"].clone()).unwrap_or_default(),
                ingress: n["Ingress"].as_bool().unwrap_or(false),
                attachable: n["Attachable"].as_bool().unwrap_or(false),
                internal: n["Internal"].as_bool().unwrap_or(false),
            };
            (r.id.clone(), r)
        })
        .collect())
}

/// `GET /networks[?filters=]`.
pub async fn network_list(d: &Daemon, c: &Call) -> Answer {
    require_manager(d).await?;
    let f = c.filters()?;
    gojson::check_filters(
        &f,
        &["driver", "id", "label", "name", "scope", "type", "dangling"],
    )
    .map_err(Failure::bad)?;
    let docs: Vec<Value> = network_docs(d, Request::NetworkList)
        .await?
        .into_iter()
        .filter(|n| {
            let s = |k: &str| n[k].as_str().unwrap_or_default().to_string();
            let labels: BTreeMap<String, String> =
                serde_json::from_value(n["Labels"].clone()).unwrap_or_default();
            let unused = n["Containers"].as_object().is_none_or(|c| c.is_empty());
            any_match(f.get("driver"), |v| v == s("Driver"))
                && any_match(f.get("id"), |v| s("Id").starts_with(v))
                && any_match(f.get("name"), |v| s("Name").contains(v))
                && any_match(f.get("scope"), |v| v == "swarm")
                && any_match(f.get("type"), |v| v == "custom")
                && any_match(f.get("dangling"), |v| gojson::bool_value(v) == unused)
                && labels_match(&labels, f.get("label"))
        })
        .collect();
    ok(&docs)
}

/// `GET /networks/{id}[?scope=&verbose=]`: swarm networks only, so
/// `scope=local` finds none.
pub async fn network_inspect(d: &Daemon, c: &Call, id: &str) -> Answer {
    require_manager(d).await?;
    if c.query.get("scope").is_some_and(|s| s == "local") {
        return Err(Failure::not_found(format!("network {id} not found")));
    }
    let docs = network_docs(
        d,
        Request::NetworkInspect {
            networks: vec![id.into()],
            verbose: c.flag("verbose"),
        },
    )
    .await?;
    match docs.into_iter().next() {
        Some(doc) => ok(&doc),
        None => Err(Failure::not_found(format!("network {id} not found"))),
    }
}

/// Driver options an overlay network takes.
const OVERLAY_OPTIONS: &[&str] = &[
    "encrypted",
    "com.docker.network.driver.mtu",
    "com.docker.network.driver.overlay.vxlanid_list",
];

/// `POST /networks/create`: overlay networks (answer 201 `{Id, Warning}`).
pub async fn network_create(d: &Daemon, c: &Call) -> Answer {
    require_manager(d).await?;
    let r: d::NetworkCreate = c.decode()?;
    if !matches!(r.driver.as_str(), "" | "overlay") {
        return Err(Failure::bad(format!(
            "network driver {:?} is not supported by Shoal: only overlay networks (scope swarm)",
            r.driver
        )));
    }
    if !matches!(r.scope.as_str(), "" | "swarm") {
        return Err(Failure::bad(format!(
            "scope {:?} is not supported by Shoal: overlay networks have scope swarm",
            r.scope
        )));
    }
    if r.enable_ipv6 == Some(true) {
        return Err(Failure::bad(
            "IPv6 overlay networks are not supported by Shoal",
        ));
    }
    if r.config_only {
        return Err(Failure::bad(
            "config-only networks are not supported by Shoal",
        ));
    }
    if let Some(k) = r
        .options
        .keys()
        .find(|k| !OVERLAY_OPTIONS.contains(&k.as_str()))
    {
        return Err(Failure::bad(format!(
            "option {k:?} is not supported by the overlay driver (supported: {})",
            OVERLAY_OPTIONS.join(", ")
        )));
    }
    let ipam = r.ipam.unwrap_or_default();
    if !matches!(ipam.driver.as_str(), "" | "default") {
        return Err(Failure::bad(format!(
            "IPAM driver {:?} is not supported by Shoal (only default)",
            ipam.driver
        )));
    }
    if ipam.config.len() > 1 {
        return Err(Failure::bad(
            "an overlay network takes one IPAM config (one IPv4 subnet) in Shoal",
        ));
    }
    let cfg = ipam.config.into_iter().next().unwrap_or_default();
    if !cfg.ip_range.is_empty() {
        return Err(Failure::bad("IPAM IPRange is not supported by Shoal"));
    }
    let parse_err = |what: &str, v: &str| Failure::bad(format!("invalid {what} {v:?}"));
    let mtu = match r.options.get("com.docker.network.driver.mtu") {
        None => None,
        Some(m) => Some(m.parse().map_err(|_| parse_err("mtu", m))?),
    };
    let spec = NetworkSpec {
        id: String::new(),
        name: r.name,
        subnet: match cfg.subnet.as_str() {
            "" => None,
            s => Some(s.parse().map_err(|_| parse_err("subnet", s))?),
        },
        gateway: match cfg.gateway.as_str() {
            "" => None,
            g => Some(g.parse().map_err(|_| parse_err("gateway", g))?),
        },
        attachable: r.attachable,
        ingress: r.ingress,
        internal: r.internal,
        encrypted: r.options.contains_key("encrypted"),
        mtu,
        labels: r.labels,
    };
    match ask(d, Request::NetworkCreate(spec)).await? {
        Response::Message(id) => reply(StatusCode::CREATED, &json!({"Id": id, "Warning": ""})),
        other => Err(unexpected(&other)),
    }
}

/// `DELETE /networks/{id}` (204).
pub async fn network_remove(d: &Daemon, id: &str) -> Answer {
    require_manager(d).await?;
    ask(
        d,
        Request::NetworkRemove {
            networks: vec![id.into()],
        },
    )
    .await?;
    empty(StatusCode::NO_CONTENT)
}

/// `GET /distribution/{name}/json`: the digest the registry names now
/// (404 with the reason when it cannot be asked; the CLI then warns and
/// goes on without pinning).
pub async fn distribution(d: &Daemon, name: &str) -> Answer {
    let pinned = match ask(
        d,
        Request::ImageResolve {
            reference: name.into(),
        },
    )
    .await?
    {
        Response::Message(p) => p,
        other => return Err(unexpected(&other)),
    };
    let digest = pinned.rsplit_once('@').map_or("", |(_, dg)| dg);
    ok(&json!({
        "Descriptor": {"mediaType": "", "digest": digest, "size": 0},
        "Platforms": [{"architecture": super::system::go_arch(), "os": "linux"}],
    }))
}
