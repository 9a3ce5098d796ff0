//! The typed value of the per-network endpoint tables (`ep/<network id>`),
//! the first user of the replicated tables: the netdriver turns each record
//! into an FDB entry (mac -> vtep) and a neighbour entry (ip -> mac).

use std::net::Ipv4Addr;

/// One container endpoint on an overlay network.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct EndpointRecord {
    /// Network id (the table is `ep/<network>`).
    pub network: String,
    /// The endpoint's overlay IPv4 address.
    pub ip: Ipv4Addr,
    /// The endpoint's MAC address.
    pub mac: [u8; 6],
    /// Data-path address of the host holding the endpoint.
    pub vtep: Ipv4Addr,
    /// Node id of that host.
    pub owner: String,
}

/// Why a record could not be decoded.
#[derive(Debug, thiserror::Error)]
#[error("endpoint record: {0}")]
pub struct RecordError(#[from] postcard::Error);

impl EndpointRecord {
    /// Table name holding the endpoints of `network`.
    pub fn table(network: &str) -> String {
        format!("ep/{network}")
    }

    /// Compact postcard encoding for [`crate::Gossip::put`].
    pub fn encode(&self) -> Vec<u8> {
        postcard::to_allocvec(self).unwrap_or_default()
    }

    /// Decodes an entry value; never panics on hostile bytes.
    pub fn decode(bytes: &[u8]) -> Result<Self, RecordError> {
        Ok(postcard::from_bytes(bytes)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_garbage() {
        let r = EndpointRecord {
            network: "n1".into(),
            ip: Ipv4Addr::new(10, 0, 9, 2),
            mac: [2, 0x42, 10, 0, 9, 2],
            vtep: Ipv4Addr::new(192, 168, 1, 5),
            owner: "node-1".into(),
        };
        let b = r.encode();
        assert!(b.len() < 40);
        assert_eq!(EndpointRecord::decode(&b).unwrap(), r);
        for i in 0..b.len() {
            let _ = EndpointRecord::decode(&b[..i]);
        }
        assert!(EndpointRecord::decode(&[0xff; 20]).is_err());
    }
}
