//! shoal agent library
