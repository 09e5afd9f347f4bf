//! The set of stage kinds a pipeline may use.

use std::collections::BTreeMap;

use crate::param::ParamSpec;
use crate::stage::StageKind;

/// Stage kinds by name, with their param schemas cached.
pub struct Registry {
    kinds: BTreeMap<&'static str, (Box<dyn StageKind>, Vec<ParamSpec>)>,
}

impl Registry {
    /// A registry of the given kinds (a later kind with the same name replaces an earlier one).
    pub fn new(kinds: Vec<Box<dyn StageKind>>) -> Self {
        let kinds = kinds
            .into_iter()
            .map(|k| {
                (k.name(), {
                    let p = k.params();
                    (k, p)
                })
            })
            .collect();
        Registry { kinds }
    }
    /// The kind named `name`.
    pub fn get(&self, name: &str) -> Option<&dyn StageKind> {
        self.kinds.get(name).map(|(k, _)| k.as_ref())
    }
    /// The declared params of kind `name`.
    pub fn params(&self, name: &str) -> &[ParamSpec] {
        self.kinds.get(name).map_or(&[], |(_, p)| p.as_slice())
    }
    /// All kind names, sorted.
    pub fn names(&self) -> Vec<&'static str> {
        self.kinds.keys().copied().collect()
    }
    /// All kinds, sorted by name.
    pub fn iter(&self) -> impl Iterator<Item = &dyn StageKind> {
        self.kinds.values().map(|(k, _)| k.as_ref())
    }
}
