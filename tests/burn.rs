//! linrec ops through burn (feature `burn`): forward results and every gradient (through
//! burn's autodiff) against linrec's f64 reference, on burn's wgpu device (linrec's WGSL
//! kernels on burn's buffers; lavapipe in CI, skipped visibly where there is no adapter) and on
//! burn's ndarray CPU backend (linrec's native CPU kernels); resets and initial states
//! included. Also: the results live on burn's device and later burn ops consume them (with
//! burn's queued work before and after), the layers train and decode step by step, and
//! argument errors name the argument.

mod common;
use burn::tensor::{Device as BDevice, Int, Tensor, TensorData};
use common::*;
use linrec::ops::Problem;
use linrec::{efla, ffm, scan, selective};
use std::sync::OnceLock;

static WGPU: OnceLock<Result<BDevice, String>> = OnceLock::new();

/// burn's wgpu device registered with linrec, or a skip naming why there is none.
fn wgpu_dev() -> Result<BDevice, Stop> {
    WGPU.get_or_init(|| linrec::burn::wgpu_device().map_err(|e| e.to_string()))
        .clone()
        .map_err(|e| Stop::Skip(format!("no burn wgpu device: {e}")))
}

/// burn's ndarray CPU backend (deprecated in burn 0.22 for burn-flex, still its CPU backend).
#[allow(deprecated)]
fn ndarray_dev() -> BDevice {
    BDevice::ndarray()
}

fn ten<const D: usize>(dev: &BDevice, shape: &[usize], v: &[f64]) -> Tensor<D> {
    let f: Vec<f32> = v.iter().map(|&x| x as f32).collect();
    Tensor::from_data(TensorData::new(f, shape.to_vec()), dev)
}

fn flags(dev: &BDevice, shape: &[usize], v: &[u8]) -> Tensor<2, Int> {
    let f: Vec<i32> = v.iter().map(|&x| i32::from(x)).collect();
    Tensor::from_data(TensorData::new(f, shape.to_vec()), dev)
}

fn host<const D: usize>(t: Tensor<D>) -> Vec<f64> {
    t.into_data()
        .convert::<f32>()
        .try_to_vec::<f32>()
        .unwrap()
        .into_iter()
        .map(f64::from)
        .collect()
}

/// `sum(out * g) + sum(fin * gf)`: its gradient with respect to `out` is `g`, to `fin` `gf`.
fn probe<const A: usize, const B: usize>(
    dev: &BDevice,
    out: Tensor<A>,
    g: &[f64],
    fin: Tensor<B>,
    gf: &[f64],
) -> Tensor<1> {
    let (so, sf) = (out.dims().to_vec(), fin.dims().to_vec());
    (out * ten::<A>(dev, &so, g)).sum() + (fin * ten::<B>(dev, &sf, gf)).sum()
}

fn grad_close<const D: usize>(
    tag: &str,
    grads: &burn::tensor::Gradients,
    name: impl std::fmt::Display,
    v: &Tensor<D>,
    want: &[f64],
) -> T {
    let got = v
        .grad(grads)
        .ok_or_else(|| Stop::Fail(format!("{tag}: no gradient for {name}")))?;
    close(&format!("{tag} {name}"), &host(got), want, 1e-4)
}

