//! The Shoal network driver: turns the networks assigned to this node and the
//! gossiped endpoint tables into kernel state through rtnetlink (per-network
//! namespace with a bridge and a VXLAN device, static FDB and neighbour
//! entries), with a planner that diffs desired against kernel state and a
//! driver that applies the plan.
