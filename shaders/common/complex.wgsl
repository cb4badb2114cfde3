//! include-only
// The element type V of kernels compiled with or without COMPLEX: f32, or vec2<f32> holding
// (re, im). Storage is always array<f32>; complex element i sits at floats 2i and 2i+1.
#ifdef COMPLEX
alias V = vec2<f32>;
const NC: u32 = 2u;
fn vmul(a: V, b: V) -> V { return vec2<f32>(a.x * b.x - a.y * b.y, a.x * b.y + a.y * b.x); }
fn vconj(a: V) -> V { return vec2<f32>(a.x, -a.y); }
fn vone() -> V { return vec2<f32>(1.0, 0.0); }
fn vzero() -> V { return vec2<f32>(0.0, 0.0); }
#else
alias V = f32;
const NC: u32 = 1u;
fn vmul(a: V, b: V) -> V { return a * b; }
fn vconj(a: V) -> V { return a; }
fn vone() -> V { return 1.0; }
fn vzero() -> V { return 0.0; }
#endif