/// The scan through burn: forward values and every gradient vs the f64 reference.
fn scan_on(dev: &BDevice, what: &str) -> T {
    let dev = &dev.clone().autodiff();
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
        let n = |s| p.spec(s).numel();
        let sh = |s| p.spec(s).shape;
        let x = f32_exact(&rng.vec(n(scan::Arg::X), -1.0, 1.0));
        let a = f32_exact(&rng.vec(n(scan::Arg::A), -0.9, 0.9));
        let h0 = f32_exact(&rng.vec(n(scan::Arg::H0), -1.0, 1.0));
        let g = f32_exact(&rng.vec(n(scan::Arg::H), -1.0, 1.0));
        let gf = f32_exact(&rng.vec(n(scan::Arg::HFinal), -1.0, 1.0));
        let st = starts.then(|| rng.flags(n(scan::Arg::Start), 0.1));
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
        let stt = st.as_ref().map(|s| flags(dev, &sh(scan::Arg::Start), s));
        let tag = format!("{what} scan case {k}");
        // ranks: real [B,T,D] / [B,D], complex one more; a time-invariant is [D] / [D,2]
        macro_rules! go {
            ($n:literal, $m:literal, $s:literal) => {{
                let xv = ten::<$n>(dev, &sh(scan::Arg::X), &x).require_grad();
                let av = ten::<$m>(dev, &sh(scan::Arg::A), &a).require_grad();
                let hv = ten::<$s>(dev, &sh(scan::Arg::H0), &h0).require_grad();
                let (h, hf) =
                    linrec::burn::linear_scan(&p, xv.clone(), av.clone(), Some(hv.clone()), stt)?;
                close(&format!("{tag} h"), &host(h.clone()), &r.h, 1e-5)?;
                close(
                    &format!("{tag} h_final"),
                    &host(hf.clone()),
                    &r.h_final,
                    1e-5,
                )?;
                let grads = probe(dev, h, &g, hf, &gf).backward();
                grad_close(&tag, &grads, "dx", &xv, &rg.dx)?;
                grad_close(&tag, &grads, "da", &av, &rg.da)?;
                grad_close(&tag, &grads, "dh0", &hv, &rg.dh0)?;
            }};
        }
        match (complex, tv) {
            (false, true) => go!(3, 3, 2),
            (true, true) => go!(4, 4, 3),
            (false, false) => go!(3, 1, 2),
            (true, false) => go!(4, 2, 3),
        }
    }
    Ok(())
}

/// FFM through burn: every gradient (x, a, b, s0) vs the f64 reference; with and without
/// resets, with a given and an absent initial state.
fn ffm_on(dev: &BDevice, what: &str) -> T {
    let dev = &dev.clone().autodiff();
    let mut rng = Rng::new(12);
    for (k, (starts, with_s0)) in [(false, true), (true, true), (true, false)]
        .into_iter()
        .enumerate()
    {
        let p = ffm::Ffm::new(2, 29, 3, 5);
        let n = |s| p.spec(s).numel();
        let sh = |s| p.spec(s).shape;
        let x = f32_exact(&rng.vec(n(ffm::Arg::X), -1.0, 1.0));
        let a = f32_exact(&rng.vec(n(ffm::Arg::A), -0.5, -0.01));
        let b = f32_exact(&rng.vec(n(ffm::Arg::B), -1.0, 1.0));
        let s0 = if with_s0 {
            f32_exact(&rng.vec(n(ffm::Arg::S0), -1.0, 1.0))
        } else {
            vec![0.0; n(ffm::Arg::S0)]
        };
        let g = f32_exact(&rng.vec(n(ffm::Arg::S), -1.0, 1.0));
        let gf = f32_exact(&rng.vec(n(ffm::Arg::SFinal), -1.0, 1.0));
        let st = starts.then(|| rng.flags(n(ffm::Arg::Start), 0.1));
        let xv = ten::<3>(dev, &sh(ffm::Arg::X), &x).require_grad();
        let av = ten::<1>(dev, &sh(ffm::Arg::A), &a).require_grad();
        let bv = ten::<1>(dev, &sh(ffm::Arg::B), &b).require_grad();
        let s0v = ten::<4>(dev, &sh(ffm::Arg::S0), &s0).require_grad();
        let stt = st.as_ref().map(|s| flags(dev, &sh(ffm::Arg::Start), s));
        let (s, sf) = linrec::burn::ffm(
            &p,
            xv.clone(),
            av.clone(),
            bv.clone(),
            with_s0.then(|| s0v.clone()),
            stt,
        )?;
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
        close(&format!("{tag} s"), &host(s.clone()), &r.s, 1e-5)?;
        close(
            &format!("{tag} s_final"),
            &host(sf.clone()),
            &r.s_final,
            1e-5,
        )?;
        let grads = probe(dev, s, &g, sf, &gf).backward();
        grad_close(&tag, &grads, "dx", &xv, &rg.dx)?;
        grad_close(&tag, &grads, "da", &av, &rg.da)?;
        grad_close(&tag, &grads, "db", &bv, &rg.db)?;
        if with_s0 {
            grad_close(&tag, &grads, "ds0", &s0v, &rg.ds0)?;
        } else {
            ensure!(
                s0v.grad(&grads).is_none(),
                "{tag}: an unused s0 got a gradient"
            );
        }
    }
    Ok(())
}

