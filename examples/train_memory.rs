//! Trains a small FFM model on a memory task, and a GRU of similar parameter count on the same
//! data and budget, printing both results.
//!
//! The task (cue recall, "repeat first"): each episode starts with a cue, one of 4 symbols,
//! followed by random distractor symbols (on other input channels) until the episode ends,
//! 100 to 200 steps later. At every step the model must output the episode's cue. Episodes of
//! varying length are packed into rows of 512 steps with `start` flags (the FFM resets its
//! memory there; the GRU's state is zeroed there), as a recurrent RL learner would batch them.
//! Every step with a known cue is trained on; accuracy is measured on held-out batches only at
//! steps 100 or more steps after the cue, so it needs recall across at least 100 steps
//! (chance is 25%).
//!
//! `cargo run --release --features candle --example train_memory`
//! (CPU; add `candle-cuda` for a CUDA GPU). Options: `--max-steps N` (default 600),
//! `--max-seconds S` (default 150, per model), `--seed N` (default 7), `--lr X` (AdamW, default
//! 0.01), `--models ffm,gru`, `--gap MIN-MAX` (default 100-200), `--distract P` (the chance of a
//! distractor at each step, default 1).

use candle_core::{DType, Device, Module, Result, Tensor, D};
use candle_nn::rnn::{gru, GRUConfig, GRUState, GRU, RNN};
use candle_nn::{linear, AdamW, Linear, Optimizer, ParamsAdamW, VarBuilder, VarMap};
use indicatif::{ProgressBar, ProgressStyle};
use linrec::candle::layers::{FfmCell, FfmCellConfig};
use std::time::{Duration, Instant};

const SYMBOLS: usize = 4;
/// Observation: cue one-hot, distractor one-hot.
const OBS: usize = 2 * SYMBOLS;
const ROWS: usize = 16;
const LEN: usize = 512;

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn uniform(&mut self, lo: f64, hi: f64) -> f32 {
        (lo + (hi - lo) * ((self.next() >> 11) as f64 / (1u64 << 53) as f64)) as f32
    }
}

/// Re-draw every parameter from `seed` with candle-nn's default distributions (candle cannot
/// seed its CPU generator, and a reproducible run is worth more here): Kaiming-uniform weights
/// (bound sqrt(6 / fan_in)), linear biases uniform in +-1/sqrt(fan_in); LayerNorm weights,
/// GRU biases and the FFM's learned offsets keep their constant starts.
fn seeded_init(vm: &VarMap, seed: u64) -> Result<()> {
    let mut rng = Rng(seed);
    let data = vm.data().lock().unwrap();
    let mut names: Vec<&String> = data.keys().collect();
    names.sort();
    for name in names {
        let v = &data[name];
        let dims = v.dims().to_vec();
        let bound = match (name.rsplit('.').next(), dims.as_slice()) {
            (_, _)
                if name.contains("norm") || name.contains("log_rate") || name.contains("freq") =>
            {
                continue
            }
            (Some("weight") | Some("weight_ih_l0") | Some("weight_hh_l0"), [_, fan_in]) => {
                (6.0 / *fan_in as f64).sqrt()
            }
            (Some("bias"), [n]) => {
                // the layer's fan-in is the second dim of its weight
                let w = name.trim_end_matches("bias").to_string() + "weight";
                match data.get(&w).map(|w| w.dims().to_vec()) {
                    Some(d) if d.len() == 2 => 1.0 / (d[1] as f64).sqrt(),
                    _ => 1.0 / (*n as f64).sqrt(),
                }
            }
            _ => continue,
        };
        let n: usize = dims.iter().product();
        let vals: Vec<f32> = (0..n).map(|_| rng.uniform(-bound, bound)).collect();
        v.set(&Tensor::from_vec(vals, dims.as_slice(), v.device())?)?;
    }
    Ok(())
}

/// One batch: observations `[ROWS, LEN, OBS]`, starts `[ROWS, LEN]`, and the flat indices
/// (`row * LEN + t`) and targets of the trained steps and of the evaluated steps (at least
/// `min_gap` after the cue).
struct Batch {
    obs: Tensor,
    start: Tensor,
    train: (Tensor, Tensor),
    eval: (Tensor, Tensor),
}

