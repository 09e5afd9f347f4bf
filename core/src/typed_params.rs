//! Typed params: one declaration per stage kind gives both its [`ParamSpec`]s (what pipeline.toml
//! may set, with a doc line each) and a struct of Rust values read from the resolved [`Params`],
//! so a kind never names a param twice nor reads it with the wrong getter.
//!
//! ```
//! spo_core::param_choice! {
//!     /// How a chain continues.
//!     pub enum Continuation { Random = "random", Win = "win" }
//! }
//! spo_core::stage_params! {
//!     /// The params of a kind.
//!     pub struct DemoParams {
//!         /// steps to take
//!         steps: u64 = int(400).range(0.0, 1e6),
//!         /// which candidate continues
//!         continuation: Continuation = choice_of(Continuation::Random),
//!     }
//! }
//! let specs = DemoParams::specs();
//! assert_eq!(specs[0].name, "steps");
//! assert_eq!(specs[0].doc, "steps to take");
//! let p = spo_core::Params::resolve(&specs, &[("continuation", "win".into())]).unwrap();
//! let d = DemoParams::from_params(&p).unwrap();
//! assert_eq!((d.steps, d.continuation), (400, Continuation::Win));
//! ```

use crate::param::{ParamError, ParamSpec, Params, Value};

/// A Rust type that a resolved param converts to.
pub trait FromParam: Sized {
    /// Reads param `name` of `params` as `Self`.
    fn from_param(params: &Params, name: &str) -> Result<Self, ParamError>;
}

/// An enum whose variants are the strings a choice param accepts (see [`param_choice!`]).
pub trait Choice: Copy + 'static {
    /// Every accepted string, in declaration order.
    const NAMES: &'static [&'static str];
    /// The string of this variant.
    fn as_str(self) -> &'static str;
}

impl ParamSpec {
    /// A choice param whose values are the variants of `T`.
    pub fn choice_of<T: Choice>(name: &'static str, default: T) -> Self {
        Self::choice(name, T::NAMES, default.as_str())
    }
}

fn out_of_type(name: &str, message: String) -> ParamError {
    ParamError {
        name: name.into(),
        message,
    }
}

macro_rules! from_param_via {
    ($($ty:ty => $getter:ident),* $(,)?) => {
        $(impl FromParam for $ty {
            fn from_param(params: &Params, name: &str) -> Result<Self, ParamError> {
                params.$getter(name).map(Into::into)
            }
        })*
    };
}

from_param_via! {
    bool => bool,
    i64 => int,
    usize => usize,
    f64 => float,
    Vec<i64> => int_list,
    Vec<f64> => float_list,
    Vec<String> => str_list,
}

impl FromParam for String {
    fn from_param(params: &Params, name: &str) -> Result<Self, ParamError> {
        params.str(name).map(str::to_owned)
    }
}

macro_rules! from_param_int {
    ($($ty:ty),*) => {
        $(impl FromParam for $ty {
            fn from_param(params: &Params, name: &str) -> Result<Self, ParamError> {
                let i = params.int(name)?;
                <$ty>::try_from(i).map_err(|_| {
                    out_of_type(name, format!("{i} does not fit {}", stringify!($ty)))
                })
            }
        })*
    };
}

from_param_int!(u64, u32, i32);

impl FromParam for f32 {
    fn from_param(params: &Params, name: &str) -> Result<Self, ParamError> {
        Ok(params.float(name)? as f32)
    }
}

impl FromParam for Vec<usize> {
    fn from_param(params: &Params, name: &str) -> Result<Self, ParamError> {
        params
            .int_list(name)?
            .into_iter()
            .map(|i| {
                usize::try_from(i)
                    .map_err(|_| out_of_type(name, format!("{i} in the list is negative")))
            })
            .collect()
    }
}

impl Params {
    /// The params a kind with `specs` receives when `set` overrides its defaults: each value
    /// checked against its spec, unknown names and missing required params refused. The
    /// pipeline loader does the same with source positions; this is for code and tests that
    /// build a cell without a pipeline file.
    pub fn resolve(specs: &[ParamSpec], set: &[(&str, Value)]) -> Result<Params, ParamError> {
        let mut out = Params::default();
        for (name, value) in set {
            let spec = specs
                .iter()
                .find(|s| s.name == *name)
                .ok_or_else(|| out_of_type(name, "not declared by this stage kind".to_owned()))?;
            let value = spec.check(value).map_err(|m| out_of_type(name, m))?;
            out.0.insert((*name).to_owned(), value);
        }
        for spec in specs {
            if out.0.contains_key(spec.name) {
                continue;
            }
            let default = spec.default.clone().ok_or_else(|| {
                out_of_type(spec.name, format!("required ({}) but not set", spec.ty))
            })?;
            out.0.insert(spec.name.to_owned(), default);
        }
        Ok(out)
    }
}