/// EFLA through burn (both rules, recurrent and chunked): every gradient vs the reference.
fn efla_on(dev: &BDevice, what: &str) -> T {
    use linrec::efla::{Efla, EflaBackwardInputs, EflaInputs};
    let dev = &dev.clone().autodiff();
    let mut rng = Rng::new(13);
    for (k, (delta, chunked)) in [(false, true), (true, true), (false, false), (true, false)]
        .into_iter()
        .enumerate()
    {
        let mut p = Efla::new(2, 21, 2, 5, 3);
        p = if chunked { p.chunked(8) } else { p.recurrent() };
        if delta {
            p = p.delta();
        }
        let n = |s| p.spec(s).numel();
        let sh = |s| p.spec(s).shape;
        let q = f32_exact(&rng.vec(n(efla::Arg::Q), -1.0, 1.0));
        let kk = f32_exact(&rng.vec(n(efla::Arg::K), -0.5, 0.5));
        let v = f32_exact(&rng.vec(n(efla::Arg::V), -1.0, 1.0));
        let beta = f32_exact(&rng.vec(n(efla::Arg::Beta), 0.1, 0.9));
        let s0 = f32_exact(&rng.vec(n(efla::Arg::S0), -1.0, 1.0));
        let g = f32_exact(&rng.vec(n(efla::Arg::O), -1.0, 1.0));
        let gf = f32_exact(&rng.vec(n(efla::Arg::SFinal), -1.0, 1.0));
        let st = rng.flags(n(efla::Arg::Start), 0.1);
        let qv = ten::<4>(dev, &sh(efla::Arg::Q), &q).require_grad();
        let kv = ten::<4>(dev, &sh(efla::Arg::K), &kk).require_grad();
        let vv = ten::<4>(dev, &sh(efla::Arg::V), &v).require_grad();
        let bv = ten::<3>(dev, &sh(efla::Arg::Beta), &beta).require_grad();
        let s0v = ten::<4>(dev, &sh(efla::Arg::S0), &s0).require_grad();
        let (o, sf) = linrec::burn::efla(
            &p,
            qv.clone(),
            kv.clone(),
            vv.clone(),
            bv.clone(),
            Some(s0v.clone()),
            Some(flags(dev, &sh(efla::Arg::Start), &st)),
        )?;
        let inp = EflaInputs {
            q: &q[..],
            k: &kk[..],
            v: &v[..],
            beta: &beta[..],
            s0: Some(&s0[..]),
            start: Some(&st[..]),
        };
        let r = linrec::efla::reference::forward(&p, &inp)?;
        let rg = linrec::efla::reference::backward(
            &p,
            &EflaBackwardInputs {
                q: &q[..],
                k: &kk[..],
                v: &v[..],
                beta: &beta[..],
                s0: Some(&s0[..]),
                start: Some(&st[..]),
                grad_o: &g[..],
                grad_final: Some(&gf[..]),
            },
        )?;
        let tag = format!("{what} efla case {k}");
        close(&format!("{tag} o"), &host(o.clone()), &r.o, 1e-5)?;
        close(
            &format!("{tag} s_final"),
            &host(sf.clone()),
            &r.s_final,
            1e-5,
        )?;
        let grads = probe(dev, o, &g, sf, &gf).backward();
        grad_close(&tag, &grads, "dq", &qv, &rg.dq)?;
        grad_close(&tag, &grads, "dk", &kv, &rg.dk)?;
        grad_close(&tag, &grads, "dv", &vv, &rg.dv)?;
        grad_close(&tag, &grads, "dbeta", &bv, &rg.dbeta)?;
        grad_close(&tag, &grads, "ds0", &s0v, &rg.ds0)?;
    }
    Ok(())
}

