use linrec::ffm::{self, Ffm, FfmInputs};
use linrec::Problem;
fn main() {
    let p = Ffm::new(32, 512, 32, 4);
    let v = |n: &str, x: f64| vec![x; p.spec(n).numel()];
    let (x, a, b, s0) = (v("x", 0.3), v("a", -0.01), v("b", 0.1), v("s0", 0.0));
    let t0 = std::time::Instant::now();
    let _o = ffm::reference::forward(
        &p,
        &FfmInputs {
            x: &x[..],
            a: &a[..],
            b: &b[..],
            s0: Some(&s0[..]),
            start: None,
        },
    )
    .unwrap();
    println!("ref fwd {:?}", t0.elapsed());
    let t0 = std::time::Instant::now();
    let t = linrec::Tensor::from_f64(p.spec("s").shape, &_o.s, linrec::DType::F32).unwrap();
    println!("from_f64 {:?}", t0.elapsed());
    let t0 = std::time::Instant::now();
    let _v = t.to_f32_vec();
    println!("to_f32_vec {:?}", t0.elapsed());
}
