//! Return-routability and RFC 4285 cryptography: keygen tokens, Kbm, the Binding
//! Authorization Data authenticator, the MN-HA authenticator, and a keyed generator for
//! nonces and cookies.

use std::net::Ipv6Addr;

use hmac::digest::KeyInit;
use hmac::digest::generic_array::GenericArray;
use hmac::{Hmac, Mac};
use sha1::{Digest, Sha1};

/// The correspondent's secret Kcn (RFC 6275 §5.2.1: 20 octets).
pub type Kcn = [u8; 20];
/// A correspondent nonce (RFC 6275 leaves the size to the implementation; 64 bits here).
pub type Nonce = [u8; 8];
/// A home or care-of keygen token.
pub type KeygenToken = [u8; 8];
/// A home or care-of init cookie.
pub type Cookie = [u8; 8];
/// The binding management key Kbm.
pub type Kbm = [u8; 20];
/// A 96-bit authenticator.
pub type Authenticator = [u8; 12];

/// SHA-1 block size: HMAC keys up to this length are zero-padded, longer ones hashed.
const BLOCK: usize = 64;

/// HMAC_SHA1 over the concatenation of `parts`.
///
/// Builds the key block itself (RFC 2104 §2) so that no fallible constructor is involved.
pub fn hmac_sha1(key: &[u8], parts: &[&[u8]]) -> [u8; 20] {
    let mut block = [0u8; BLOCK];
    if key.len() > BLOCK {
        block[..20].copy_from_slice(&Sha1::digest(key));
    } else {
        block[..key.len()].copy_from_slice(key);
    }
    let mut mac = <Hmac<Sha1> as KeyInit>::new(GenericArray::from_slice(&block));
    for p in parts {
        mac.update(p);
    }
    mac.finalize().into_bytes().into()
}

/// home keygen token = First (64, HMAC_SHA1 (Kcn, (home address | nonce | 0))).
pub fn home_keygen_token(kcn: &Kcn, home_address: &Ipv6Addr, nonce: &Nonce) -> KeygenToken {
    first8(&hmac_sha1(kcn, &[&home_address.octets(), nonce, &[0]]))
}

/// care-of keygen token = First (64, HMAC_SHA1 (Kcn, (care-of address | nonce | 1))).
pub fn care_of_keygen_token(kcn: &Kcn, care_of_address: &Ipv6Addr, nonce: &Nonce) -> KeygenToken {
    first8(&hmac_sha1(kcn, &[&care_of_address.octets(), nonce, &[1]]))
}

/// Kbm = SHA1 (home keygen token | care-of keygen token), or SHA1 (home keygen token) for a
/// deregistration with the care-of address equal to the home address (RFC 6275 §5.2.5).
pub fn binding_management_key(home: &KeygenToken, care_of: Option<&KeygenToken>) -> Kbm {
    let mut h = Sha1::new();
    h.update(home);
    if let Some(c) = care_of {
        h.update(c);
    }
    h.finalize().into()
}

/// Authenticator = First (96, HMAC_SHA1 (Kbm, (care-of address | correspondent | MH Data))),
/// where MH Data is the BU or BA with a zero checksum, up to the authenticator itself.
pub fn binding_authenticator(
    kbm: &Kbm,
    care_of_address: &Ipv6Addr,
    correspondent: &Ipv6Addr,
    mh_data: &[u8],
) -> Authenticator {
    first12(&hmac_sha1(
        kbm,
        &[&care_of_address.octets(), &correspondent.octets(), mh_data],
    ))
}

/// RFC 4285 §5.1: Authenticator = First (96, HMAC_SHA1 (MN-HA key, Mobility Data)) with
/// Mobility Data = care-of address | home address | MH Data (checksum zero, up to and including
/// the SPI).
pub fn mn_ha_authenticator(
    key: &[u8],
    care_of_address: &Ipv6Addr,
    home_address: &Ipv6Addr,
    mh_data: &[u8],
) -> Authenticator {
    first12(&hmac_sha1(
        key,
        &[&care_of_address.octets(), &home_address.octets(), mh_data],
    ))
}

/// The bytes a trailing authenticator covers: the header with the checksum zeroed, without
/// its last `authenticator_len` bytes. `None` if the header is too short.
pub fn authenticated_data(mh: &[u8], authenticator_len: usize) -> Option<Vec<u8>> {
    let end = mh.len().checked_sub(authenticator_len)?;
    if end < 6 {
        return None;
    }
    let mut data = mh[..end].to_vec();
    data[4] = 0;
    data[5] = 0;
    Some(data)
}

/// Signs a Binding Update or Acknowledgement in place: `mh` ends with a Binding Authorization
/// Data option whose 12-byte authenticator is overwritten. Returns `false` if `mh` is too short.
pub fn sign_binding_message(
    mh: &mut [u8],
    kbm: &Kbm,
    care_of_address: &Ipv6Addr,
    correspondent: &Ipv6Addr,
) -> bool {
    let Some(data) = authenticated_data(mh, 12) else {
        return false;
    };
    let a = binding_authenticator(kbm, care_of_address, correspondent, &data);
    let n = mh.len();
    mh[n - 12..].copy_from_slice(&a);
    true
}

/// Signs a home registration in place with the MN-HA option, which ends the header.
pub fn sign_mn_ha(
    mh: &mut [u8],
    key: &[u8],
    care_of_address: &Ipv6Addr,
    home_address: &Ipv6Addr,
) -> bool {
    let Some(data) = authenticated_data(mh, 12) else {
        return false;
    };
    let a = mn_ha_authenticator(key, care_of_address, home_address, &data);
    let n = mh.len();
    mh[n - 12..].copy_from_slice(&a);
    true
}