/// Storage dtype: EFLA with f16 sequence tensors (the op casts f32 inputs to its storage
/// dtype; gradients come back in the inputs' dtype), forward and every gradient within the
/// half-precision bound of docs/conventions.md.
fn efla_f16_on(dev: &BDevice, what: &str) -> T {
    use linrec::efla::{Efla, EflaBackwardInputs, EflaInputs};
    if !dev.supports_dtype(burn::tensor::DType::F16) {
        return Err(Stop::Skip(format!("{what}: the device has no f16 tensors")));
    }
    let dev = &dev.clone().autodiff();
    let mut rng = Rng::new(17);
    let p = Efla::new(2, 19, 2, 4, 3)
        .chunked(8)
        .with_dtype(linrec::DType::F16);
    let n = |s| p.spec(s).numel();
    let sh = |s| p.spec(s).shape;
    let h = |v: Vec<f64>| -> Vec<f64> {
        v.into_iter()
            .map(|x| half::f16::from_f64(x).to_f64())
            .collect()
    };
    let q = h(rng.vec(n(efla::Arg::Q), -1.0, 1.0));
    let kk = h(rng.vec(n(efla::Arg::K), -0.5, 0.5));
    let v = h(rng.vec(n(efla::Arg::V), -1.0, 1.0));
    let beta = h(rng.vec(n(efla::Arg::Beta), 0.1, 0.9));
    let s0 = f32_exact(&rng.vec(n(efla::Arg::S0), -1.0, 1.0));
    let g = h(rng.vec(n(efla::Arg::O), -1.0, 1.0));
    let gf = f32_exact(&rng.vec(n(efla::Arg::SFinal), -1.0, 1.0));
    let st = rng.flags(n(efla::Arg::Start), 0.1);
    let qv = ten::<4>(dev, &sh(efla::Arg::Q), &q).require_grad();
    let kv = ten::<4>(dev, &sh(efla::Arg::K), &kk).require_grad();
    let vv = ten::<4>(dev, &sh(efla::Arg::V), &v).require_grad();
    let bv = ten::<3>(dev, &sh(efla::Arg::Beta), &beta).require_grad();
    let s0v = ten::<4>(dev, &sh(efla::Arg::S0), &s0).require_grad();
    let (o, sf) = linrec::burn::efla(
        &p,
        qv.clone(),
        kv.clone(),
        vv.clone(),
        bv.clone(),
        Some(s0v.clone()),
        Some(flags(dev, &sh(efla::Arg::Start), &st)),
    )?;
    ensure!(
        o.dtype() == burn::tensor::DType::F16,
        "{what}: o is {:?}, not f16",
        o.dtype()
    );
    let inp = EflaInputs {
        q: &q[..],
        k: &kk[..],
        v: &v[..],
        beta: &beta[..],
        s0: Some(&s0[..]),
        start: Some(&st[..]),
    };
    let r = linrec::efla::reference::forward(&p, &inp)?;
    let rg = linrec::efla::reference::backward(
        &p,
        &EflaBackwardInputs {
            q: &q[..],
            k: &kk[..],
            v: &v[..],
            beta: &beta[..],
            s0: Some(&s0[..]),
            start: Some(&st[..]),
            grad_o: &g[..],
            grad_final: Some(&gf[..]),
        },
    )?;
    let tag = format!("{what} efla f16");
    close(&format!("{tag} o"), &host(o.clone()), &r.o, 1e-2)?;
    close(
        &format!("{tag} s_final"),
        &host(sf.clone()),
        &r.s_final,
        1e-2,
    )?;
    let o32 = o.cast(burn::tensor::DType::F32);
    let grads = probe(dev, o32, &g, sf, &gf).backward();
    for (name, t, want) in [
        ("dq", &qv, &rg.dq),
        ("dk", &kv, &rg.dk),
        ("dv", &vv, &rg.dv),
        ("ds0", &s0v, &rg.ds0),
    ] {
        let got = t
            .grad(&grads)
            .ok_or_else(|| Stop::Fail(format!("{tag}: no gradient for {name}")))?;
        close(&format!("{tag} {name}"), &host(got), want, 1e-2)?;
    }
    let got = bv
        .grad(&grads)
        .ok_or_else(|| Stop::Fail(format!("{tag}: no gradient for dbeta")))?;
    close(&format!("{tag} dbeta"), &host(got), &rg.dbeta, 1e-2)?;
    Ok(())
}

