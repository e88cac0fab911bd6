//! Mobile IPv6 signaling (RFC 6275 route optimization, RFC 4285 authentication): a sans-IO
//! protocol core and a thin IO shell, in the mobile-node, correspondent-node and home-agent
//! roles. The crate is a placeholder until its issue lands; see `../shared/DESIGN.md` §1 and §5.
