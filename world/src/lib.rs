//! spo-world: the embedded emoji world of spo-pipe's default pipeline.
//!
//! Twemoji artwork (embedded in the binary by `twemoji-assets`; CC-BY-4.0) composed onto small
//! canvases as checkable scenes ("two blue tangerines at the top, on a white background"),
//! with their prompts; renderers that get the layout or the details wrong in known ways; a
//! simulated annotator whose generic preferences blend prompt alignment and detail quality,
//! as Pick-a-Pic's do; and oracles that judge any image of the canvas size exactly.
//! Pure data: it knows no store, no Parquet and no model.
//!
//! For scoring generated images: rebuild the [`Atlas`] from the world's object list
//! ([`Atlas::from_emojis`]), read each prompt's scene with [`Scene::from_code`], then call
//! [`judge`] (or [`detail_quality`] and [`alignment`] one at a time).

pub mod annotate;
pub mod atlas;
pub mod colour;
pub mod oracle;
pub mod render;
pub mod scene;
pub mod world;

mod rng;

pub use annotate::{Annotator, LayoutError, RENDERERS, Renderer};
pub use atlas::{Atlas, ObjectClass};
pub use colour::Colour;
pub use oracle::{
    Alignment, DetailQuality, Judgement, Parse, alignment, detail_quality, grain,
    high_pass_distance, judge, parse, quality_from_high_pass,
};
pub use render::{Flaw, FlawKind, QualityMix, render, render_flawed};
pub use scene::{Entity, Geometry, Grammar, Layout, Position, Relation, Scene};
pub use world::{Disagreement, ImageRecord, PairRecord, PromptRecord, World, WorldConfig};

/// Why a world could not be built or an image not judged.
#[derive(Debug, thiserror::Error)]
pub enum WorldError {
    /// Parameters that cannot make a world.
    #[error("world config: {0}")]
    Config(String),
    /// An emoji the world does not know, or without artwork.
    #[error("unknown object `{0}`: not an emoji with Twemoji artwork")]
    UnknownObject(String),
    /// Embedded artwork that does not decode.
    #[error("emoji artwork {0}")]
    Artwork(String),
    /// An image that is not the world's canvas size.
    #[error("image is {width}x{height}, the world's canvas is {expected}x{expected}")]
    ImageSize {
        expected: u32,
        width: u32,
        height: u32,
    },
    /// A scene code that does not read back.
    #[error("scene code `{code}`: {message}")]
    SceneCode { code: String, message: String },
}