/// The selective scan through burn (input-dependent B/C with a gate, fixed B/C without):
/// every gradient vs the reference.
fn selective_on(dev: &BDevice, what: &str) -> T {
    use linrec::selective::{Arg, SelectiveBackwardInputs, SelectiveInputs, SelectiveScan};
    let dev = &dev.clone().autodiff();
    let mut rng = Rng::new(14);
    for (k, (fixed, with_z)) in [(false, true), (true, false)].into_iter().enumerate() {
        let mut p = SelectiveScan::new(2, 19, 4, 3).softplus();
        p = if fixed { p.fixed_bc() } else { p.groups(2) };
        let n = |s| p.spec(s).numel();
        let sh = |s| p.spec(s).shape;
        let mut gen = |nm: Arg| match nm {
            Arg::A => f32_exact(&rng.vec(n(nm), -1.0, -0.1)),
            Arg::Delta => f32_exact(&rng.vec(n(nm), -1.0, 0.5)),
            _ => f32_exact(&rng.vec(n(nm), -1.0, 1.0)),
        };
        let (u, delta, a, bm, cm) = (
            gen(Arg::U),
            gen(Arg::Delta),
            gen(Arg::A),
            gen(Arg::Bm),
            gen(Arg::Cm),
        );
        let (dskip, z, dbias, h0) = (
            gen(Arg::Dskip),
            gen(Arg::Z),
            gen(Arg::DeltaBias),
            gen(Arg::H0),
        );
        let g = f32_exact(&rng.vec(n(Arg::Out), -1.0, 1.0));
        let gf = f32_exact(&rng.vec(n(Arg::HFinal), -1.0, 1.0));
        let st = rng.flags(n(Arg::Start), 0.1);
        let inp = SelectiveInputs {
            u: &u[..],
            delta: &delta[..],
            a: &a[..],
            bm: &bm[..],
            cm: &cm[..],
            dskip: Some(&dskip[..]),
            z: with_z.then_some(&z[..]),
            delta_bias: Some(&dbias[..]),
            h0: Some(&h0[..]),
            start: Some(&st[..]),
        };
        let r = selective::reference::forward(&p, &inp)?;
        let rg = selective::reference::backward(
            &p,
            &SelectiveBackwardInputs {
                u: &u[..],
                delta: &delta[..],
                a: &a[..],
                bm: &bm[..],
                cm: &cm[..],
                dskip: Some(&dskip[..]),
                z: with_z.then_some(&z[..]),
                delta_bias: Some(&dbias[..]),
                h0: Some(&h0[..]),
                start: Some(&st[..]),
                grad_out: &g[..],
                grad_final: Some(&gf[..]),
            },
        )?;
        let tag = format!("{what} selective case {k}");
        let uv = ten::<3>(dev, &sh(Arg::U), &u).require_grad();
        let dv = ten::<3>(dev, &sh(Arg::Delta), &delta).require_grad();
        let av = ten::<2>(dev, &sh(Arg::A), &a).require_grad();
        let dsv = ten::<1>(dev, &sh(Arg::Dskip), &dskip).require_grad();
        let zv = ten::<3>(dev, &sh(Arg::Z), &z).require_grad();
        let dbv = ten::<1>(dev, &sh(Arg::DeltaBias), &dbias).require_grad();
        let h0v = ten::<3>(dev, &sh(Arg::H0), &h0).require_grad();
        macro_rules! go {
            ($g:literal) => {{
                let bmv = ten::<$g>(dev, &sh(Arg::Bm), &bm).require_grad();
                let cmv = ten::<$g>(dev, &sh(Arg::Cm), &cm).require_grad();
                let (o, hf) = linrec::burn::selective_scan(
                    &p,
                    linrec::burn::SelectiveTensors {
                        u: uv.clone(),
                        delta: dv.clone(),
                        a: av.clone(),
                        bm: bmv.clone(),
                        cm: cmv.clone(),
                        dskip: Some(dsv.clone()),
                        z: with_z.then(|| zv.clone()),
                        delta_bias: Some(dbv.clone()),
                        h0: Some(h0v.clone()),
                        start: Some(flags(dev, &sh(Arg::Start), &st)),
                    },
                )?;
                close(&format!("{tag} out"), &host(o.clone()), &r.out, 1e-5)?;
                close(
                    &format!("{tag} h_final"),
                    &host(hf.clone()),
                    &r.h_final,
                    1e-5,
                )?;
                let grads = probe(dev, o, &g, hf, &gf).backward();
                grad_close(&tag, &grads, "dbm", &bmv, &rg.dbm)?;
                grad_close(&tag, &grads, "dcm", &cmv, &rg.dcm)?;
                grads
            }};
        }
        let grads = if fixed { go!(2) } else { go!(4) };
        grad_close(&tag, &grads, "du", &uv, &rg.du)?;
        grad_close(&tag, &grads, "ddelta", &dv, &rg.ddelta)?;
        grad_close(&tag, &grads, "da", &av, &rg.da)?;
        grad_close(&tag, &grads, "ddskip", &dsv, &rg.ddskip)?;
        grad_close(&tag, &grads, "ddelta_bias", &dbv, &rg.ddelta_bias)?;
        grad_close(&tag, &grads, "dh0", &h0v, &rg.dh0)?;
        if with_z {
            grad_close(&tag, &grads, "dz", &zv, &rg.dz)?;
        }
    }
    Ok(())
}