fn batch(rng: &mut Rng, gap: (usize, usize), distract: f64, dev: &Device) -> Result<Batch> {
    let (min_gap, max_gap) = gap;
    let mut obs = vec![0f32; ROWS * LEN * OBS];
    let mut start = vec![0u8; ROWS * LEN];
    let (mut train, mut ttarget, mut eval, mut etarget) = (vec![], vec![], vec![], vec![]);
    for r in 0..ROWS {
        // the row begins mid-episode for realism: a random offset of distractors first
        let mut t = rng.below(max_gap);
        for s in 0..t {
            if rng.uniform(0.0, 1.0) < distract as f32 {
                obs[(r * LEN + s) * OBS + SYMBOLS + rng.below(SYMBOLS)] = 1.0;
            }
        }
        while t < LEN {
            let len = min_gap + 2 + rng.below(max_gap - min_gap + 1);
            let cue = rng.below(SYMBOLS);
            start[r * LEN + t] = 1;
            obs[(r * LEN + t) * OBS + cue] = 1.0;
            for s in t..(t + len).min(LEN) {
                if s > t && rng.uniform(0.0, 1.0) < distract as f32 {
                    obs[(r * LEN + s) * OBS + SYMBOLS + rng.below(SYMBOLS)] = 1.0;
                }
                train.push((r * LEN + s) as u32);
                ttarget.push(cue as u32);
                if s - t >= min_gap {
                    eval.push((r * LEN + s) as u32);
                    etarget.push(cue as u32);
                }
            }
            t += len;
        }
    }
    let idx = |i: Vec<u32>, t: Vec<u32>| -> Result<(Tensor, Tensor)> {
        let n = i.len();
        Ok((Tensor::from_vec(i, n, dev)?, Tensor::from_vec(t, n, dev)?))
    };
    Ok(Batch {
        obs: Tensor::from_vec(obs, (ROWS, LEN, OBS), dev)?,
        start: Tensor::from_vec(start, (ROWS, LEN), dev)?,
        train: idx(train, ttarget)?,
        eval: idx(eval, etarget)?,
    })
}

/// A sequence model mapping observations to symbol logits `[ROWS, LEN, SYMBOLS]`.
trait Model {
    fn logits(&self, b: &Batch) -> Result<Tensor>;
}

struct FfmModel {
    cell: FfmCell,
    head: Linear,
}
impl Model for FfmModel {
    fn logits(&self, b: &Batch) -> Result<Tensor> {
        let (y, _) = self.cell.forward(&b.obs, None, Some(&b.start))?;
        self.head.forward(&y)
    }
}

struct GruModel {
    gru: GRU,
    head: Linear,
}
impl Model for GruModel {
    fn logits(&self, b: &Batch) -> Result<Tensor> {
        let mut state = self.gru.zero_state(ROWS)?;
        let keep = (1.0 - b.start.to_dtype(DType::F32)?)?;
        let mut hs = Vec::with_capacity(LEN);
        for t in 0..LEN {
            let h = state.h.broadcast_mul(&keep.narrow(1, t, 1)?)?;
            state = self
                .gru
                .step(&b.obs.narrow(1, t, 1)?.squeeze(1)?, &GRUState { h })?;
            hs.push(state.h.clone());
        }
        self.head.forward(&Tensor::stack(&hs, 1)?)
    }
}

/// Logits at the given flat steps.
fn at(m: &dyn Model, b: &Batch, steps: &(Tensor, Tensor)) -> Result<Tensor> {
    m.logits(b)?
        .reshape((ROWS * LEN, SYMBOLS))?
        .index_select(&steps.0, 0)
}

fn accuracy(m: &dyn Model, eval: &[Batch]) -> Result<f64> {
    let (mut hit, mut n) = (0usize, 0usize);
    for b in eval {
        let (l, t) = (at(m, b, &b.eval)?, &b.eval.1);
        let pred = l.argmax(D::Minus1)?;
        hit += pred
            .eq(t)?
            .to_dtype(DType::U32)?
            .sum_all()?
            .to_scalar::<u32>()? as usize;
        n += t.dims1()?;
    }
    Ok(hit as f64 / n.max(1) as f64)
}

struct Outcome {
    params: usize,
    steps: usize,
    wall: Duration,
    acc: f64,
    to_95: Option<(usize, Duration)>,
}

fn train(name: &str, m: &dyn Model, vm: &VarMap, dev: &Device, opts: &Opts) -> Result<Outcome> {
    let params: usize = vm.all_vars().iter().map(|v| v.elem_count()).sum();
    // a fixed order of the variables, so a seed reproduces the run
    let vars: Vec<candle_core::Var> = {
        let data = vm.data().lock().unwrap();
        let mut v: Vec<(&String, &candle_core::Var)> = data.iter().collect();
        v.sort_by(|a, b| a.0.cmp(b.0));
        v.into_iter().map(|(_, v)| v.clone()).collect()
    };
    let mut opt = AdamW::new(
        vars,
        ParamsAdamW {
            lr: opts.lr,
            weight_decay: 0.0,
            ..Default::default()
        },
    )?;
    let mut rng = Rng(opts.seed);
    let mut erng = Rng(opts.seed ^ 0xE7A1);
    let eval: Vec<Batch> = (0..4)
        .map(|_| batch(&mut erng, opts.gap, opts.distract, dev))
        .collect::<Result<_>>()?;
    let pb = ProgressBar::new(opts.max_steps as u64);
    pb.set_style(
        ProgressStyle::with_template("{prefix:>4} [{elapsed_precise}] {bar:30} {pos}/{len} {msg}")
            .expect("valid template"),
    );
    pb.set_prefix(name.to_string());
    let t0 = Instant::now();
    let (mut acc, mut to_95, mut steps) = (0.25, None, 0);
    while steps < opts.max_steps && t0.elapsed() < opts.max_time {
        let b = batch(&mut rng, opts.gap, opts.distract, dev)?;
        let loss = candle_nn::loss::cross_entropy(&at(m, &b, &b.train)?, &b.train.1)?;
        opt.backward_step(&loss)?;
        steps += 1;
        if steps % 10 == 0 {
            acc = accuracy(m, &eval)?;
            if acc >= 0.95 && to_95.is_none() {
                to_95 = Some((steps, t0.elapsed()));
            }
        }
        pb.set_position(steps as u64);
        pb.set_message(format!(
            "loss {:.3}  eval acc {:.1}%",
            loss.to_scalar::<f32>()?,
            acc * 100.0
        ));
        if acc >= 0.99 {
            break;
        }
    }
    acc = accuracy(m, &eval)?;
    pb.finish_with_message(format!("eval acc {:.1}%", acc * 100.0));
    Ok(Outcome {
        params,
        steps,
        wall: t0.elapsed(),
        acc,
        to_95,
    })
}

