//! Lower-case hex encoding and decoding, the ten lines we need instead of a dependency.

/// Encodes bytes as lower-case hex.
pub(crate) fn encode(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for &b in bytes {
        out.push(DIGITS[usize::from(b >> 4)] as char);
        out.push(DIGITS[usize::from(b & 0xf)] as char);
    }
    out
}

/// Decodes exactly `N` bytes of lower-case hex; anything else (upper case, wrong length) is `None`
/// so that every value has exactly one spelling.
pub(crate) fn decode<const N: usize>(text: &str) -> Option<[u8; N]> {
    fn nibble(c: u8) -> Option<u8> {
        match c {
            b'0'..=b'9' => Some(c - b'0'),
            b'a'..=b'f' => Some(c - b'a' + 10),
            _ => None,
        }
    }
    let text = text.as_bytes();
    if text.len() != N * 2 {
        return None;
    }
    let mut out = [0u8; N];
    for (i, pair) in text.chunks_exact(2).enumerate() {
        out[i] = nibble(pair[0])? << 4 | nibble(pair[1])?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_rejects_other_spellings() {
        let cases: &[(&str, Option<[u8; 2]>)] = &[
            ("00ff", Some([0x00, 0xff])),
            ("a1b2", Some([0xa1, 0xb2])),
            ("A1B2", None),
            ("a1b", None),
            ("a1b2c3", None),
            ("zz00", None),
            ("", None),
        ];
        for (text, expected) in cases {
            assert_eq!(decode::<2>(text), *expected, "decoding {text:?}");
            if let Some(bytes) = expected {
                assert_eq!(encode(bytes), *text);
            }
        }
    }
}