fn wgpu_scan() -> T {
    let dev = wgpu_dev()?;
    no_result_copies(true, || scan_on(&dev, "burn wgpu"))
}
fn wgpu_ffm() -> T {
    let dev = wgpu_dev()?;
    no_result_copies(true, || ffm_on(&dev, "burn wgpu"))
}
fn wgpu_efla() -> T {
    let dev = wgpu_dev()?;
    no_result_copies(true, || efla_on(&dev, "burn wgpu"))
}
fn wgpu_efla_f16() -> T {
    let dev = wgpu_dev()?;
    // (half results: the autodiff node casts and concatenates them)
    no_result_copies(false, || efla_f16_on(&dev, "burn wgpu"))
}

/// `f` passes, the kernels wrote every result of its ops on burn's wgpu device straight into
/// a tensor cubecl allocated (none was copied there from a buffer of linrec's own), and, with
/// `packed` (f32 results), every autodiff node took the packed form the kernels wrote (no
/// concatenation). (The counters are per thread: `f` runs on this one.)
fn no_result_copies(packed: bool, f: impl FnOnce() -> T) -> T {
    let counts = || {
        (
            linrec::burn::result_copies(),
            linrec::burn::autodiff::results_concatenated(),
        )
    };
    let (n0, c0) = counts();
    f()?;
    let (n, c) = counts();
    ensure!(
        n == n0,
        "{} results were copied into burn's buffers",
        n - n0
    );
    ensure!(
        !packed || c == c0,
        "{} autodiff nodes concatenated their results",
        c - c0
    );
    Ok(())
}
fn ndarray_efla_f16() -> T {
    efla_f16_on(&ndarray_dev(), "burn ndarray")
}
fn wgpu_selective() -> T {
    let dev = wgpu_dev()?;
    no_result_copies(true, || selective_on(&dev, "burn wgpu"))
}
fn ndarray_scan() -> T {
    scan_on(&ndarray_dev(), "burn ndarray")
}
fn ndarray_ffm() -> T {
    ffm_on(&ndarray_dev(), "burn ndarray")
}
fn ndarray_efla() -> T {
    efla_on(&ndarray_dev(), "burn ndarray")
}
fn ndarray_selective() -> T {
    selective_on(&ndarray_dev(), "burn ndarray")
}

