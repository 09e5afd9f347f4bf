//! A map from names to values held as one vector sorted by name: a stage's few params, or a
//! sweep cell's overrides, in one allocation of exactly their size, where a `BTreeMap` takes a
//! 632-byte node even for one entry (and a 200,000-cell sweep holds a few maps per cell).
//! Lookups are binary searches; iteration is in name order, as a `BTreeMap`'s, and so is the
//! serialised form (a map), so encodings and files are unchanged.

use std::fmt;
use std::marker::PhantomData;

use serde::de::{MapAccess, Visitor};
use serde::ser::SerializeMap;

/// Names to values, in name order, one entry per name.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct NameMap<V>(Vec<(String, V)>);

impl<V> Default for NameMap<V> {
    fn default() -> Self {
        NameMap(Vec::new())
    }
}

impl<V> NameMap<V> {
    pub const fn new() -> Self {
        NameMap(Vec::new())
    }

    /// An empty map with room for `n` entries.
    pub fn with_capacity(n: usize) -> Self {
        NameMap(Vec::with_capacity(n))
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    fn find(&self, name: &str) -> Result<usize, usize> {
        self.0.binary_search_by(|(k, _)| k.as_str().cmp(name))
    }

    pub fn get(&self, name: &str) -> Option<&V> {
        self.find(name).ok().map(|i| &self.0[i].1)
    }

    pub fn contains_key(&self, name: &str) -> bool {
        self.find(name).is_ok()
    }

    /// Sets `name` to `value`; the value it replaces, if any.
    pub fn insert(&mut self, name: String, value: V) -> Option<V> {
        match self.find(&name) {
            Ok(i) => Some(std::mem::replace(&mut self.0[i].1, value)),
            Err(i) => {
                self.0.insert(i, (name, value));
                None
            }
        }
    }

    /// Takes `name` out; its value, if it had one.
    pub fn remove(&mut self, name: &str) -> Option<V> {
        self.find(name).ok().map(|i| self.0.remove(i).1)
    }

    /// The value of `name`, inserting the default first if there is none.
    pub fn get_or_default(&mut self, name: &str) -> &mut V
    where
        V: Default,
    {
        let i = match self.find(name) {
            Ok(i) => i,
            Err(i) => {
                self.0.insert(i, (name.to_owned(), V::default()));
                i
            }
        };
        &mut self.0[i].1
    }

    pub fn clear(&mut self) {
        self.0.clear();
    }

    /// Gives back the room that inserts left spare.
    pub fn shrink_to_fit(&mut self) {
        self.0.shrink_to_fit();
    }

    pub fn iter(&self) -> Iter<'_, V> {
        self.0.iter().map(pair)
    }

    pub fn keys(&self) -> impl DoubleEndedIterator<Item = &String> + ExactSizeIterator {
        self.0.iter().map(|(k, _)| k)
    }

    pub fn values(&self) -> impl DoubleEndedIterator<Item = &V> + ExactSizeIterator {
        self.0.iter().map(|(_, v)| v)
    }
}

/// The iterator of [`NameMap::iter`]: `(name, value)` in name order.
pub type Iter<'a, V> =
    std::iter::Map<std::slice::Iter<'a, (String, V)>, fn(&'a (String, V)) -> (&'a String, &'a V)>;

fn pair<V>((k, v): &(String, V)) -> (&String, &V) {
    (k, v)
}

impl<'a, V> IntoIterator for &'a NameMap<V> {
    type Item = (&'a String, &'a V);
    type IntoIter = Iter<'a, V>;
    fn into_iter(self) -> Iter<'a, V> {
        self.iter()
    }
}

impl<V> IntoIterator for NameMap<V> {
    type Item = (String, V);
    type IntoIter = std::vec::IntoIter<(String, V)>;
    fn into_iter(self) -> Self::IntoIter {
        self.0.into_iter()
    }
}

/// As `BTreeMap`'s: for a name given twice, the last value wins.
impl<V> FromIterator<(String, V)> for NameMap<V> {
    fn from_iter<I: IntoIterator<Item = (String, V)>>(iter: I) -> Self {
        let mut v: Vec<(String, V)> = iter.into_iter().collect();
        // Stable, so equal names keep their order and the last is the one kept.
        v.sort_by(|a, b| a.0.cmp(&b.0));
        let mut out: Vec<(String, V)> = Vec::with_capacity(v.len());
        for (k, val) in v {
            match out.last_mut() {
                Some(last) if last.0 == k => last.1 = val,
                _ => out.push((k, val)),
            }
        }
        out.shrink_to_fit();
        NameMap(out)
    }
}

impl<V, const N: usize> From<[(String, V); N]> for NameMap<V> {
    fn from(a: [(String, V); N]) -> Self {
        a.into_iter().collect()
    }
}

impl<V: fmt::Debug> fmt::Debug for NameMap<V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

impl<V: serde::Serialize> serde::Serialize for NameMap<V> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(Some(self.len()))?;
        for (k, v) in self {
            m.serialize_entry(k, v)?;
        }
        m.end()
    }
}

impl<'de, V: serde::Deserialize<'de>> serde::Deserialize<'de> for NameMap<V> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct MapVisitor<V>(PhantomData<V>);
        impl<'de, V: serde::Deserialize<'de>> Visitor<'de> for MapVisitor<V> {
            type Value = NameMap<V>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a map")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut a: A) -> Result<NameMap<V>, A::Error> {
                let mut entries = Vec::with_capacity(a.size_hint().unwrap_or(0).min(1024));
                while let Some(e) = a.next_entry::<String, V>()? {
                    entries.push(e);
                }
                Ok(entries.into_iter().collect())
            }
        }
        d.deserialize_map(MapVisitor(PhantomData))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    #[test]
    fn it_reads_and_iterates_as_a_btreemap_does() {
        let pairs = [("b", 2), ("a", 1), ("c", 3), ("a", 4)];
        let m: NameMap<i32> = pairs.iter().map(|&(k, v)| (k.to_owned(), v)).collect();
        let b: BTreeMap<String, i32> = pairs.iter().map(|&(k, v)| (k.to_owned(), v)).collect();
        assert_eq!(
            m.iter().collect::<Vec<_>>(),
            b.iter().collect::<Vec<_>>(),
            "name order, the last of a repeated name"
        );
        assert_eq!(m.get("a"), Some(&4));
        assert_eq!(m.get("z"), None);
        assert!(m.contains_key("c") && !m.contains_key("d"));
        assert_eq!(format!("{m:?}"), format!("{b:?}"));
        assert_eq!(
            serde_json::to_string(&m).unwrap(),
            serde_json::to_string(&b).unwrap()
        );
    }

    #[test]
    fn inserts_keep_it_sorted_and_replace() {
        let mut m = NameMap::new();
        assert_eq!(m.insert("m".to_owned(), 1), None);
        assert_eq!(m.insert("a".to_owned(), 2), None);
        assert_eq!(m.insert("z".to_owned(), 3), None);
        assert_eq!(m.insert("m".to_owned(), 4), Some(1));
        *m.get_or_default("b") += 5;
        *m.get_or_default("a") += 5;
        assert_eq!(m.remove("q"), None);
        assert_eq!(m.remove("z"), Some(3));
        m.insert("z".to_owned(), 3);
        assert_eq!(
            m.iter().map(|(k, v)| (k.as_str(), *v)).collect::<Vec<_>>(),
            [("a", 7), ("b", 5), ("m", 4), ("z", 3)]
        );
        let back: NameMap<i32> = serde_json::from_str(&serde_json::to_string(&m).unwrap()).unwrap();
        assert_eq!(back, m);
    }
}