struct Opts {
    max_steps: usize,
    max_time: Duration,
    seed: u64,
    models: String,
    lr: f64,
    gap: (usize, usize),
    distract: f64,
}

fn opts() -> Opts {
    let mut o = Opts {
        max_steps: 600,
        max_time: Duration::from_secs(150),
        seed: 7,
        models: "ffm,gru".into(),
        lr: 1e-2,
        gap: (100, 200),
        distract: 1.0,
    };
    let args: Vec<String> = std::env::args().collect();
    for w in args.windows(2) {
        match w[0].as_str() {
            "--max-steps" => o.max_steps = w[1].parse().expect("--max-steps N"),
            "--max-seconds" => {
                o.max_time = Duration::from_secs(w[1].parse().expect("--max-seconds S"))
            }
            "--seed" => o.seed = w[1].parse().expect("--seed N"),
            "--models" => o.models = w[1].clone(),
            "--lr" => o.lr = w[1].parse().expect("--lr X"),
            "--distract" => o.distract = w[1].parse().expect("--distract P"),
            "--gap" => {
                let (a, b) = w[1].split_once('-').expect("--gap MIN-MAX");
                o.gap = (
                    a.parse().expect("--gap MIN-MAX"),
                    b.parse().expect("--gap MIN-MAX"),
                );
            }
            _ => {}
        }
    }
    o
}

fn main() -> Result<()> {
    let o = opts();
    #[cfg(feature = "candle-cuda")]
    let dev = Device::cuda_if_available(0)?;
    #[cfg(not(feature = "candle-cuda"))]
    let dev = Device::Cpu;
    println!(
        "cue recall across {}-{} steps; {ROWS} rows x {LEN} steps per batch, episodes packed with resets; device {dev:?}",
        o.gap.0, o.gap.1
    );
    println!(
        "budget per model: {} steps or {} s",
        o.max_steps,
        o.max_time.as_secs()
    );

    let vm = VarMap::new();
    let vb = VarBuilder::from_varmap(&vm, DType::F32, &dev);
    let cfg = FfmCellConfig {
        max_horizon: 512.0,
        ..FfmCellConfig::new(OBS, 32, 32, 4)
    };
    let ffm = FfmModel {
        cell: FfmCell::new(cfg, vb.pp("ffm"))?,
        head: linear(32, SYMBOLS, vb.pp("head"))?,
    };
    seeded_init(&vm, o.seed)?;
    let mut results = Vec::new();
    if o.models.contains("ffm") {
        results.push(("FFM", train("FFM", &ffm, &vm, &dev, &o)?));
    }

    let vm = VarMap::new();
    let vb = VarBuilder::from_varmap(&vm, DType::F32, &dev);
    let hidden = 52; // about the FFM's parameter count
    let g = GruModel {
        gru: gru(OBS, hidden, GRUConfig::default(), vb.pp("gru"))?,
        head: linear(hidden, SYMBOLS, vb.pp("head"))?,
    };
    seeded_init(&vm, o.seed)?;
    if o.models.contains("gru") {
        results.push(("GRU", train("GRU", &g, &vm, &dev, &o)?));
    }

    println!();
    println!(
        "{:<5} {:>7} {:>6} {:>9} {:>10} {:>12}",
        "model", "params", "steps", "wall", "eval acc", "time to 95%"
    );
    for (n, x) in &results {
        println!(
            "{:<5} {:>7} {:>6} {:>8.1}s {:>9.1}% {:>12}",
            n,
            x.params,
            x.steps,
            x.wall.as_secs_f64(),
            x.acc * 100.0,
            x.to_95.map_or("not reached".to_string(), |(k, d)| format!(
                "{:.1}s ({k} steps)",
                d.as_secs_f64()
            ))
        );
    }
    Ok(())
}