/// Compares two byte strings in time independent of where they differ.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// A keyed generator of unpredictable 64-bit values (nonces, cookies, initial sequence
/// numbers): HMAC_SHA1(seed, counter). The IO shell seeds it from the OS; tests seed it with a
/// constant so that runs are reproducible. Outputs are unpredictable to anyone without the seed,
/// which is what nonces and cookies need (RFC 6275 §5.2.2, §15.4).
#[derive(Clone)]
pub struct SecretStream {
    seed: [u8; 32],
    counter: u64,
}

impl core::fmt::Debug for SecretStream {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        // Never print the seed.
        f.debug_struct("SecretStream")
            .field("counter", &self.counter)
            .finish_non_exhaustive()
    }
}

impl SecretStream {
    /// A generator keyed with `seed`.
    pub fn new(seed: [u8; 32]) -> Self {
        SecretStream { seed, counter: 0 }
    }

    /// The next 8 unpredictable bytes.
    pub fn next_bytes8(&mut self) -> [u8; 8] {
        self.counter = self.counter.wrapping_add(1);
        first8(&hmac_sha1(&self.seed, &[&self.counter.to_be_bytes()]))
    }

    /// The next unpredictable u16.
    pub fn next_u16(&mut self) -> u16 {
        let b = self.next_bytes8();
        u16::from_be_bytes([b[0], b[1]])
    }
}

fn first8(d: &[u8; 20]) -> [u8; 8] {
    let mut o = [0u8; 8];
    o.copy_from_slice(&d[..8]);
    o
}

fn first12(d: &[u8; 20]) -> [u8; 12] {
    let mut o = [0u8; 12];
    o.copy_from_slice(&d[..12]);
    o
}

#[cfg(test)]
mod tests {
    //! The shared vectors (`shared/reference/mipv6-vectors.txt`), byte for byte.
    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }
    fn arr<const N: usize>(s: &str) -> [u8; N] {
        hex(s).try_into().unwrap()
    }

    const KCN: &str = "00112233445566778899aabbccddeeff00112233";

    fn addrs() -> (Ipv6Addr, Ipv6Addr, Ipv6Addr) {
        (
            "2001:db8:1::100".parse().unwrap(),
            "2001:db8:2::5".parse().unwrap(),
            "2001:db8:3::7".parse().unwrap(),
        )
    }

    #[test]
    fn vector_tokens_and_kbm() {
        let (hoa, coa, _) = addrs();
        let kcn: Kcn = arr(KCN);
        let ht = home_keygen_token(&kcn, &hoa, &arr("123456789abcdef0"));
        let ct = care_of_keygen_token(&kcn, &coa, &arr("bcdef1234567890a"));
        assert_eq!(ht, arr::<8>("9b3568582d56e39d"));
        assert_eq!(ct, arr::<8>("17e9fb2bd6a28a30"));
        assert_eq!(
            binding_management_key(&ht, Some(&ct)),
            arr::<20>("8f9304b85ac68b0a90125d11a59cf49f9ed9d93d")
        );
        assert_eq!(
            binding_management_key(&ht, None),
            arr::<20>("a2961ebb9c6204e1306645969251bd79d1d4d459")
        );
    }

    #[test]
    fn vector_bu_and_ba_authenticators() {
        let (_, coa, cn) = addrs();
        let kbm: Kbm = arr("8f9304b85ac68b0a90125d11a59cf49f9ed9d93d");
        let bu = hex("3b0305000000123480000069040400030004050c");
        assert_eq!(
            binding_authenticator(&kbm, &coa, &cn, &bu),
            arr::<12>("7d480ba7d5b2e182898eafc2")
        );
        // Signing in place ignores whatever the checksum field holds.
        let mut signed = hex("3b0305004dad123480000069040400030004050c");
        signed.extend_from_slice(&[0; 12]);
        assert!(sign_binding_message(&mut signed, &kbm, &coa, &cn));
        assert_eq!(&signed[20..], &hex("7d480ba7d5b2e182898eafc2")[..]);
        let ba = hex("3b0306000000000012340069010400000000050c");
        assert_eq!(
            binding_authenticator(&kbm, &coa, &cn, &ba),
            arr::<12>("81c4d803fa4c2d49c77d0e07")
        );
    }

    #[test]
    fn hmac_matches_rfc2202() {
        // RFC 2202 test case 1 and test case 6 (key longer than the block size).
        assert_eq!(
            hmac_sha1(&[0x0b; 20], &[b"Hi There"]).to_vec(),
            hex("b617318655057264e28bc0b6fb378c8ef146be00")
        );
        assert_eq!(
            hmac_sha1(
                &[0xaa; 80],
                &[b"Test Using Larger Than Block-Size Key - Hash Key First"]
            )
            .to_vec(),
            hex("aa4ae5e15272d00e95705637ce8a3b55ed402112")
        );
    }

    #[test]
    fn secret_stream_is_deterministic_per_seed() {
        let mut a = SecretStream::new([1; 32]);
        let mut b = SecretStream::new([1; 32]);
        let mut c = SecretStream::new([2; 32]);
        let x = a.next_bytes8();
        assert_eq!(x, b.next_bytes8());
        assert_ne!(x, c.next_bytes8());
        assert_ne!(x, a.next_bytes8());
        assert!(constant_time_eq(&[1, 2], &[1, 2]));
        assert!(!constant_time_eq(&[1, 2], &[1, 3]));
        assert!(!constant_time_eq(&[1, 2], &[1]));
    }
}