impl From<&str> for Value {
    fn from(s: &str) -> Self {
        Value::Str(s.to_owned())
    }
}

impl From<i64> for Value {
    fn from(i: i64) -> Self {
        Value::Int(i)
    }
}

impl From<f64> for Value {
    fn from(x: f64) -> Self {
        Value::Float(x)
    }
}

impl From<bool> for Value {
    fn from(b: bool) -> Self {
        Value::Bool(b)
    }
}

/// Declares an enum of the strings a choice param accepts: `NAMES`, `as_str` (inherent and
/// [`Choice`]), `Display`,
/// `FromStr`, serde as the string, and [`FromParam`] (an unknown string is an error naming the
/// accepted ones).
#[macro_export]
macro_rules! param_choice {
    (
        $(#[$meta:meta])*
        $vis:vis enum $name:ident {
            $( $(#[$vmeta:meta])* $variant:ident = $text:literal ),+ $(,)?
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        $vis enum $name {
            $( $(#[$vmeta])* $variant ),+
        }

        impl $name {
            /// Every accepted string, in declaration order.
            pub const NAMES: &'static [&'static str] = &[$($text),+];
            /// The string of this variant.
            pub fn as_str(self) -> &'static str {
                match self {
                    $( $name::$variant => $text ),+
                }
            }
        }

        impl $crate::typed_params::Choice for $name {
            const NAMES: &'static [&'static str] = $name::NAMES;
            fn as_str(self) -> &'static str {
                $name::as_str(self)
            }
        }

        impl ::std::fmt::Display for $name {
            fn fmt(&self, f: &mut ::std::fmt::Formatter<'_>) -> ::std::fmt::Result {
                f.write_str($crate::typed_params::Choice::as_str(*self))
            }
        }

        impl ::std::str::FromStr for $name {
            type Err = ::std::string::String;
            fn from_str(s: &str) -> ::std::result::Result<Self, Self::Err> {
                match s {
                    $( $text => Ok($name::$variant), )+
                    other => Err(format!(
                        "`{other}` is not one of {}",
                        <Self as $crate::typed_params::Choice>::NAMES.join(", ")
                    )),
                }
            }
        }

        impl $crate::__serde::Serialize for $name {
            fn serialize<S: $crate::__serde::Serializer>(
                &self,
                serializer: S,
            ) -> ::std::result::Result<S::Ok, S::Error> {
                serializer.serialize_str($crate::typed_params::Choice::as_str(*self))
            }
        }

        impl<'de> $crate::__serde::Deserialize<'de> for $name {
            fn deserialize<D: $crate::__serde::Deserializer<'de>>(
                deserializer: D,
            ) -> ::std::result::Result<Self, D::Error> {
                let s = <::std::string::String as $crate::__serde::Deserialize>::deserialize(
                    deserializer,
                )?;
                s.parse()
                    .map_err(<D::Error as $crate::__serde::de::Error>::custom)
            }
        }

        impl $crate::typed_params::FromParam for $name {
            fn from_param(
                params: &$crate::Params,
                name: &str,
            ) -> ::std::result::Result<Self, $crate::param::ParamError> {
                params.str(name)?.parse().map_err(|message| $crate::param::ParamError {
                    name: name.into(),
                    message,
                })
            }
        }
    };
}

/// Declares the params of a stage kind as a struct: each field is a param of the same name,
/// its doc comment the param's doc line, and its spec built by the [`ParamSpec`] constructor
/// and modifiers written after `=` (the name is filled in). Gives `specs()` for
/// `StageKind::params` and `from_params(&Params)` for `StageKind::run`.
#[macro_export]
macro_rules! stage_params {
    (
        $(#[$meta:meta])*
        $vis:vis struct $name:ident {
            $(
                $(#[doc = $doc:literal])*
                $field:ident : $ty:ty = $ctor:ident ( $($arg:expr),* $(,)? )
                    $( . $modifier:ident ( $($marg:expr),* $(,)? ) )* ,
            )*
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, PartialEq)]
        $vis struct $name {
            $( $(#[doc = $doc])* pub $field: $ty, )*
        }

        impl $name {
            /// The specs of these params, in declaration order.
            pub fn specs() -> ::std::vec::Vec<$crate::ParamSpec> {
                ::std::vec![
                    $(
                        $crate::ParamSpec::$ctor(stringify!($field), $($arg),*)
                            $( .$modifier($($marg),*) )*
                            .doc(concat!("" $(, $doc)*).trim())
                    ),*
                ]
            }

            /// Reads these params from a cell's resolved params.
            pub fn from_params(
                params: &$crate::Params,
            ) -> ::std::result::Result<Self, $crate::param::ParamError> {
                Ok(Self {
                    $( $field: $crate::typed_params::FromParam::from_param(
                        params,
                        stringify!($field),
                    )?, )*
                })
            }
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ParamType;

    crate::param_choice! {
        /// A test choice.
        pub enum Pick { BestWorst = "best-worst", Random = "random" }
    }

    crate::stage_params! {
        /// Test params.
        pub struct Demo {
            /// pairs per step,
            /// at most 64
            batch: usize = int(16).range(1.0, 64.0),
            lr: f64 = float(1e-4),
            pick: Pick = choice_of(Pick::BestWorst),
            t_range: Vec<i64> = int_list(&[0, 750]).len(2),
            name: String = string("x").required(),
        }
    }

    #[test]
    fn specs_carry_names_defaults_modifiers_and_docs() {
        let s = Demo::specs();
        let names: Vec<_> = s.iter().map(|s| s.name).collect();
        assert_eq!(names, ["batch", "lr", "pick", "t_range", "name"]);
        assert_eq!(s[0].doc, "pairs per step, at most 64");
        assert_eq!(s[1].doc, "");
        assert_eq!(
            s[0].ty,
            ParamType::Int {
                min: Some(1),
                max: Some(64)
            }
        );
        assert_eq!(s[2].ty, ParamType::Choice(&["best-worst", "random"]));
        assert_eq!(s[2].default, Some(Value::Str("best-worst".into())));
        assert!(matches!(s[3].ty, ParamType::IntList { len: Some(2), .. }));
        assert_eq!(s[4].default, None);
    }

    #[test]
    fn resolve_fills_defaults_checks_values_and_refuses_unknowns() {
        let specs = Demo::specs();
        let p = Params::resolve(&specs, &[("name", "a".into()), ("pick", "random".into())])
            .expect("valid");
        let d = Demo::from_params(&p).expect("typed");
        assert_eq!(
            d,
            Demo {
                batch: 16,
                lr: 1e-4,
                pick: Pick::Random,
                t_range: vec![0, 750],
                name: "a".into()
            }
        );
        let err = |set: &[(&str, Value)]| Params::resolve(&specs, set).unwrap_err().to_string();
        assert!(err(&[]).contains("`name`: required"), "{}", err(&[]));
        let e = err(&[("name", "a".into()), ("batch", 65.into())]);
        assert!(e.contains("`batch`") && e.contains("out of range"), "{e}");
        let e = err(&[("name", "a".into()), ("pick", "worst".into())]);
        assert!(e.contains("`worst` is not one of"), "{e}");
        let e = err(&[("name", "a".into()), ("nope", 1.into())]);
        assert!(e.contains("`nope`: not declared"), "{e}");
    }

    #[test]
    fn unknown_choice_and_wrong_sign_are_errors_not_defaults() {
        let mut p = Params::resolve(&Demo::specs(), &[("name", "a".into())]).expect("valid");
        p.0.insert("pick".into(), "worst".into());
        let e = Demo::from_params(&p).unwrap_err().to_string();
        assert_eq!(e, "param `pick`: `worst` is not one of best-worst, random");
        p.0.insert("pick".into(), "random".into());
        p.0.insert("batch".into(), Value::Int(-1));
        let e = Demo::from_params(&p).unwrap_err().to_string();
        assert!(e.contains("param `batch`") && e.contains("-1"), "{e}");
        assert_eq!("best-worst".parse::<Pick>(), Ok(Pick::BestWorst));
        assert_eq!(Pick::Random.to_string(), "random");
        assert_eq!(
            serde_json::to_string(&Pick::BestWorst).unwrap(),
            "\"best-worst\""
        );
        assert_eq!(
            serde_json::from_str::<Pick>("\"random\"").unwrap(),
            Pick::Random
        );
        let e = serde_json::from_str::<Pick>("\"worst\"")
            .unwrap_err()
            .to_string();
        assert!(e.contains("`worst` is not one of"), "{e}");
    }
}
