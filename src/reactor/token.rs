//! io_uring user_data encoding: (kind, connection index, generation, slot) packed into 64
//! bits, so a completion finds its request without a lookup table, and a completion for a
//! connection that has since been replaced is recognised by its stale generation.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Kind {
    Accept = 1,
    Recv = 2,
    Send = 3,
    Bdev = 4,
    Wakeup = 5,
    Tick = 6,
    /// A member I/O of a composite device: conn = device index, aux = child tag.
    Child = 7,
    /// A completion nobody waits for (e.g. a delay linked before an I/O).
    Ignore = 8,
}

impl Kind {
    fn from_bits(b: u64) -> Option<Kind> {
        Some(match b {
            1 => Kind::Accept,
            2 => Kind::Recv,
            3 => Kind::Send,
            4 => Kind::Bdev,
            5 => Kind::Wakeup,
            6 => Kind::Tick,
            7 => Kind::Child,
            8 => Kind::Ignore,
            _ => return None,
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Token {
    pub kind: Kind,
    pub conn: u16,
    pub generation: u16,
    /// Request slot, listener index, or 0.
    pub aux: u32,
}

const AUX_BITS: u32 = 28;
/// A `Kind::Child` token carries a 44-bit tag in place of (generation, aux).
pub const CHILD_TAG_BITS: u32 = 44;

impl Token {
    pub fn new(kind: Kind, conn: u16, generation: u16, aux: u32) -> Token {
        debug_assert!(aux < 1 << AUX_BITS);
        Token {
            kind,
            conn,
            generation,
            aux,
        }
    }

    pub fn encode(self) -> u64 {
        (self.kind as u64) << 60
            | (self.conn as u64) << 44
            | (self.generation as u64) << AUX_BITS
            | self.aux as u64
    }

    /// The token of a composite device's child operation: channel `index`, `tag`.
    pub fn child(index: u16, tag: u64) -> u64 {
        debug_assert!(tag < 1 << CHILD_TAG_BITS);
        (Kind::Child as u64) << 60 | (index as u64) << 44 | tag
    }

    /// The 44-bit tag of a `Kind::Child` token.
    pub fn child_tag(&self) -> u64 {
        (self.generation as u64) << AUX_BITS | self.aux as u64
    }

    pub fn decode(v: u64) -> Option<Token> {
        Some(Token {
            kind: Kind::from_bits(v >> 60)?,
            conn: (v >> 44) as u16,
            generation: (v >> AUX_BITS) as u16,
            aux: (v & ((1 << AUX_BITS) - 1)) as u32,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        for kind in [
            Kind::Accept,
            Kind::Recv,
            Kind::Send,
            Kind::Bdev,
            Kind::Wakeup,
            Kind::Tick,
            Kind::Child,
            Kind::Ignore,
        ] {
            let t = Token::new(kind, 65535, 65535, (1 << 28) - 1);
            assert_eq!(Token::decode(t.encode()), Some(t));
        }
        assert_eq!(Token::decode(0), None);
    }
}
