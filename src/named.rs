//! The names of the library's choice enums (methods, layouts, ranges, importance statistics) on
//! the command line: each enum lists its values with a name and a one-line help, and the CLI
//! builds its value parser from that list, so the enums carry no clap derive.

use clap::builder::{PossibleValue, PossibleValuesParser, TypedValueParser};

pub trait Named: Copy + Send + Sync + 'static {
    /// Every value, in the order `--help` lists them.
    const ALL: &'static [Self];
    fn name(self) -> &'static str;
    fn help(self) -> &'static str;
    /// The value of a name (ASCII case ignored).
    fn from_name(s: &str) -> Option<Self> {
        Self::ALL.iter().copied().find(|v| v.name().eq_ignore_ascii_case(s))
    }
}

/// A clap value parser for a [`Named`] enum: its names as possible values, with their help.
pub fn parser<T: Named>() -> impl TypedValueParser<Value = T> {
    PossibleValuesParser::new(T::ALL.iter().map(|v| PossibleValue::new(v.name()).help(v.help())))
        .map(|s| T::from_name(&s).expect("clap accepted a possible value"))
}
