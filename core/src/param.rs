//! Typed stage parameters: the schema a stage kind declares, and the resolved values it receives.

use std::fmt;

use crate::namemap::NameMap;

/// A parameter value as written in pipeline.toml or `--set`.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(untagged)]
pub enum Value {
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    List(Vec<Value>),
}

impl Value {
    /// Short name of the value's TOML type, for error messages.
    pub fn type_name(&self) -> &'static str {
        match self {
            Value::Bool(_) => "a boolean",
            Value::Int(_) => "an integer",
            Value::Float(_) => "a float",
            Value::Str(_) => "a string",
            Value::List(_) => "an array",
        }
    }

    /// Appends an unambiguous, canonical byte encoding (used in keys and cell ids).
    pub fn encode(&self, out: &mut Vec<u8>) {
        match self {
            Value::Bool(b) => out.extend_from_slice(if *b { b"b1" } else { b"b0" }),
            Value::Int(i) => {
                out.push(b'i');
                out.extend_from_slice(&i.to_le_bytes());
            }
            Value::Float(f) => {
                out.push(b'f');
                // -0.0 and 0.0 mean the same parameter.
                let f = if *f == 0.0 { 0.0 } else { *f };
                out.extend_from_slice(&f.to_bits().to_le_bytes());
            }
            Value::Str(s) => Value::encode_str(s, out),
            Value::List(items) => {
                out.push(b'l');
                out.extend_from_slice(&(items.len() as u64).to_le_bytes());
                for v in items {
                    v.encode(out);
                }
            }
        }
    }

    /// What `Value::Str(s).encode(out)` writes, without making the `Value`.
    pub fn encode_str(s: &str, out: &mut Vec<u8>) {
        out.push(b's');
        out.extend_from_slice(&(s.len() as u64).to_le_bytes());
        out.extend_from_slice(s.as_bytes());
    }
}

impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Bool(b) => write!(f, "{b}"),
            Value::Int(i) => write!(f, "{i}"),
            Value::Float(x) => write!(f, "{x:?}"),
            Value::Str(s) => write!(f, "{s:?}"),
            Value::List(items) => {
                f.write_str("[")?;
                for (i, v) in items.iter().enumerate() {
                    if i > 0 {
                        f.write_str(", ")?;
                    }
                    write!(f, "{v}")?;
                }
                f.write_str("]")
            }
        }
    }
}

/// The type (and range) a parameter accepts.
#[derive(Debug, Clone, PartialEq)]
pub enum ParamType {
    Bool,
    Int {
        min: Option<i64>,
        max: Option<i64>,
    },
    Float {
        min: Option<f64>,
        max: Option<f64>,
    },
    Str,
    /// One of a fixed set of strings.
    Choice(&'static [&'static str]),
    /// A list of integers, optionally of a fixed length.
    IntList {
        len: Option<usize>,
        min: Option<i64>,
        max: Option<i64>,
    },
    /// A list of floats, optionally of a fixed length.
    FloatList {
        len: Option<usize>,
        min: Option<f64>,
        max: Option<f64>,
    },
    StrList,
}

impl fmt::Display for ParamType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fn range<T: fmt::Display>(
            f: &mut fmt::Formatter<'_>,
            min: &Option<T>,
            max: &Option<T>,
        ) -> fmt::Result {
            match (min, max) {
                (Some(a), Some(b)) => write!(f, " in [{a}, {b}]"),
                (Some(a), None) => write!(f, " >= {a}"),
                (None, Some(b)) => write!(f, " <= {b}"),
                (None, None) => Ok(()),
            }
        }
        match self {
            ParamType::Bool => f.write_str("a boolean"),
            ParamType::Int { min, max } => {
                f.write_str("an integer")?;
                range(f, min, max)
            }
            ParamType::Float { min, max } => {
                f.write_str("a number")?;
                range(f, min, max)
            }
            ParamType::Str => f.write_str("a string"),
            ParamType::Choice(c) => write!(
                f,
                "one of {}",
                c.iter()
                    .map(|s| format!("\"{s}\""))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            ParamType::IntList { len, min, max } => {
                match len {
                    Some(n) => write!(f, "an array of {n} integers")?,
                    None => f.write_str("an array of integers")?,
                }
                range(f, min, max)
            }
            ParamType::FloatList { len, min, max } => {
                match len {
                    Some(n) => write!(f, "an array of {n} numbers")?,
                    None => f.write_str("an array of numbers")?,
                }
                range(f, min, max)
            }
            ParamType::StrList => f.write_str("an array of strings"),
        }
    }
}

/// One declared parameter of a stage kind.
#[derive(Debug, Clone)]
pub struct ParamSpec {
    pub name: &'static str,
    pub ty: ParamType,
    /// `None` makes the parameter required.
    pub default: Option<Value>,
    pub doc: &'static str,
}