/// Without autodiff (inference): the results equal the reference too, and the results live on
/// burn's device, where later burn ops consume them. The inputs are produced by burn ops queued
/// just before (not yet submitted when linrec runs) and the results consumed by ops queued
/// just after, so a wrong order with burn's queue shows up as wrong numbers.
fn device_sharing_on(dev: &BDevice, what: &str) -> T {
    let mut rng = Rng::new(15);
    let p = scan::LinearScan::new(2, 33, 6);
    let n = |s| p.spec(s).numel();
    let sh = |s| p.spec(s).shape;
    let x = f32_exact(&rng.vec(n(scan::Arg::X), -1.0, 1.0));
    let a = f32_exact(&rng.vec(n(scan::Arg::A), -0.9, 0.9));
    let st = rng.flags(n(scan::Arg::Start), 0.1);
    for round in 0..3 {
        // x2 = (x - 1) + 1 and a2 = a * 1 computed by burn right before the op
        let x2 = ten::<3>(dev, &sh(scan::Arg::X), &x)
            .sub_scalar(1.0)
            .add_scalar(1.0);
        let a2 = ten::<3>(dev, &sh(scan::Arg::A), &a).mul_scalar(1.0);
        let (h, hf): (Tensor<3>, Tensor<2>) = linrec::burn::linear_scan(
            &p,
            x2,
            a2,
            None,
            Some(flags(dev, &sh(scan::Arg::Start), &st)),
        )?;
        ensure!(
            &h.device() == dev,
            "{what}: h lives on {:?}, not {dev:?}",
            h.device()
        );
        ensure!(
            &hf.device() == dev,
            "{what}: h_final lives on {:?}",
            hf.device()
        );
        let r = scan::reference::forward(
            &p,
            &scan::ScanInputs {
                x: &x[..],
                a: &a[..],
                h0: None,
                start: Some(&st[..]),
            },
        )?;
        // later burn ops consume the results on the device
        let h2 = h.mul_scalar(2.0).add_scalar(round as f64);
        let want: Vec<f64> = r.h.iter().map(|v| 2.0 * v + round as f64).collect();
        close(
            &format!("{what} round {round} 2h + {round}"),
            &host(h2),
            &want,
            1e-5,
        )?;
        let s = host(hf.sum());
        let want_s: f64 = r.h_final.iter().sum();
        let ok = (s[0] - want_s).abs() <= 1e-4 * (1.0 + want_s.abs());
        ensure!(ok, "{what}: sum(h_final) = {} vs {want_s}", s[0]);
    }
    Ok(())
}

fn wgpu_device_sharing() -> T {
    device_sharing_on(&wgpu_dev()?, "burn wgpu")
}
fn ndarray_device_sharing() -> T {
    device_sharing_on(&ndarray_dev(), "burn ndarray")
}

