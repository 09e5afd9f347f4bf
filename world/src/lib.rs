//! spo-world: the embedded emoji world.
