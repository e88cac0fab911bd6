//! The Internet checksum (RFC 1071) with the IPv6 pseudo-header (RFC 8200 §8.1).

use std::net::Ipv6Addr;

/// One's-complement sum of `data` as big-endian 16-bit words, not yet folded.
pub fn sum_bytes(data: &[u8]) -> u64 {
    let mut chunks = data.chunks_exact(2);
    let mut sum: u64 = chunks
        .by_ref()
        .map(|c| u64::from(u16::from_be_bytes([c[0], c[1]])))
        .sum();
    if let [last] = chunks.remainder() {
        sum += u64::from(*last) << 8;
    }
    sum
}

/// Unfolded sum of the IPv6 pseudo-header {src, dst, 32-bit length, zeros, next header}.
pub fn pseudo_header_sum(src: &Ipv6Addr, dst: &Ipv6Addr, length: u32, next_header: u8) -> u64 {
    sum_bytes(&src.octets())
        + sum_bytes(&dst.octets())
        + u64::from(length >> 16)
        + u64::from(length & 0xffff)
        + u64::from(next_header)
}

/// Folds a sum to 16 bits and complements it.
pub fn finish(mut sum: u64) -> u16 {
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// Checksum of an upper-layer message (its checksum field included as it is) with the
/// pseudo-header; a message whose checksum field is correct gives 0.
pub fn upper_layer_checksum(src: &Ipv6Addr, dst: &Ipv6Addr, next_header: u8, data: &[u8]) -> u16 {
    // Messages longer than 4 GiB do not exist on this path; saturate rather than wrap.
    let len = u32::try_from(data.len()).unwrap_or(u32::MAX);
    finish(pseudo_header_sum(src, dst, len, next_header) + sum_bytes(data))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc1071_example() {
        // RFC 1071 §3 example words 0001 f203 f4f5 f6f7 sum to ddf2.
        let data = [0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7];
        assert_eq!(finish(sum_bytes(&data)), !0xddf2);
    }

    #[test]
    fn odd_length_pads_with_zero() {
        assert_eq!(sum_bytes(&[0x12, 0x34, 0x56]), 0x1234 + 0x5600);
    }
}
