//! The operations, one folder each, and the plumbing they share: argument descriptions,
//! validation, and the macros that define argument structs and host-level entry points.
//!
//! Every operation has the same shape:
//! - a *problem* struct (sizes and options) implementing [`Problem`], whose
//!   [`spec`](Problem::spec) gives the shape and role of every argument and result, named by
//!   the op's own `Arg` enum (so an unknown argument does not compile);
//! - argument structs generic over the buffer type (`&Tensor` at the convenient level,
//!   [`GpuRef`](crate::GpuRef) / `CuRef` at the zero-copy level, `&[f64]` for the reference);
//! - `forward` / `backward` on a [`Device`](crate::Device) (host tensors in, host tensors out),
//!   plus `reference`, `wgpu` and `cuda` submodules with the per-backend entry points.

pub(crate) mod cplx;
pub mod efla;
pub mod ffm;
pub mod scan;
pub mod selective;

use crate::error::{Error, Result};
use crate::tensor::{DType, Tensor};

/// The role of an argument, which fixes its element type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// A sequence tensor stored in the problem's storage dtype.
    Seq,
    /// A parameter or state, always f32.
    F32,
    /// Reset flags (`u8` or `u32`, nonzero = true).
    Flags,
}

/// Shape and role of one argument.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArgSpec {
    /// The exact shape (complex data has a trailing axis of 2).
    pub shape: Vec<usize>,
    /// What element type it has.
    pub role: Role,
}

impl ArgSpec {
    /// A sequence-dtype argument of `shape`.
    pub fn seq(shape: impl Into<Vec<usize>>) -> Self {
        ArgSpec {
            shape: shape.into(),
            role: Role::Seq,
        }
    }
    /// An f32 argument of `shape`.
    pub fn f32(shape: impl Into<Vec<usize>>) -> Self {
        ArgSpec {
            shape: shape.into(),
            role: Role::F32,
        }
    }
    /// A flags argument of `shape`.
    pub fn flags(shape: impl Into<Vec<usize>>) -> Self {
        ArgSpec {
            shape: shape.into(),
            role: Role::Flags,
        }
    }
    /// Number of elements (`usize::MAX` when the count overflows: see
    /// [`checked_numel`](Self::checked_numel); argument checks reject such shapes).
    pub fn numel(&self) -> usize {
        self.checked_numel().unwrap_or(usize::MAX)
    }
    /// Number of elements, `None` when it overflows `usize`.
    pub fn checked_numel(&self) -> Option<usize> {
        self.shape.iter().try_fold(1usize, |n, &d| n.checked_mul(d))
    }
}

/// The typed name of one argument or result of an operation: each op module has an `Arg`
/// enum implementing this (for example [`ffm::Arg`]).
pub trait ArgName: Copy + std::fmt::Debug + PartialEq + 'static {
    /// The name used in the op's argument structs and in error messages (`"s_final"`, ...).
    fn name(self) -> &'static str;
}

