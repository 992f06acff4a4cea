//! The peer's HTTP/3 SETTINGS, surfaced once per connection when they arrive.

/// SETTINGS_QPACK_MAX_TABLE_CAPACITY (RFC 9204 §5).
pub const SETTINGS_QPACK_MAX_TABLE_CAPACITY: u64 = 0x01;
/// SETTINGS_MAX_FIELD_SECTION_SIZE (RFC 9114 §7.2.4.1).
pub const SETTINGS_MAX_FIELD_SECTION_SIZE: u64 = 0x06;
/// SETTINGS_QPACK_BLOCKED_STREAMS (RFC 9204 §5).
pub const SETTINGS_QPACK_BLOCKED_STREAMS: u64 = 0x07;
/// SETTINGS_ENABLE_CONNECT_PROTOCOL (RFC 9220).
pub const SETTINGS_ENABLE_CONNECT_PROTOCOL: u64 = 0x08;
/// SETTINGS_H3_DATAGRAM (RFC 9297).
pub const SETTINGS_H3_DATAGRAM: u64 = 0x33;

/// The SETTINGS frame the peer sent: every identifier and value, in the order received
/// (unknown and GREASE identifiers included), with accessors for the known ones.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PeerSettings {
    /// Every (identifier, value) pair.
    pub raw: Vec<(u64, u64)>,
}

impl PeerSettings {
    /// The value of `id`, if the peer sent it.
    pub fn get(&self, id: u64) -> Option<u64> {
        self.raw.iter().find(|(k, _)| *k == id).map(|(_, v)| *v)
    }

    /// The largest header section the peer accepts; `None` = unlimited.
    pub fn max_field_section_size(&self) -> Option<u64> {
        self.get(SETTINGS_MAX_FIELD_SECTION_SIZE)
    }

    /// The peer's QPACK dynamic table capacity (0 when absent).
    pub fn qpack_max_table_capacity(&self) -> u64 {
        self.get(SETTINGS_QPACK_MAX_TABLE_CAPACITY).unwrap_or(0)
    }

    /// How many streams the peer lets block on QPACK (0 when absent).
    pub fn qpack_blocked_streams(&self) -> u64 {
        self.get(SETTINGS_QPACK_BLOCKED_STREAMS).unwrap_or(0)
    }

    /// Whether the peer accepts extended CONNECT.
    pub fn enable_connect_protocol(&self) -> bool {
        self.get(SETTINGS_ENABLE_CONNECT_PROTOCOL) == Some(1)
    }

    /// Whether the peer accepts HTTP Datagrams.
    pub fn h3_datagram(&self) -> bool {
        self.get(SETTINGS_H3_DATAGRAM) == Some(1)
    }
}
