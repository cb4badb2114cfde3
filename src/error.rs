//! The one error type of the crate.
//!
//! Every fallible function returns [`Result<T>`](Result). Argument errors name the argument
//! (`"x"`, `"h0"`, `"start"`, ...) and say what was expected and what was found, so a caller can
//! fix the call without reading kernel code.

use crate::tensor::DType;

/// Everything that can go wrong in linrec.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A host tensor has the wrong shape (rank or extent).
    #[error("argument `{arg}`: expected shape {expected:?}, found {found:?}")]
    Shape {
        /// The argument's name.
        arg: &'static str,
        /// The shape the problem description implies.
        expected: Vec<usize>,
        /// The shape that was passed.
        found: Vec<usize>,
    },
    /// A buffer (host slice or device buffer) holds the wrong number of elements, or is too small
    /// for the range it was said to hold.
    #[error("argument `{arg}`: expected {expected} elements (shape {shape:?}), found {found}")]
    Size {
        /// The argument's name.
        arg: &'static str,
        /// The element count the problem description implies.
        expected: usize,
        /// The shape behind `expected`.
        shape: Vec<usize>,
        /// The element count that was passed.
        found: usize,
    },
    /// An argument has the wrong element type.
    #[error("argument `{arg}`: expected dtype {expected}, found {found}")]
    DType {
        /// The argument's name.
        arg: &'static str,
        /// The element type the problem description implies.
        expected: DType,
        /// The element type that was passed.
        found: DType,
    },
    /// A scalar argument or problem parameter is out of its allowed range.
    #[error("argument `{arg}`: expected {expected}, found {found}")]
    Value {
        /// The argument's name.
        arg: &'static str,
        /// What the value must satisfy.
        expected: String,
        /// The value that was passed.
        found: String,
    },
    /// The backend (or this build of it) has no kernel for this problem.
    #[error("unsupported on {backend}: {what}")]
    Unsupported {
        /// Backend name (`cpu`, `wgpu`, `cuda`).
        backend: &'static str,
        /// What is missing.
        what: String,
    },
    /// The problem exceeds a limit of the device (binding size, workgroup count, shared memory).
    #[error("device limit on {backend}: {what}")]
    Limit {
        /// Backend name.
        backend: &'static str,
        /// The limit and the value that exceeded it.
        what: String,
    },
    /// No device of the requested kind could be opened.
    #[error("no {backend} device: {reason}")]
    NoDevice {
        /// Backend name.
        backend: &'static str,
        /// Why (no driver, no adapter, ...).
        reason: String,
    },
    /// The device ran out of memory.
    #[error("out of memory on {backend}: {what}")]
    OutOfMemory {
        /// Backend name.
        backend: &'static str,
        /// The allocation that failed.
        what: String,
    },
    /// A blocking wait for the device ran past the context's wait timeout (the work goes on;
    /// the context stays usable).
    #[error("timeout on {backend}: {what}")]
    Timeout {
        /// Backend name.
        backend: &'static str,
        /// What was being waited for, and the bound.
        what: String,
    },
    /// Any other error reported by a device driver or API.
    #[error("{backend} device error: {what}")]
    Device {
        /// Backend name.
        backend: &'static str,
        /// The driver's message.
        what: String,
    },
}

/// `Result` with linrec's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The element count of `shape`, or a [`Error::Value`] naming `arg` when it overflows `usize`
/// (every shape, count and extent linrec forms from caller sizes goes through here or
/// [`checked_bytes`], so no size can overflow into a panic or a wrapped value).
pub fn checked_numel(arg: &'static str, shape: &[usize]) -> Result<usize> {
    shape
        .iter()
        .try_fold(1usize, |n, &d| n.checked_mul(d))
        .ok_or_else(|| {
            Error::value(
                arg,
                "a shape whose element count fits in usize",
                format!("{shape:?}"),
            )
        })
}

/// `start + count * size` in bytes, or a [`Error::Value`] naming `arg` when it overflows `u64`.
pub fn checked_bytes(arg: &'static str, start: u64, count: usize, size: usize) -> Result<u64> {
    (count as u64)
        .checked_mul(size as u64)
        .and_then(|b| b.checked_add(start))
        .ok_or_else(|| {
            Error::value(
                arg,
                "a byte range that fits in u64",
                format!("offset {start} + {count} elements of {size} bytes"),
            )
        })
}

impl Error {
    /// Shorthand for [`Error::Value`].
    pub fn value(arg: &'static str, expected: impl Into<String>, found: impl ToString) -> Self {
        Error::Value {
            arg,
            expected: expected.into(),
            found: found.to_string(),
        }
    }

    /// Shorthand for [`Error::Unsupported`].
    pub fn unsupported(backend: &'static str, what: impl Into<String>) -> Self {
        Error::Unsupported {
            backend,
            what: what.into(),
        }
    }
}
