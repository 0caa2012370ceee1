//! One error type for the whole model crate. Every variant names the tensor, file or
//! field at fault so that a message can be shown to a user as it is.

/// Result alias used throughout the crate.
pub type Result<T> = std::result::Result<T, Error>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("tensor `{name}` is missing from {source_name}")]
    MissingTensor { name: String, source_name: String },

    #[error("tensor `{name}` in {source_name} has shape {got:?}, expected {expected:?}")]
    ShapeMismatch {
        name: String,
        source_name: String,
        expected: Vec<usize>,
        got: Vec<usize>,
    },

    #[error("tensor `{name}` in {source_name} has unsupported dtype {dtype}")]
    UnsupportedDtype {
        name: String,
        source_name: String,
        dtype: String,
    },

    #[error("{source_name} is truncated: {detail}")]
    Truncated { source_name: String, detail: String },

    #[error("{source_name} is not a weights file we can read: {detail}")]
    NotWeights { source_name: String, detail: String },

    #[error("tensor `{name}` in {source_name} has shape {got:?}, expected {expected} dimensions")]
    WrongRank {
        name: String,
        source_name: String,
        expected: usize,
        got: Vec<usize>,
    },

    #[error("{source_name} needs more memory than a model load may use: {detail}")]
    OverBudget { source_name: String, detail: String },

    #[error("{source_name} holds a different model: {detail}")]
    WrongModel { source_name: String, detail: String },

    #[error("config field `{field}`: {detail}")]
    Config { field: String, detail: String },

    #[error("image of {width}×{height} px gives a {grid_h}×{grid_w} patch grid, over the limit of {max_tokens} patches")]
    GridTooLarge {
        width: usize,
        height: usize,
        grid_h: usize,
        grid_w: usize,
        max_tokens: usize,
    },

    #[error("invalid input `{field}`: {detail}")]
    InvalidInput { field: String, detail: String },

    #[error(transparent)]
    Limit(#[from] crate::limits::LimitError),

    #[error("tokenizer: {0}")]
    Tokenizer(String),

    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

impl Error {
    pub fn invalid(field: impl Into<String>, detail: impl Into<String>) -> Self {
        Error::InvalidInput {
            field: field.into(),
            detail: detail.into(),
        }
    }
    pub fn config(field: impl Into<String>, detail: impl Into<String>) -> Self {
        Error::Config {
            field: field.into(),
            detail: detail.into(),
        }
    }
}
