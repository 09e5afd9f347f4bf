//! The named colours of the world: background colours and object tints.

/// A named colour; prompts say its name, renders use its RGB value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Colour {
    Red,
    Orange,
    Yellow,
    Green,
    Blue,
    Purple,
    Pink,
    White,
    Gray,
    Black,
}

impl Colour {
    /// Every named colour.
    pub const ALL: [Colour; 10] = [
        Colour::Red,
        Colour::Orange,
        Colour::Yellow,
        Colour::Green,
        Colour::Blue,
        Colour::Purple,
        Colour::Pink,
        Colour::White,
        Colour::Gray,
        Colour::Black,
    ];
    /// Colours an object may be tinted with (chromatic, so the emoji's shading survives).
    pub const TINTS: [Colour; 7] = [
        Colour::Red,
        Colour::Orange,
        Colour::Yellow,
        Colour::Green,
        Colour::Blue,
        Colour::Purple,
        Colour::Pink,
    ];
    /// Colours a canvas background may have.
    pub const BACKGROUNDS: [Colour; 8] = [
        Colour::White,
        Colour::Gray,
        Colour::Black,
        Colour::Red,
        Colour::Green,
        Colour::Blue,
        Colour::Yellow,
        Colour::Pink,
    ];

    /// The word used in prompts.
    pub fn name(self) -> &'static str {
        match self {
            Colour::Red => "red",
            Colour::Orange => "orange",
            Colour::Yellow => "yellow",
            Colour::Green => "green",
            Colour::Blue => "blue",
            Colour::Purple => "purple",
            Colour::Pink => "pink",
            Colour::White => "white",
            Colour::Gray => "gray",
            Colour::Black => "black",
        }
    }

    /// The colour called `name`, if any.
    pub fn from_name(name: &str) -> Option<Colour> {
        Colour::ALL.into_iter().find(|c| c.name() == name)
    }

    /// The sRGB value, 0..=255 per channel.
    pub fn rgb(self) -> [u8; 3] {
        match self {
            Colour::Red => [214, 39, 40],
            Colour::Orange => [245, 135, 25],
            Colour::Yellow => [240, 208, 40],
            Colour::Green => [44, 160, 64],
            Colour::Blue => [36, 88, 214],
            Colour::Purple => [136, 58, 188],
            Colour::Pink => [240, 120, 180],
            Colour::White => [246, 246, 246],
            Colour::Gray => [128, 128, 128],
            Colour::Black => [22, 22, 22],
        }
    }

    /// The RGB value as floats in [0, 1].
    pub fn rgb_f32(self) -> [f32; 3] {
        self.rgb().map(|v| f32::from(v) / 255.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_are_distinct() {
        for c in Colour::ALL {
            assert_eq!(Colour::from_name(c.name()), Some(c));
        }
        let mut rgbs: Vec<_> = Colour::ALL.iter().map(|c| c.rgb()).collect();
        rgbs.sort();
        rgbs.dedup();
        assert_eq!(rgbs.len(), Colour::ALL.len());
        assert_eq!(Colour::from_name("mauve"), None);
    }
}
