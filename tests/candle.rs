//! linrec ops through candle's autograd: `loss.backward()` gives every input's gradient, equal
//! to linrec's f64 reference backward, on randomized inputs (CPU tensors; CUDA tensors with
//! feature `candle-cuda` on a GPU).

mod common;
use candle_core::backprop::GradStore;
use candle_core::{Device as CDevice, Tensor, Var};
use common::*;
use linrec::ops::Problem;
use linrec::{efla, ffm, scan, selective, Device};

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
/// `sum(out * g) + sum(fin * gf)`: its gradient with respect to `out` is `g`, to `fin` `gf`.
fn probe_loss(
    dev: &CDevice,
    out: &Tensor,
    g: &[f64],
    fin: &Tensor,
    gf: &[f64],
) -> Result<Tensor, Stop> {
    let term = |t: &Tensor, w: &[f64]| -> Result<Tensor, Stop> {
        t.mul(&cst(dev, t.dims(), w))
            .and_then(|x| x.sum_all())
            .map_err(ce)
    };
    (term(out, g)? + term(fin, gf)?).map_err(ce)
}
/// The gradient candle computed for `v` against the reference's `want`.
fn grad_close(
    tag: &str,
    grads: &GradStore,
    name: impl std::fmt::Display,
    v: &Var,
    want: &[f64],
) -> T {
    let got = grads
        .get(v.as_tensor())
        .ok_or_else(|| Stop::Fail(format!("{tag}: no gradient for {name}")))?;
    close(&format!("{tag} {name}"), &host(got), want, 1e-4)
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
        let n = |s| p.spec(s).numel();
        let sh = |s| p.spec(s).shape;
        let x = f32_exact(&rng.vec(n(scan::Arg::X), -1.0, 1.0));
        let a = f32_exact(&rng.vec(n(scan::Arg::A), -0.9, 0.9));
        let h0 = f32_exact(&rng.vec(n(scan::Arg::H0), -1.0, 1.0));
        let g = f32_exact(&rng.vec(n(scan::Arg::H), -1.0, 1.0));
        let gf = f32_exact(&rng.vec(n(scan::Arg::HFinal), -1.0, 1.0));
        let st = starts.then(|| rng.flags(n(scan::Arg::Start), 0.1));
        let (xv, av, h0v) = (
            var(dev, &sh(scan::Arg::X), &x),
            var(dev, &sh(scan::Arg::A), &a),
            var(dev, &sh(scan::Arg::H0), &h0),
        );
        let stt = st
            .as_ref()
            .map(|s| Tensor::from_vec(s.clone(), sh(scan::Arg::Start), dev).unwrap());
        let (h, hf) =
            linrec::candle::linear_scan(&p, &xv, &av, Some(&h0v), stt.as_ref()).map_err(ce)?;
        let loss = probe_loss(dev, &h, &g, &hf, &gf)?;
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
            (scan::Arg::Dx, &xv, &rg.dx),
            (scan::Arg::Da, &av, &rg.da),
            (scan::Arg::Dh0, &h0v, &rg.dh0),
        ] {
            grad_close(&tag, &grads, name, v, want)?;
        }
    }
    Ok(())
}

/// FFM through candle: every gradient (x, a, b, s0) vs the f64 reference.
fn ffm_on(dev: &CDevice, what: &str) -> T {
    let mut rng = Rng::new(12);
    for (k, starts) in [false, true].into_iter().enumerate() {
        let p = ffm::Ffm::new(2, 29, 3, 5);
        let n = |s| p.spec(s).numel();
        let sh = |s| p.spec(s).shape;
        let x = f32_exact(&rng.vec(n(ffm::Arg::X), -1.0, 1.0));
        let a = f32_exact(&rng.vec(n(ffm::Arg::A), -0.5, -0.01));
        let b = f32_exact(&rng.vec(n(ffm::Arg::B), -1.0, 1.0));
        let s0 = f32_exact(&rng.vec(n(ffm::Arg::S0), -1.0, 1.0));
        let g = f32_exact(&rng.vec(n(ffm::Arg::S), -1.0, 1.0));
        let gf = f32_exact(&rng.vec(n(ffm::Arg::SFinal), -1.0, 1.0));
        let st = starts.then(|| rng.flags(n(ffm::Arg::Start), 0.1));
        let (xv, av, bv, s0v) = (
            var(dev, &sh(ffm::Arg::X), &x),
            var(dev, &sh(ffm::Arg::A), &a),
            var(dev, &sh(ffm::Arg::B), &b),
            var(dev, &sh(ffm::Arg::S0), &s0),
        );
        let stt = st
            .as_ref()
            .map(|s| Tensor::from_vec(s.clone(), sh(ffm::Arg::Start), dev).unwrap());
        let (s, sf) =
            linrec::candle::ffm(&p, &xv, &av, &bv, Some(&s0v), stt.as_ref()).map_err(ce)?;
        let loss = probe_loss(dev, &s, &g, &sf, &gf)?;
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
            (ffm::Arg::Dx, &xv, &rg.dx),
            (ffm::Arg::Da, &av, &rg.da),
            (ffm::Arg::Db, &bv, &rg.db),
            (ffm::Arg::Ds0, &s0v, &rg.ds0),
        ] {
            grad_close(&tag, &grads, name, v, want)?;
        }
    }
    Ok(())
}

