//! linrec ops through candle's autograd: `loss.backward()` gives every input's gradient, equal
//! to linrec's f64 reference backward, on randomized inputs (CPU tensors; CUDA tensors with
//! feature `candle-cuda` on a GPU).

mod common;
use candle_core::{Device as CDevice, Tensor, Var};
use common::*;
use linrec::ops::Problem;
use linrec::{ffm, scan, Device};

fn var(dev: &CDevice, shape: &[usize], v: &[f64]) -> Var {
    let f: Vec<f32> = v.iter().map(|&x| x as f32).collect();
    Var::from_tensor(&Tensor::from_vec(f, shape, dev).unwrap()).unwrap()
}
fn cst(dev: &CDevice, shape: &[usize], v: &[f64]) -> Tensor {
    let f: Vec<f32> = v.iter().map(|&x| x as f32).collect();
    Tensor::from_vec(f, shape, dev).unwrap()
}
fn host(t: &Tensor) -> Vec<f64> {
    t.flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap()
        .into_iter()
        .map(f64::from)
        .collect()
}
fn ce(e: candle_core::Error) -> Stop {
    Stop::Fail(format!("candle: {e}"))
}

/// The scan through candle: forward values and every gradient vs the f64 reference.
fn scan_on(dev: &CDevice, what: &str) -> T {
    let mut rng = Rng::new(11);
    for (k, (complex, tv, rev, starts)) in [
        (false, true, false, true),
        (true, true, false, true),
        (false, false, true, true),
        (true, false, true, false),
    ]
    .into_iter()
    .enumerate()
    {
        let mut p = scan::LinearScan::new(3, 37, 5);
        p.complex = complex;
        p.time_varying = tv;
        p.reverse = rev;
        let n = |s: &str| p.spec(s).numel();
        let sh = |s: &str| p.spec(s).shape;
        let x = f32_exact(&rng.vec(n("x"), -1.0, 1.0));
        let a = f32_exact(&rng.vec(n("a"), -0.9, 0.9));
        let h0 = f32_exact(&rng.vec(n("h0"), -1.0, 1.0));
        let g = f32_exact(&rng.vec(n("h"), -1.0, 1.0));
        let gf = f32_exact(&rng.vec(n("h_final"), -1.0, 1.0));
        let st = starts.then(|| rng.flags(n("start"), 0.1));
        let (xv, av, h0v) = (
            var(dev, &sh("x"), &x),
            var(dev, &sh("a"), &a),
            var(dev, &sh("h0"), &h0),
        );
        let stt = st
            .as_ref()
            .map(|s| Tensor::from_vec(s.clone(), sh("start"), dev).unwrap());
        let (h, hf) =
            linrec::candle::linear_scan(&p, &xv, &av, Some(&h0v), stt.as_ref()).map_err(ce)?;
        let loss = (h
            .mul(&cst(dev, &sh("h"), &g))
            .map_err(ce)?
            .sum_all()
            .map_err(ce)?
            + hf.mul(&cst(dev, &sh("h_final"), &gf))
                .map_err(ce)?
                .sum_all()
                .map_err(ce)?)
        .map_err(ce)?;
        let grads = loss.backward().map_err(ce)?;
        let r = scan::reference::forward(
            &p,
            &scan::ScanInputs {
                x: &x[..],
                a: &a[..],
                h0: Some(&h0[..]),
                start: st.as_deref(),
            },
        )?;
        let rg = scan::reference::backward(
            &p,
            &scan::ScanBackwardInputs {
                a: &a[..],
                h: &r.h[..],
                h0: Some(&h0[..]),
                start: st.as_deref(),
                grad_h: &g[..],
                grad_final: Some(&gf[..]),
            },
        )?;
        let tag = format!("{what} scan case {k}");
        close(&format!("{tag} h"), &host(&h), &r.h, 1e-5)?;
        close(&format!("{tag} h_final"), &host(&hf), &r.h_final, 1e-5)?;
        for (name, v, want) in [
            ("dx", &xv, &rg.dx),
            ("da", &av, &rg.da),
            ("dh0", &h0v, &rg.dh0),
        ] {
            let got = grads
                .get(v.as_tensor())
                .ok_or_else(|| Stop::Fail(format!("{tag}: no gradient for {name}")))?;
            close(&format!("{tag} {name}"), &host(got), want, 1e-4)?;
        }
    }
    Ok(())
}

