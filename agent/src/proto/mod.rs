//! The typed messages between nodes and managers, and the one door a node
//! uses to call a manager ([`rpc::NodeRpc`]): in process on a manager,
//! over TCP 2377 on a worker. `manager/` and `worker/` both speak these
//! types and never import each other.

pub mod gossip;
pub mod rpc;
pub mod session;