impl ParamSpec {
    fn new(name: &'static str, ty: ParamType, default: Option<Value>) -> Self {
        ParamSpec {
            name,
            ty,
            default,
            doc: "",
        }
    }
    pub fn bool(name: &'static str, default: bool) -> Self {
        Self::new(name, ParamType::Bool, Some(Value::Bool(default)))
    }
    pub fn int(name: &'static str, default: i64) -> Self {
        Self::new(
            name,
            ParamType::Int {
                min: None,
                max: None,
            },
            Some(Value::Int(default)),
        )
    }
    pub fn float(name: &'static str, default: f64) -> Self {
        Self::new(
            name,
            ParamType::Float {
                min: None,
                max: None,
            },
            Some(Value::Float(default)),
        )
    }
    pub fn string(name: &'static str, default: &str) -> Self {
        Self::new(name, ParamType::Str, Some(Value::Str(default.to_owned())))
    }
    pub fn choice(name: &'static str, choices: &'static [&'static str], default: &str) -> Self {
        Self::new(
            name,
            ParamType::Choice(choices),
            Some(Value::Str(default.to_owned())),
        )
    }
    pub fn int_list(name: &'static str, default: &[i64]) -> Self {
        let v = Value::List(default.iter().map(|&i| Value::Int(i)).collect());
        Self::new(
            name,
            ParamType::IntList {
                len: None,
                min: None,
                max: None,
            },
            Some(v),
        )
    }
    pub fn float_list(name: &'static str, default: &[f64]) -> Self {
        let v = Value::List(default.iter().map(|&x| Value::Float(x)).collect());
        Self::new(
            name,
            ParamType::FloatList {
                len: None,
                min: None,
                max: None,
            },
            Some(v),
        )
    }
    pub fn str_list(name: &'static str, default: &[&str]) -> Self {
        let v = Value::List(
            default
                .iter()
                .map(|s| Value::Str((*s).to_owned()))
                .collect(),
        );
        Self::new(name, ParamType::StrList, Some(v))
    }
    /// Makes the parameter required (no default).
    pub fn required(mut self) -> Self {
        self.default = None;
        self
    }
    /// Bounds an integer, float or list parameter (inclusive).
    pub fn range(mut self, lo: f64, hi: f64) -> Self {
        self.ty = match self.ty {
            ParamType::Int { .. } => ParamType::Int {
                min: Some(lo as i64),
                max: Some(hi as i64),
            },
            ParamType::Float { .. } => ParamType::Float {
                min: Some(lo),
                max: Some(hi),
            },
            ParamType::IntList { len, .. } => ParamType::IntList {
                len,
                min: Some(lo as i64),
                max: Some(hi as i64),
            },
            ParamType::FloatList { len, .. } => ParamType::FloatList {
                len,
                min: Some(lo),
                max: Some(hi),
            },
            other => other,
        };
        self
    }
    /// Bounds an integer or float parameter from below only.
    pub fn min(mut self, lo: f64) -> Self {
        self.ty = match self.ty {
            ParamType::Int { max, .. } => ParamType::Int {
                min: Some(lo as i64),
                max,
            },
            ParamType::Float { max, .. } => ParamType::Float { min: Some(lo), max },
            ParamType::IntList { len, max, .. } => ParamType::IntList {
                len,
                min: Some(lo as i64),
                max,
            },
            ParamType::FloatList { len, max, .. } => ParamType::FloatList {
                len,
                min: Some(lo),
                max,
            },
            other => other,
        };
        self
    }
    /// Fixes the length of a list parameter.
    pub fn len(mut self, n: usize) -> Self {
        self.ty = match self.ty {
            ParamType::IntList { min, max, .. } => ParamType::IntList {
                len: Some(n),
                min,
                max,
            },
            ParamType::FloatList { min, max, .. } => ParamType::FloatList {
                len: Some(n),
                min,
                max,
            },
            other => other,
        };
        self
    }
    pub fn doc(mut self, doc: &'static str) -> Self {
        self.doc = doc;
        self
    }

    /// Checks `v` against this spec, converting an integer to a float where a float is expected.
    /// The error is a lowercase fragment saying what was expected.
    pub fn check(&self, v: &Value) -> Result<Value, String> {
        let wrong = || format!("expected {}, found {} `{v}`", self.ty, v.type_name());
        fn in_range<T: PartialOrd + fmt::Display + Copy>(
            x: T,
            min: Option<T>,
            max: Option<T>,
            ty: &ParamType,
        ) -> Result<(), String> {
            if min.is_some_and(|m| x < m) || max.is_some_and(|m| x > m) {
                return Err(format!("{x} is out of range: expected {ty}"));
            }
            Ok(())
        }
        match (&self.ty, v) {
            (ParamType::Bool, Value::Bool(_)) | (ParamType::Str, Value::Str(_)) => Ok(v.clone()),
            (ParamType::Int { min, max }, Value::Int(i)) => {
                in_range(*i, *min, *max, &self.ty).map(|_| v.clone())
            }
            (ParamType::Float { min, max }, Value::Float(_) | Value::Int(_)) => {
                let x = as_f64(v).ok_or_else(wrong)?;
                if !x.is_finite() {
                    return Err(format!("{x} is not a finite number"));
                }
                in_range(x, *min, *max, &self.ty).map(|_| Value::Float(x))
            }
            (ParamType::Choice(choices), Value::Str(s)) => {
                if choices.contains(&s.as_str()) {
                    Ok(v.clone())
                } else {
                    Err(format!("`{s}` is not {}", self.ty))
                }
            }
            (ParamType::IntList { len, min, max }, Value::List(items)) => {
                check_len(*len, items.len(), &self.ty)?;
                for it in items {
                    match it {
                        Value::Int(i) => in_range(*i, *min, *max, &self.ty)?,
                        _ => return Err(wrong()),
                    }
                }
                Ok(v.clone())
            }
            (ParamType::FloatList { len, min, max }, Value::List(items)) => {
                check_len(*len, items.len(), &self.ty)?;
                let mut out = Vec::with_capacity(items.len());
                for it in items {
                    let x = as_f64(it).ok_or_else(wrong)?;
                    in_range(x, *min, *max, &self.ty)?;
                    out.push(Value::Float(x));
                }
                Ok(Value::List(out))
            }
            (ParamType::StrList, Value::List(items))
                if items.iter().all(|i| matches!(i, Value::Str(_))) =>
            {
                Ok(v.clone())
            }
            _ => Err(wrong()),
        }
    }
}

fn check_len(want: Option<usize>, got: usize, ty: &ParamType) -> Result<(), String> {
    match want {
        Some(n) if n != got => Err(format!("expected {ty}, found {got} elements")),
        _ => Ok(()),
    }
}

fn as_f64(v: &Value) -> Option<f64> {
    match v {
        Value::Float(x) => Some(*x),
        Value::Int(i) => Some(*i as f64),
        _ => None,
    }
}

/// The resolved, validated parameters of one stage cell, in name order.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Params(pub NameMap<Value>);

/// A parameter that was validated at load time but is read back with the wrong getter:
/// a bug in a stage kind, reported rather than panicking.
#[derive(Debug, thiserror::Error)]
#[error("param `{name}`: {message}")]
pub struct ParamError {
    pub name: String,
    pub message: String,
}

impl Params {
    /// The raw value of `name`.
    pub fn get(&self, name: &str) -> Result<&Value, ParamError> {
        self.0.get(name).ok_or_else(|| ParamError {
            name: name.into(),
            message: "not declared by this stage kind".into(),
        })
    }
    fn typed<T>(
        &self,
        name: &str,
        want: &str,
        f: impl FnOnce(&Value) -> Option<T>,
    ) -> Result<T, ParamError> {
        let v = self.get(name)?;
        f(v).ok_or_else(|| ParamError {
            name: name.into(),
            message: format!("expected {want}, found {}", v.type_name()),
        })
    }
    pub fn bool(&self, name: &str) -> Result<bool, ParamError> {
        self.typed(name, "a boolean", |v| {
            if let Value::Bool(b) = v {
                Some(*b)
            } else {
                None
            }
        })
    }
    pub fn int(&self, name: &str) -> Result<i64, ParamError> {
        self.typed(name, "an integer", |v| {
            if let Value::Int(i) = v {
                Some(*i)
            } else {
                None
            }
        })
    }
    /// An integer parameter as a `usize` (negative values are an error).
    pub fn usize(&self, name: &str) -> Result<usize, ParamError> {
        let i = self.int(name)?;
        usize::try_from(i).map_err(|_| ParamError {
            name: name.into(),
            message: format!("expected a non-negative integer, found {i}"),
        })
    }
    pub fn float(&self, name: &str) -> Result<f64, ParamError> {
        self.typed(name, "a number", as_f64)
    }
    pub fn str(&self, name: &str) -> Result<&str, ParamError> {
        let v = self.get(name)?;
        match v {
            Value::Str(s) => Ok(s),
            _ => Err(ParamError {
                name: name.into(),
                message: format!("expected a string, found {}", v.type_name()),
            }),
        }
    }
    pub fn int_list(&self, name: &str) -> Result<Vec<i64>, ParamError> {
        self.typed(name, "an array of integers", |v| match v {
            Value::List(items) => items
                .iter()
                .map(|i| {
                    if let Value::Int(i) = i {
                        Some(*i)
                    } else {
                        None
                    }
                })
                .collect(),
            _ => None,
        })
    }
    pub fn float_list(&self, name: &str) -> Result<Vec<f64>, ParamError> {
        self.typed(name, "an array of numbers", |v| match v {
            Value::List(items) => items.iter().map(as_f64).collect(),
            _ => None,
        })
    }
    pub fn str_list(&self, name: &str) -> Result<Vec<String>, ParamError> {
        self.typed(name, "an array of strings", |v| match v {
            Value::List(items) => items
                .iter()
                .map(|i| {
                    if let Value::Str(s) = i {
                        Some(s.clone())
                    } else {
                        None
                    }
                })
                .collect(),
            _ => None,
        })
    }
    /// Canonical encoding of all params, in name order.
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&(self.0.len() as u64).to_le_bytes());
        for (k, v) in &self.0 {
            Value::encode_str(k, out);
            v.encode(out);
        }
    }
}