/// The layers: a training step lowers the loss (gradients reach every parameter), and
/// running a sequence in one call equals running it step by step with the carried state
/// (`step`), resets included.
fn layers_on(dev: &BDevice, what: &str) -> T {
    use burn::module::Module;
    use burn::optim::{AdamConfig, GradientsParams};
    use linrec::burn::layers::{EflaAttention, EflaAttentionConfig, FfmCell, FfmCellConfig};
    let (b, t, i, o) = (2, 12, 3, 4);
    let mut rng = Rng::new(16);
    let x = f32_exact(&rng.vec(b * t * i, -1.0, 1.0));
    let target = f32_exact(&rng.vec(b * t * o, -1.0, 1.0));
    let mut st = rng.flags(b * t, 0.15);
    st[0] = 0;
    let ad = dev.clone().autodiff();
    // FFM cell: train a few steps
    let mut cell = FfmCell::new(FfmCellConfig::new(i, o, 4, 3), &ad)?;
    let mut opt = AdamConfig::new().init();
    let mut losses = vec![];
    for _ in 0..5 {
        let xt = ten::<3>(&ad, &[b, t, i], &x);
        let (y, _) = cell.forward(xt, None, Some(flags(&ad, &[b, t], &st)))?;
        let loss = (y - ten::<3>(&ad, &[b, t, o], &target))
            .powi_scalar(2)
            .mean();
        losses.push(host(loss.clone())[0]);
        let grads = GradientsParams::from_grads(loss.backward(), &cell);
        cell = opt.step(1e-2, cell, grads);
    }
    let lower = losses[4] < losses[0];
    ensure!(
        lower,
        "{what}: FFM cell training does not lower the loss: {losses:?}"
    );
    // whole sequence vs step by step
    let cell = cell.valid();
    let xt = ten::<3>(dev, &[b, t, i], &x);
    let (y, s_all) = cell.forward(xt.clone(), None, Some(flags(dev, &[b, t], &st)))?;
    let mut state = None;
    let mut ys = vec![];
    for k in 0..t {
        let xk = xt.clone().slice([0..b, k..k + 1, 0..i]).reshape([b, i]);
        let rk: Vec<i32> = (0..b).map(|r| i32::from(st[r * t + k])).collect();
        let rk = Tensor::<1, Int>::from_data(TensorData::new(rk, [b]), dev);
        let (yk, sk) = cell.step(xk, state, Some(rk))?;
        ys.push(yk.reshape([b, 1, o]));
        state = Some(sk);
    }
    let y_steps = Tensor::cat(ys, 1);
    close(
        &format!("{what} FFM cell steps"),
        &host(y_steps),
        &host(y),
        1e-4,
    )?;
    close(
        &format!("{what} FFM cell final state"),
        &host(state.unwrap()),
        &host(s_all),
        1e-4,
    )?;
    // EFLA attention, chunked forward vs recurrent steps; one training step
    let (d, h) = (8, 2);
    let xa = f32_exact(&rng.vec(b * t * d, -1.0, 1.0));
    let att = EflaAttention::new(EflaAttentionConfig::new(d, h), &ad)?;
    let (ya, _) = att.forward(ten::<3>(&ad, &[b, t, d], &xa), None, None)?;
    let grads = ya.powi_scalar(2).mean().backward();
    let gp = GradientsParams::from_grads(grads, &att);
    ensure!(
        gp.len() >= 5,
        "{what}: EFLA attention has {} gradients",
        gp.len()
    );
    let att = att.valid();
    let xt = ten::<3>(dev, &[b, t, d], &xa);
    let (y, _) = att.forward(xt.clone(), None, Some(flags(dev, &[b, t], &st)))?;
    let mut state = None;
    let mut ys = vec![];
    for k in 0..t {
        let xk = xt.clone().slice([0..b, k..k + 1, 0..d]).reshape([b, d]);
        let rk: Vec<i32> = (0..b).map(|r| i32::from(st[r * t + k])).collect();
        let rk = Tensor::<1, Int>::from_data(TensorData::new(rk, [b]), dev);
        let (yk, sk) = att.step(xk, state, Some(rk))?;
        ys.push(yk.reshape([b, 1, d]));
        state = Some(sk);
    }
    close(
        &format!("{what} EFLA attention steps"),
        &host(Tensor::cat(ys, 1)),
        &host(y),
        1e-4,
    )?;
    Ok(())
}

fn wgpu_layers() -> T {
    layers_on(&wgpu_dev()?, "burn wgpu")
}
fn ndarray_layers() -> T {
    layers_on(&ndarray_dev(), "burn ndarray")
}

/// A wrong shape is an error naming the argument, before anything runs.
fn errors_name_the_argument() -> T {
    let dev = ndarray_dev();
    let p = ffm::Ffm::new(2, 5, 3, 4);
    let x = Tensor::<3>::zeros([2, 5, 3], &dev);
    let a = Tensor::<1>::zeros([3], &dev);
    let b = Tensor::<1>::zeros([5], &dev);
    match linrec::burn::ffm(&p, x, a, b, None, None) {
        Err(e) => ensure!(e.to_string().contains('b'), "error does not name b: {e}"),
        Ok(_) => fail!("a wrong shape of b was accepted"),
    }
    Ok(())
}

fn main() {
    common::main(trials![
        wgpu_scan,
        wgpu_ffm,
        wgpu_efla,
        wgpu_efla_f16,
        wgpu_selective,
        wgpu_device_sharing,
        wgpu_layers,
        ndarray_scan,
        ndarray_ffm,
        ndarray_efla,
        ndarray_efla_f16,
        ndarray_selective,
        ndarray_device_sharing,
        ndarray_layers,
        errors_name_the_argument,
    ]);
}
