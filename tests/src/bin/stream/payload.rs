//! A seeded byte pattern both ends know, and a digest of what arrived.

/// xorshift64*: every byte of a transfer is known to both ends from (seed, offset).
pub struct Pattern(u64);

impl Pattern {
    pub fn new(seed: u64) -> Self {
        Self(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    pub fn fill(&mut self, buf: &mut [u8]) {
        for b in buf {
            *b = (self.next() >> 56) as u8;
        }
    }

    pub fn bytes(seed: u64, n: usize) -> Vec<u8> {
        let mut v = vec![0; n];
        Self::new(seed).fill(&mut v);
        v
    }
}

/// FNV-1a over a byte stream, and its length.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Digest {
    pub count: u64,
    pub hash: u64,
}

impl Digest {
    pub fn new() -> Self {
        Self {
            count: 0,
            hash: 0xcbf2_9ce4_8422_2325,
        }
    }

    pub fn update(&mut self, data: &[u8]) {
        for b in data {
            self.hash = (self.hash ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3);
        }
        self.count += data.len() as u64;
    }

    pub fn of(data: &[u8]) -> Self {
        let mut d = Self::new();
        d.update(data);
        d
    }
}
