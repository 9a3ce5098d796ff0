//! End-to-end and chaos tests for Shoal, run against real `shoal daemon`
//! processes in a `shoal-lab` of network-namespace hosts. The tests live in
//! `tests/`; this library holds the helpers they share.
