//! Seeded random streams: every item of the world draws from its own ChaCha stream, derived
//! from the world seed, the kind of item and its index, so that the world is the same
//! whatever order (or thread) builds it in.

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

/// What a stream is for; part of its derivation so streams never collide.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Stream {
    Atlas = 1,
    Prompts = 2,
    Render = 3,
    Annotate = 4,
    Training = 5,
}

/// The stream for item `index` of kind `stream` in the world seeded with `seed`.
pub(crate) fn stream(seed: u64, stream: Stream, index: u64) -> ChaCha8Rng {
    let mut rng = ChaCha8Rng::seed_from_u64(splitmix(
        splitmix(seed) ^ (stream as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15),
    ));
    rng.set_stream(index);
    rng
}

fn splitmix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}