/// EFLA through candle (both rules): every gradient vs the f64 reference.
fn efla_on(dev: &CDevice, what: &str) -> T {
    use linrec::efla::{Efla, EflaBackwardInputs, EflaInputs};
    let mut rng = Rng::new(13);
    for (k, delta) in [false, true].into_iter().enumerate() {
        let mut p = Efla::new(2, 21, 2, 5, 3).chunked(8);
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
        let vars = [
            (efla::Arg::Q, &q),
            (efla::Arg::K, &kk),
            (efla::Arg::V, &v),
            (efla::Arg::Beta, &beta),
            (efla::Arg::S0, &s0),
        ]
        .map(|(nm, x)| var(dev, &sh(nm), x));
        let stt = Tensor::from_vec(st.clone(), sh(efla::Arg::Start), dev).unwrap();
        let (o, sf) = linrec::candle::efla(
            &p,
            &vars[0],
            &vars[1],
            &vars[2],
            &vars[3],
            Some(&vars[4]),
            Some(&stt),
        )
        .map_err(ce)?;
        let loss = probe_loss(dev, &o, &g, &sf, &gf)?;
        let grads = loss.backward().map_err(ce)?;
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
        close(&format!("{tag} o"), &host(&o), &r.o, 1e-5)?;
        for (name, v, want) in [
            (efla::Arg::Dq, &vars[0], &rg.dq),
            (efla::Arg::Dk, &vars[1], &rg.dk),
            (efla::Arg::Dv, &vars[2], &rg.dv),
            (efla::Arg::Dbeta, &vars[3], &rg.dbeta),
            (efla::Arg::Ds0, &vars[4], &rg.ds0),
        ] {
            grad_close(&tag, &grads, name, v, want)?;
        }
    }
    Ok(())
}

/// The selective scan through candle (with and without z, fixed and input-dependent B/C):
/// every gradient vs the f64 reference.
fn selective_on(dev: &CDevice, what: &str) -> T {
    use linrec::selective::{SelectiveBackwardInputs, SelectiveInputs, SelectiveScan};
    let mut rng = Rng::new(14);
    for (k, (fixed, with_z)) in [(false, true), (true, false)].into_iter().enumerate() {
        let mut p = SelectiveScan::new(2, 19, 4, 3).softplus();
        p = if fixed { p.fixed_bc() } else { p.groups(2) };
        let n = |s| p.spec(s).numel();
        let sh = |s| p.spec(s).shape;
        use selective::Arg;
        let names = [
            Arg::U,
            Arg::Delta,
            Arg::A,
            Arg::Bm,
            Arg::Cm,
            Arg::Dskip,
            Arg::Z,
            Arg::DeltaBias,
            Arg::H0,
        ];
        let vals: Vec<Vec<f64>> = names
            .iter()
            .map(|&nm| match nm {
                Arg::A => f32_exact(&rng.vec(n(nm), -1.0, -0.1)),
                Arg::Delta => f32_exact(&rng.vec(n(nm), -1.0, 0.5)),
                _ => f32_exact(&rng.vec(n(nm), -1.0, 1.0)),
            })
            .collect();
        let g = f32_exact(&rng.vec(n(selective::Arg::Out), -1.0, 1.0));
        let gf = f32_exact(&rng.vec(n(selective::Arg::HFinal), -1.0, 1.0));
        let st = rng.flags(n(selective::Arg::Start), 0.1);
        let vars: Vec<Var> = names
            .iter()
            .zip(&vals)
            .map(|(&nm, v)| var(dev, &sh(nm), v))
            .collect();
        let stt = Tensor::from_vec(st.clone(), sh(selective::Arg::Start), dev).unwrap();
        let args = SelectiveInputs {
            u: vars[0].as_tensor(),
            delta: vars[1].as_tensor(),
            a: vars[2].as_tensor(),
            bm: vars[3].as_tensor(),
            cm: vars[4].as_tensor(),
            dskip: Some(vars[5].as_tensor()),
            z: with_z.then(|| vars[6].as_tensor()),
            delta_bias: Some(vars[7].as_tensor()),
            h0: Some(vars[8].as_tensor()),
            start: Some(&stt),
        };
        let (out, hf) = linrec::candle::selective_scan(&p, &args).map_err(ce)?;
        let loss = probe_loss(dev, &out, &g, &hf, &gf)?;
        let grads = loss.backward().map_err(ce)?;
        let z = with_z.then(|| &vals[6][..]);
        let rg = linrec::selective::reference::backward(
            &p,
            &SelectiveBackwardInputs {
                u: &vals[0][..],
                delta: &vals[1][..],
                a: &vals[2][..],
                bm: &vals[3][..],
                cm: &vals[4][..],
                dskip: Some(&vals[5][..]),
                z,
                delta_bias: Some(&vals[7][..]),
                h0: Some(&vals[8][..]),
                start: Some(&st[..]),
                grad_out: &g[..],
                grad_final: Some(&gf[..]),
            },
        )?;
        let tag = format!("{what} selective case {k}");
        let want = [
            &rg.du,
            &rg.ddelta,
            &rg.da,
            &rg.dbm,
            &rg.dcm,
            &rg.ddskip,
            &rg.dz,
            &rg.ddelta_bias,
            &rg.dh0,
        ];
        for (i, nm) in names.iter().enumerate() {
            if *nm == Arg::Z && !with_z {
                ensure!(
                    grads.get(vars[i].as_tensor()).is_none(),
                    "{tag}: an absent z got a gradient"
                );
                continue;
            }
            grad_close(&tag, &grads, format!("d{nm}"), &vars[i], want[i])?;
        }
    }
    Ok(())
}