/// Declares an op's `Arg` enum: one variant per argument or result, each with its name.
macro_rules! arg_names {
    (
        $(#[$meta:meta])*
        pub enum $name:ident {
            $( $(#[$vmeta:meta])* $var:ident = $s:literal ),* $(,)?
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum $name {
            $( $(#[$vmeta])* $var, )*
        }

        impl $name {
            /// Every argument and result, in declaration order.
            pub const ALL: &'static [$name] = &[$($name::$var),*];
        }

        impl $crate::ops::ArgName for $name {
            fn name(self) -> &'static str {
                match self {
                    $( $name::$var => $s, )*
                }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str($crate::ops::ArgName::name(*self))
            }
        }
    };
}
pub(crate) use arg_names;

/// A problem description: sizes and options of one call of an operation.
pub trait Problem {
    /// The operation's name (`"linear_scan"`, ...), for messages and benchmark ids.
    const NAME: &'static str;
    /// The op's argument names.
    type Arg: ArgName;
    /// Check sizes and options (non-empty dimensions, limits).
    fn validate(&self) -> Result<()>;
    /// Shape and role of the argument or result `arg`.
    fn spec(&self, arg: Self::Arg) -> ArgSpec;
    /// Storage dtype of [`Role::Seq`] arguments.
    fn dtype(&self) -> DType {
        DType::F32
    }
    /// The dtype an argument of `role` must have (flags: the first of the accepted ones).
    fn dtype_of(&self, role: Role) -> DType {
        match role {
            Role::Seq => self.dtype(),
            Role::F32 => DType::F32,
            Role::Flags => DType::U8,
        }
    }
}

/// Anything that can be passed as an argument buffer: it reports its element type, shape and
/// element count so arguments are validated the same way on every backend.
pub trait ArgBuf {
    /// Element types accepted for reset flags.
    const FLAG_DTYPES: &'static [DType];
    /// Element type, if the buffer is typed.
    fn dtype(&self) -> Option<DType>;
    /// Shape, if the buffer has one (host tensors); otherwise only the count is checked.
    fn shape(&self) -> Option<&[usize]>;
    /// Number of elements.
    fn numel(&self) -> usize;
    /// Backend-specific checks (buffer usage, offset alignment, range inside the buffer).
    fn check_extent(&self, _arg: &'static str) -> Result<()> {
        Ok(())
    }
}

impl ArgBuf for &Tensor {
    const FLAG_DTYPES: &'static [DType] = &[DType::U8, DType::U32];
    fn dtype(&self) -> Option<DType> {
        Some(Tensor::dtype(self))
    }
    fn shape(&self) -> Option<&[usize]> {
        Some(Tensor::shape(self))
    }
    fn numel(&self) -> usize {
        Tensor::numel(self)
    }
}

impl<T> ArgBuf for &[T] {
    const FLAG_DTYPES: &'static [DType] = &[DType::U8];
    fn dtype(&self) -> Option<DType> {
        None
    }
    fn shape(&self) -> Option<&[usize]> {
        None
    }
    fn numel(&self) -> usize {
        self.len()
    }
}

/// Every present buffer of an argument struct, in declaration order, with its argument name
/// (implemented by `arg_struct!` for structs whose float and flag buffers have one type, such
/// as the `CuRef` inputs of the CUDA entry points): the hook for checks that need the backend,
/// which [`ArgBuf::check_extent`] has not, like the device a buffer belongs to.
#[cfg_attr(not(feature = "cuda"), allow(dead_code))]
pub(crate) trait Buffers<B> {
    /// Call `f` on every present buffer; stops at the first error.
    fn each_buffer(&self, f: &mut dyn FnMut(&'static str, &B) -> Result<()>) -> Result<()>;
}

/// Check one argument against its spec.
pub fn check_arg<A: ArgBuf, P: Problem>(p: &P, arg: P::Arg, a: &A) -> Result<()> {
    let spec = p.spec(arg);
    let arg = arg.name();
    // sizes near the integer limits are errors, never an overflow (bytes too: f32 elements)
    let n = crate::error::checked_numel(arg, &spec.shape)?;
    crate::error::checked_bytes(arg, 0, n, 4)?;
    if let Some(found) = a.dtype() {
        let ok = match spec.role {
            Role::Flags => A::FLAG_DTYPES.contains(&found),
            r => found == p.dtype_of(r),
        };
        if !ok {
            let expected = match spec.role {
                Role::Flags => A::FLAG_DTYPES[0],
                r => p.dtype_of(r),
            };
            return Err(Error::DType {
                arg,
                expected,
                found,
            });
        }
    }
    match a.shape() {
        Some(found) if found != spec.shape.as_slice() => {
            return Err(Error::Shape {
                arg,
                expected: spec.shape,
                found: found.to_vec(),
            })
        }
        Some(_) => {}
        None if a.numel() != spec.numel() => {
            return Err(Error::Size {
                arg,
                expected: spec.numel(),
                found: a.numel(),
                shape: spec.shape,
            })
        }
        None => {}
    }
    a.check_extent(arg)
}

/// `Err(Value)` unless `v >= 1`.
pub fn check_nonzero(arg: &'static str, v: usize) -> Result<()> {
    if v == 0 {
        return Err(Error::value(arg, ">= 1", 0));
    }
    Ok(())
}

/// `Err(Value)` unless `v <= max`.
pub fn check_max(arg: &'static str, v: usize, max: usize) -> Result<()> {
    if v > max {
        return Err(Error::value(arg, format!("<= {max}"), v));
    }
    Ok(())
}

/// Declares an argument (or result) struct generic over its float buffer type `F` (and, for
/// `<F, S>` structs, its flags buffer type `S`), with `req` (required) and `opt` (optional)
/// fields, and derives `map` / `try_map` (convert every buffer, given its name) and `check`
/// (validate every present buffer against a [`Problem`]'s specs).
macro_rules! arg_struct {
    (@ty req $t:ident) => { $t };
    (@ty opt $t:ident) => { Option<$t> };
    (@map req F $f:ident $g:ident $name:expr, $v:expr) => { $f($name, $v) };
    (@map req S $f:ident $g:ident $name:expr, $v:expr) => { $g($name, $v) };
    (@map opt F $f:ident $g:ident $name:expr, $v:expr) => { $v.as_ref().map(|v| $f($name, v)) };
    (@map opt S $f:ident $g:ident $name:expr, $v:expr) => { $v.as_ref().map(|v| $g($name, v)) };
    (@trymap req F $f:ident $g:ident $name:expr, $v:expr) => { $f($name, $v)? };
    (@trymap req S $f:ident $g:ident $name:expr, $v:expr) => { $g($name, $v)? };
    (@trymap opt F $f:ident $g:ident $name:expr, $v:expr) => {
        match $v.as_ref() { Some(v) => Some($f($name, v)?), None => None }
    };
    (@trymap opt S $f:ident $g:ident $name:expr, $v:expr) => {
        match $v.as_ref() { Some(v) => Some($g($name, v)?), None => None }
    };
    (@each req $f:ident $name:expr, $v:expr) => { $f($crate::ops::ArgName::name($name), $v)? };
    (@each opt $f:ident $name:expr, $v:expr) => {
        if let Some(v) = $v.as_ref() { $f($crate::ops::ArgName::name($name), v)? }
    };
    // `Buffers` for the struct type `$ty` (over one buffer type `B`)
    (@buffers [$($ty:tt)*] $P:ident; $( $kind:ident $field:ident $var:ident ),*) => {
        impl<B> $crate::ops::Buffers<B> for $($ty)* {
            fn each_buffer(
                &self,
                f: &mut dyn FnMut(&'static str, &B) -> $crate::Result<()>,
            ) -> $crate::Result<()> {
                $( $crate::ops::arg_struct!(@each $kind f <$P as $crate::ops::Problem>::Arg::$var, &self.$field); )*
                Ok(())
            }
        }
    };
    (@check req $p:expr, $name:expr, $v:expr) => { $crate::ops::check_arg($p, $name, $v)? };
    (@check opt $p:expr, $name:expr, $v:expr) => {
        if let Some(v) = $v.as_ref() { $crate::ops::check_arg($p, $name, v)? }
    };
    (
        $(#[$meta:meta])*
        pub struct $name:ident<F, S> for $P:ident {
            $( $(#[$fmeta:meta])* $kind:ident $field:ident : $t:ident => $var:ident ),* $(,)?
        }
    ) => {
        $(#[$meta])*
        pub struct $name<F, S = F> {
            $( $(#[$fmeta])* pub $field: $crate::ops::arg_struct!(@ty $kind $t), )*
        }

        impl<F: Clone, S: Clone> Clone for $name<F, S> {
            fn clone(&self) -> Self {
                $name { $( $field: self.$field.clone(), )* }
            }
        }

        impl<F: std::fmt::Debug, S: std::fmt::Debug> std::fmt::Debug for $name<F, S> {
            fn fmt(&self, fm: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                fm.debug_struct(stringify!($name))
                    $( .field(stringify!($field), &self.$field) )*
                    .finish()
            }
        }

        impl<F, S> $name<F, S> {
            /// The fields' argument names, in declaration order.
            pub const ARGS: &'static [<$P as $crate::ops::Problem>::Arg] =
                &[$(<$P as $crate::ops::Problem>::Arg::$var),*];

            /// Convert every buffer: `f` gets float buffers, `g` flag buffers, each with its
            /// argument name.
            pub fn map<'a, G, T>(
                &'a self,
                mut f: impl FnMut(<$P as $crate::ops::Problem>::Arg, &'a F) -> G,
                mut g: impl FnMut(<$P as $crate::ops::Problem>::Arg, &'a S) -> T,
            ) -> $name<G, T> {
                let _ = (&mut f, &mut g);
                $name {
                    $( $field: $crate::ops::arg_struct!(@map $kind $t f g <$P as $crate::ops::Problem>::Arg::$var, &self.$field), )*
                }
            }

            /// [`map`](Self::map) with fallible conversions; stops at the first error.
            pub fn try_map<'a, G, T>(
                &'a self,
                mut f: impl FnMut(<$P as $crate::ops::Problem>::Arg, &'a F) -> $crate::Result<G>,
                mut g: impl FnMut(<$P as $crate::ops::Problem>::Arg, &'a S) -> $crate::Result<T>,
            ) -> $crate::Result<$name<G, T>> {
                let _ = (&mut f, &mut g);
                Ok($name {
                    $( $field: $crate::ops::arg_struct!(@trymap $kind $t f g <$P as $crate::ops::Problem>::Arg::$var, &self.$field), )*
                })
            }

            /// Validate every present buffer against `p`'s argument specs.
            pub fn check(&self, p: &$P) -> $crate::Result<()>
            where
                F: $crate::ops::ArgBuf,
                S: $crate::ops::ArgBuf,
            {
                $( $crate::ops::arg_struct!(@check $kind p, <$P as $crate::ops::Problem>::Arg::$var, &self.$field); )*
                Ok(())
            }
        }

        $crate::ops::arg_struct!(@buffers [$name<B, B>] $P; $( $kind $field $var ),*);
    };
    (
        $(#[$meta:meta])*
        pub struct $name:ident<F> for $P:ident {
            $( $(#[$fmeta:meta])* $kind:ident $field:ident => $var:ident ),* $(,)?
        }
    ) => {
        $(#[$meta])*
        pub struct $name<F> {
            $( $(#[$fmeta])* pub $field: $crate::ops::arg_struct!(@ty $kind F), )*
        }

        impl<F: Clone> Clone for $name<F> {
            fn clone(&self) -> Self {
                $name { $( $field: self.$field.clone(), )* }
            }
        }

        impl<F: std::fmt::Debug> std::fmt::Debug for $name<F> {
            fn fmt(&self, fm: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                fm.debug_struct(stringify!($name))
                    $( .field(stringify!($field), &self.$field) )*
                    .finish()
            }
        }

        impl<F> $name<F> {
            /// The fields' argument names, in declaration order.
            pub const ARGS: &'static [<$P as $crate::ops::Problem>::Arg] =
                &[$(<$P as $crate::ops::Problem>::Arg::$var),*];

            /// Convert every buffer, given its argument name.
            pub fn map<'a, G>(&'a self, mut f: impl FnMut(<$P as $crate::ops::Problem>::Arg, &'a F) -> G) -> $name<G> {
                $name {
                    $( $field: $crate::ops::arg_struct!(@map $kind F f f <$P as $crate::ops::Problem>::Arg::$var, &self.$field), )*
                }
            }

            /// [`map`](Self::map) with a fallible conversion; stops at the first error.
            pub fn try_map<'a, G>(
                &'a self,
                mut f: impl FnMut(<$P as $crate::ops::Problem>::Arg, &'a F) -> $crate::Result<G>,
            ) -> $crate::Result<$name<G>> {
                Ok($name {
                    $( $field: $crate::ops::arg_struct!(@trymap $kind F f f <$P as $crate::ops::Problem>::Arg::$var, &self.$field), )*
                })
            }

            /// Validate every present buffer against `p`'s argument specs.
            pub fn check(&self, p: &$P) -> $crate::Result<()>
            where
                F: $crate::ops::ArgBuf,
            {
                $( $crate::ops::arg_struct!(@check $kind p, <$P as $crate::ops::Problem>::Arg::$var, &self.$field); )*
                Ok(())
            }
        }

        $crate::ops::arg_struct!(@buffers [$name<B>] $P; $( $kind $field $var ),*);
    };
}
pub(crate) use arg_struct;

/// Defines a host-level entry point `fn $name(dev, problem, args) -> results` that validates
/// the arguments, then runs the native CPU kernels (on [`Device::Cpu`](crate::Device::Cpu)),
/// the f64 reference (on [`Device::Reference`](crate::Device::Reference)) or
/// uploads, calls the backend's zero-copy entry point of the same name, and downloads.
macro_rules! host_entry {
    (
        $(#[$meta:meta])*
        pub fn $fname:ident($P:ty, $In:ident -> $Out:ident)
    ) => {
        $(#[$meta])*
        pub fn $fname(
            dev: &$crate::Device,
            p: &$P,
            args: &$In<&$crate::Tensor>,
        ) -> $crate::Result<$Out<$crate::Tensor>> {
            #[allow(unused_imports)]
            use $crate::ops::Problem as _;
            p.validate()?;
            args.check(p)?;
            match dev {
                $crate::Device::Cpu => cpu::$fname(p, args),
                $crate::Device::Reference => {
                    let owned = args.map(|_, t| t.to_f64_vec(), |_, t| t.to_flags());
                    let refs = owned.map(|_, v| v.as_slice(), |_, s| s.as_slice());
                    let out = reference::$fname(p, &refs)?;
                    out.try_map(|arg, v| {
                        let spec = p.spec(arg);
                        $crate::Tensor::from_f64(spec.shape, v, p.dtype_of(spec.role))
                    })
                }
                #[cfg(feature = "wgpu")]
                $crate::Device::Wgpu(ctx) => {
                    let up = args.try_map(|_, t| ctx.upload(t), |_, t| ctx.upload(t))?;
                    let refs = up.map(|_, g| g.as_ref(), |_, g| g.as_ref());
                    let out = wgpu::$fname(ctx, p, &refs)?;
                    out.try_map(|_, g| ctx.download(g))
                }
                #[cfg(feature = "cuda")]
                $crate::Device::Cuda(ctx) => {
                    let up = args.try_map(|_, t| ctx.upload(t), |_, t| ctx.upload(t))?;
                    let refs = up.map(|_, g| g.as_ref(), |_, g| g.as_ref());
                    let out = cuda::$fname(ctx, p, &refs)?;
                    out.try_map(|_, g| ctx.download(g))
                }
            }
        }
    };
}
pub(crate) use host_entry;