/// FFM through candle: every gradient (x, a, b, s0) vs the f64 reference.
fn ffm_on(dev: &CDevice, what: &str) -> T {
    let mut rng = Rng::new(12);
    for (k, starts) in [false, true].into_iter().enumerate() {
        let p = ffm::Ffm::new(2, 29, 3, 5);
        let n = |s: &str| p.spec(s).numel();
        let sh = |s: &str| p.spec(s).shape;
        let x = f32_exact(&rng.vec(n("x"), -1.0, 1.0));
        let a = f32_exact(&rng.vec(n("a"), -0.5, -0.01));
        let b = f32_exact(&rng.vec(n("b"), -1.0, 1.0));
        let s0 = f32_exact(&rng.vec(n("s0"), -1.0, 1.0));
        let g = f32_exact(&rng.vec(n("s"), -1.0, 1.0));
        let gf = f32_exact(&rng.vec(n("s_final"), -1.0, 1.0));
        let st = starts.then(|| rng.flags(n("start"), 0.1));
        let (xv, av, bv, s0v) = (
            var(dev, &sh("x"), &x),
            var(dev, &sh("a"), &a),
            var(dev, &sh("b"), &b),
            var(dev, &sh("s0"), &s0),
        );
        let stt = st
            .as_ref()
            .map(|s| Tensor::from_vec(s.clone(), sh("start"), dev).unwrap());
        let (s, sf) =
            linrec::candle::ffm(&p, &xv, &av, &bv, Some(&s0v), stt.as_ref()).map_err(ce)?;
        let loss = (s
            .mul(&cst(dev, &sh("s"), &g))
            .map_err(ce)?
            .sum_all()
            .map_err(ce)?
            + sf.mul(&cst(dev, &sh("s_final"), &gf))
                .map_err(ce)?
                .sum_all()
                .map_err(ce)?)
        .map_err(ce)?;
        let grads = loss.backward().map_err(ce)?;
        let r = ffm::reference::forward(
            &p,
            &ffm::FfmInputs {
                x: &x[..],
                a: &a[..],
                b: &b[..],
                s0: Some(&s0[..]),
                start: st.as_deref(),
            },
        )?;
        let rg = ffm::reference::backward(
            &p,
            &ffm::FfmBackwardInputs {
                x: &x[..],
                a: &a[..],
                b: &b[..],
                s0: Some(&s0[..]),
                start: st.as_deref(),
                grad_s: &g[..],
                grad_final: Some(&gf[..]),
            },
        )?;
        let tag = format!("{what} ffm case {k}");
        close(&format!("{tag} s"), &host(&s), &r.s, 1e-5)?;
        for (name, v, want) in [
            ("dx", &xv, &rg.dx),
            ("da", &av, &rg.da),
            ("db", &bv, &rg.db),
            ("ds0", &s0v, &rg.ds0),
        ] {
            let got = grads
                .get(v.as_tensor())
                .ok_or_else(|| Stop::Fail(format!("{tag}: no gradient for {name}")))?;
            close(&format!("{tag} {name}"), &host(got), want, 1e-4)?;
        }
    }
    Ok(())
}

/// A bad argument through candle is a linrec error naming it, not a panic.
fn candle_errors_name_the_argument() -> T {
    let dev = CDevice::Cpu;
    let p = scan::LinearScan::new(2, 5, 3);
    let x = Tensor::zeros((2, 5, 4), candle_core::DType::F32, &dev).unwrap();
    let a = Tensor::zeros((2, 5, 3), candle_core::DType::F32, &dev).unwrap();
    match linrec::candle::linear_scan(&p, &x, &a, None, None) {
        Err(e) => ensure!(
            e.to_string().contains("`x`") && e.to_string().contains("[2, 5, 3]"),
            "message: {e}"
        ),
        Ok(_) => fail!("a [2, 5, 4] x was accepted for [2, 5, 3]"),
    }
    let x64 = Tensor::zeros((2, 5, 3), candle_core::DType::F64, &dev).unwrap();
    match linrec::candle::linear_scan(&p, &x64, &a, None, None) {
        Err(e) => ensure!(e.to_string().contains("`x`"), "message: {e}"),
        Ok(_) => fail!("an f64 x was accepted"),
    }
    Ok(())
}

fn cpu_scan() -> T {
    scan_on(&CDevice::Cpu, "cpu")
}
fn cpu_ffm() -> T {
    ffm_on(&CDevice::Cpu, "cpu")
}

fn cuda_dev() -> Result<CDevice, Stop> {
    #[cfg(feature = "candle-cuda")]
    {
        if let Err(Stop::Skip(r)) = common::cuda_dev() {
            return Err(Stop::Skip(r));
        }
        CDevice::new_cuda(0).map_err(|e| Stop::Skip(format!("candle CUDA device: {e}")))
    }
    #[cfg(not(feature = "candle-cuda"))]
    Err(Stop::Skip("built without feature `candle-cuda`".into()))
}
fn cuda_scan() -> T {
    scan_on(&cuda_dev()?, "cuda")
}
fn cuda_ffm() -> T {
    ffm_on(&cuda_dev()?, "cuda")
}

fn main() {
    let _ = Device::Cpu;
    common::main(trials![
        cpu_scan,
        cpu_ffm,
        candle_errors_name_the_argument,
        cuda_scan,
        cuda_ffm
    ]);
}
