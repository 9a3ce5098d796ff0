//! The foca identity: who a member is, where to reach it, and which life
//! (generation) of it we are talking about.

use std::net::{IpAddr, SocketAddr};

use crate::types::MemberInfo;

/// A member's identity inside SWIM. Two identities with the same gossip
/// address are two lives of one node; the larger generation wins.
#[derive(Clone, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct Ident {
    /// Node id.
    pub node_id: String,
    /// Gossip address (UDP/TCP).
    pub gossip_addr: SocketAddr,
    /// Advertise address.
    pub advertise_addr: IpAddr,
    /// Data-path address.
    pub data_path_addr: IpAddr,
    /// Grows on restart (start time in ms) and on every rejoin.
    pub generation: u64,
}

impl Ident {
    /// An identity for `info` in its `generation`-th life.
    pub fn new(info: MemberInfo, generation: u64) -> Self {
        Ident {
            node_id: info.node_id,
            gossip_addr: info.gossip_addr,
            advertise_addr: info.advertise_addr,
            data_path_addr: info.data_path_addr,
            generation,
        }
    }

    /// A stand-in for a seed we only know by address: foca accepts an
    /// announce addressed to any identity with its own address.
    pub fn seed(addr: SocketAddr) -> Self {
        Ident {
            node_id: String::new(),
            gossip_addr: addr,
            advertise_addr: addr.ip(),
            data_path_addr: addr.ip(),
            generation: 0,
        }
    }

    /// The public view.
    pub fn info(&self) -> MemberInfo {
        MemberInfo {
            node_id: self.node_id.clone(),
            gossip_addr: self.gossip_addr,
            advertise_addr: self.advertise_addr,
            data_path_addr: self.data_path_addr,
        }
    }
}

impl foca::Identity for Ident {
    type Addr = SocketAddr;

    fn renew(&self) -> Option<Self> {
        Some(Ident {
            generation: self.generation.wrapping_add(1),
            ..self.clone()
        })
    }

    fn addr(&self) -> SocketAddr {
        self.gossip_addr
    }

    fn win_addr_conflict(&self, adversary: &Self) -> bool {
        self.generation > adversary.generation
    }
}
