//! Published ports: `--publish` as docker spells it, and the ports the
//! routing mesh allocates for those asked as 0.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::service::{Service, ServiceError, ServiceSpec};

/// `tcp` or `udp`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        })
    }
}

/// Where a published port is open.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PublishMode {
    /// Routing mesh: on every node, balanced over all tasks.
    Ingress,
    /// Only on the nodes running a task, to that task.
    Host,
}

impl fmt::Display for PublishMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PublishMode::Ingress => "ingress",
            PublishMode::Host => "host",
        })
    }
}

/// One `--publish`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortConfig {
    /// Protocol.
    pub protocol: Protocol,
    /// Port inside the task.
    pub target: u16,
    /// Port on the nodes.
    pub published: u16,
    /// Ingress (routing mesh) or host.
    pub mode: PublishMode,
}

impl fmt::Display for PortConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "*:{}->{}/{}", self.published, self.target, self.protocol)?;
        if self.mode == PublishMode::Host {
            f.write_str(" (host)")?;
        }
        Ok(())
    }
}

impl FromStr for PortConfig {
    type Err = String;
    /// Docker's two syntaxes: `8080:80[/udp]` and
    /// `published=8080,target=80[,protocol=udp][,mode=host]`.
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = |why: &str| format!("invalid publish {s:?}: {why}");
        let port = |v: &str, what: &str| -> Result<u16, String> {
            match v.parse::<u16>() {
                Ok(p) if p > 0 => Ok(p),
                _ => Err(bad(&format!(
                    "{what} port {v:?} is not a number in 1-65535"
                ))),
            }
        };
        let proto = |v: &str| match v {
            "tcp" => Ok(Protocol::Tcp),
            "udp" => Ok(Protocol::Udp),
            _ => Err(bad(&format!("protocol {v:?}: expected tcp or udp"))),
        };
        if s.contains('=') {
            let (mut published, mut target) = (None, None);
            let (mut protocol, mut mode) = (Protocol::Tcp, PublishMode::Ingress);
            for kv in s.split(',') {
                let (k, v) = kv
                    .split_once('=')
                    .ok_or_else(|| bad(&format!("{kv:?} is not key=value")))?;
                match k {
                    "published" => published = Some(port(v, "published")?),
                    "target" => target = Some(port(v, "target")?),
                    "protocol" => protocol = proto(v)?,
                    "mode" => {
                        mode = match v {
                            "ingress" => PublishMode::Ingress,
                            "host" => PublishMode::Host,
                            _ => return Err(bad(&format!("mode {v:?}: expected ingress or host"))),
                        }
                    }
                    _ => return Err(bad(&format!("unknown key {k:?}"))),
                }
            }
            let target = target.ok_or_else(|| bad("target= is required"))?;
            let published = published.ok_or_else(|| bad("published= is required"))?;
            return Ok(PortConfig {
                protocol,
                target,
                published,
                mode,
            });
        }
        let (ports, protocol) = match s.split_once('/') {
            Some((p, pr)) => (p, proto(pr)?),
            None => (s, Protocol::Tcp),
        };
        let (published, target) = ports
            .split_once(':')
            .ok_or_else(|| bad("expected PUBLISHED:TARGET[/PROTOCOL]"))?;
        Ok(PortConfig {
            protocol,
            target: port(target, "target")?,
            published: port(published, "published")?,
            mode: PublishMode::Ingress,
        })
    }
}

/// Where docker allocates a published port that was asked as 0.
pub const DYNAMIC_PORTS: std::ops::RangeInclusive<u16> = 30000..=32767;

/// Give every port published as 0 the lowest free port of
/// [`DYNAMIC_PORTS`] (free for its protocol across all services), as
/// docker's routing mesh does.
pub(crate) fn allocate_published(
    services: &BTreeMap<String, Service>,
    spec: &mut ServiceSpec,
    own_id: Option<&str>,
) -> Result<(), ServiceError> {
    for i in 0..spec.ports.len() {
        if spec.ports[i].published != 0 {
            continue;
        }
        let proto = spec.ports[i].protocol;
        let used = |port: u16| {
            spec.ports
                .iter()
                .any(|q| q.published == port && q.protocol == proto)
                || services
                    .values()
                    .filter(|s| Some(s.id.as_str()) != own_id)
                    .any(|s| {
                        s.spec
                            .ports
                            .iter()
                            .any(|q| q.published == port && q.protocol == proto)
                    })
        };
        let port = DYNAMIC_PORTS
            .clone()
            .find(|p| !used(*p))
            .ok_or(ServiceError::NoFreePort(proto))?;
        spec.ports[i].published = port;
    }
    Ok(())
}