/// The layers: every parameter gets a finite gradient, and two calls chained through the
/// returned state equal one call over the whole sequence.
fn layers_train_and_chain() -> T {
    use candle_nn::{VarBuilder, VarMap};
    use linrec::candle::layers::{EflaAttention, EflaAttentionConfig, FfmCell, FfmCellConfig};
    let dev = CDevice::Cpu;
    let mut rng = Rng::new(15);
    let (b, t, d) = (2, 24, 6);
    let x = cst(&dev, &[b, t, d], &rng.vec(b * t * d, -1.0, 1.0));
    let flags: Vec<u8> = (0..b * t).map(|i| u8::from(i % t == 9)).collect();
    let start = Tensor::from_vec(flags, (b, t), &dev).unwrap();
    type Run<'a> = Box<
        dyn Fn(&Tensor, Option<&Tensor>, &Tensor) -> candle_core::Result<(Tensor, Tensor)> + 'a,
    >;
    let vm = VarMap::new();
    let vb = VarBuilder::from_varmap(&vm, candle_core::DType::F32, &dev);
    let cell = FfmCell::new(FfmCellConfig::new(d, 5, 4, 3), vb.pp("ffm")).map_err(ce)?;
    let vm2 = VarMap::new();
    let vb2 = VarBuilder::from_varmap(&vm2, candle_core::DType::F32, &dev);
    let mut cfg = EflaAttentionConfig::new(d, 2);
    cfg.algorithm = linrec::efla::Algorithm::Chunked { chunk: 8 };
    let attn = EflaAttention::new(cfg, vb2.pp("attn")).map_err(ce)?;
    let mut dcfg = cfg;
    dcfg.rule = linrec::efla::Rule::Delta;
    let delta = EflaAttention::new(dcfg, vb2.pp("delta")).map_err(ce)?;
    let runs: Vec<(&str, Run, &VarMap)> = vec![
        (
            "ffm cell",
            Box::new(|x, s, st| cell.forward(x, s, Some(st))),
            &vm,
        ),
        (
            "efla attention",
            Box::new(|x, s, st| attn.forward(x, s, Some(st))),
            &vm2,
        ),
        (
            "delta attention",
            Box::new(|x, s, st| delta.forward(x, s, Some(st))),
            &vm2,
        ),
    ];
    for (name, run, vm) in runs {
        let (y, _) = run(&x, None, &start).map_err(ce)?;
        let grads = y
            .sqr()
            .map_err(ce)?
            .sum_all()
            .map_err(ce)?
            .backward()
            .map_err(ce)?;
        for v in vm.all_vars() {
            if let Some(g) = grads.get(v.as_tensor()) {
                ensure!(
                    host(g).iter().all(|x| x.is_finite()),
                    "{name}: non-finite gradient"
                );
            }
        }
        let prefix = if name.starts_with("delta") {
            "delta"
        } else if name.starts_with("efla") {
            "attn"
        } else {
            "ffm"
        };
        let data = vm.data().lock().unwrap();
        let missing: Vec<&String> = data
            .keys()
            .filter(|k| k.starts_with(prefix) && grads.get(data[*k].as_tensor()).is_none())
            .collect();
        ensure!(
            missing.is_empty(),
            "{name}: parameters without a gradient: {missing:?}"
        );
        drop(data);
        let cut = 13;
        let (y1, s1) = run(
            &x.narrow(1, 0, cut).map_err(ce)?,
            None,
            &start.narrow(1, 0, cut).map_err(ce)?,
        )
        .map_err(ce)?;
        let (y2, _) = run(
            &x.narrow(1, cut, t - cut).map_err(ce)?,
            Some(&s1),
            &start.narrow(1, cut, t - cut).map_err(ce)?,
        )
        .map_err(ce)?;
        let chained = Tensor::cat(&[y1, y2], 1).map_err(ce)?;
        close(
            &format!("{name}: chained"),
            &host(&chained),
            &host(&y),
            1e-5,
        )?;
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

/// Layer configurations are checked before any parameter is made: each bad one is a linrec
/// `Value` error naming the field (not candle's unrelated message about a distribution).
fn layer_configs_are_validated() -> T {
    use candle_nn::{VarBuilder, VarMap};
    use linrec::candle::layers::{EflaAttention, EflaAttentionConfig, FfmCell, FfmCellConfig};
    let dev = CDevice::Cpu;
    let vm = VarMap::new();
    let vb = VarBuilder::from_varmap(&vm, candle_core::DType::F32, &dev);
    let expect = |what: &str, r: Result<(), candle_core::Error>, arg: &str| -> T {
        match r {
            Ok(()) => fail!("{what} was accepted"),
            Err(e) => {
                ensure!(
                    e.to_string().contains(&format!("`{arg}`")),
                    "{what}: the message does not name `{arg}`: {e}"
                );
                Ok(())
            }
        }
    };
    let ffm = |f: &dyn Fn(&mut FfmCellConfig)| {
        let mut c = FfmCellConfig::new(4, 3, 8, 2);
        f(&mut c);
        FfmCell::new(c, vb.pp("ffm")).map(|_| ())
    };
    expect("memory = 0", ffm(&|c| c.memory = 0), "memory")?;
    expect("context = 0", ffm(&|c| c.context = 0), "context")?;
    expect("input = 0", ffm(&|c| c.input = 0), "input")?;
    expect(
        "a NaN horizon",
        ffm(&|c| c.min_horizon = f64::NAN),
        "min_horizon",
    )?;
    expect(
        "an infinite horizon",
        ffm(&|c| c.max_horizon = f64::INFINITY),
        "max_horizon",
    )?;
    expect(
        "max < min horizon",
        ffm(&|c| c.max_horizon = 0.5),
        "max_horizon",
    )?;
    ffm(&|_| {}).map_err(ce)?;
    let efla = |c: EflaAttentionConfig| EflaAttention::new(c, vb.pp("efla")).map(|_| ());
    expect("heads = 0", efla(EflaAttentionConfig::new(8, 0)), "heads")?;
    expect(
        "model = 6, heads = 4",
        efla(EflaAttentionConfig::new(6, 4)),
        "heads",
    )?;
    let mut wide = EflaAttentionConfig::new(8, 2);
    wide.key_dim = 257;
    expect("key_dim = 257", efla(wide), "key_dim")?;
    efla(EflaAttentionConfig::new(8, 2)).map_err(ce)?;
    Ok(())
}

fn cpu_scan() -> T {
    scan_on(&CDevice::Cpu, "cpu")
}
fn cpu_ffm() -> T {
    ffm_on(&CDevice::Cpu, "cpu")
}
fn cpu_efla() -> T {
    efla_on(&CDevice::Cpu, "cpu")
}
fn cpu_selective() -> T {
    selective_on(&CDevice::Cpu, "cpu")
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
fn cuda_efla() -> T {
    efla_on(&cuda_dev()?, "cuda")
}
fn cuda_selective() -> T {
    selective_on(&cuda_dev()?, "cuda")
}

fn main() {
    let _ = Device::Cpu;
    common::main(trials![
        cpu_scan,
        cpu_ffm,
        cpu_efla,
        cpu_selective,
        layers_train_and_chain,
        candle_errors_name_the_argument,
        layer_configs_are_validated,
        cuda_scan,
        cuda_ffm,
        cuda_efla,
        cuda_selective,
    ]);
}
