//! Trains the FFM model of `examples/train_memory.rs` on the same memory task with burn:
//! linrec's FFM op on burn's wgpu device (any Vulkan / Metal / DX12 GPU, or lavapipe) by
//! default, or on burn's ndarray CPU backend with `--cpu`, through burn's autodiff and Adam.
//!
//! The task (cue recall): each episode starts with a cue, one of 4 symbols, followed by random
//! distractor symbols until the episode ends 100 to 200 steps later; at every step the model
//! must output the episode's cue. Episodes are packed into rows of 512 steps with reset flags.
//! Accuracy is measured on held-out batches at steps 100 or more after the cue (chance 25%).
//!
//! `cargo run --release --features burn --example train_memory_burn [-- --cpu]`. Options:
//! `--max-steps N` (default 600), `--max-seconds S` (default 300), `--seed N` (default 7),
//! `--lr X` (Adam, default 0.01), `--gap MIN-MAX` (default 100-200).

use burn::module::Module;
use burn::nn::loss::CrossEntropyLossConfig;
use burn::nn::{Linear, LinearConfig};
use burn::optim::{AdamConfig, GradientsParams};
use burn::tensor::{Device, Int, Tensor, TensorData};
use indicatif::{ProgressBar, ProgressStyle};
use linrec::burn::layers::{FfmCell, FfmCellConfig};
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
}

/// One batch: observations `[ROWS, LEN, OBS]`, starts `[ROWS, LEN]`, and the flat indices
/// (`row * LEN + t`) and targets of the trained steps and of the evaluated steps.
struct Batch {
    obs: Tensor<3>,
    start: Tensor<2, Int>,
    train: (Tensor<1, Int>, Tensor<1, Int>),
    eval: (Tensor<1, Int>, Vec<i64>),
}

fn batch(rng: &mut Rng, gap: (usize, usize), dev: &Device) -> Batch {
    let (min_gap, max_gap) = gap;
    let mut obs = vec![0f32; ROWS * LEN * OBS];
    let mut start = vec![0i32; ROWS * LEN];
    let (mut train, mut ttarget, mut eval, mut etarget) = (vec![], vec![], vec![], vec![]);
    for r in 0..ROWS {
        let mut t = rng.below(max_gap);
        for s in 0..t {
            obs[(r * LEN + s) * OBS + SYMBOLS + rng.below(SYMBOLS)] = 1.0;
        }
        while t < LEN {
            let len = min_gap + 2 + rng.below(max_gap - min_gap + 1);
            let cue = rng.below(SYMBOLS);
            start[r * LEN + t] = 1;
            obs[(r * LEN + t) * OBS + cue] = 1.0;
            for s in t..(t + len).min(LEN) {
                if s > t {
                    obs[(r * LEN + s) * OBS + SYMBOLS + rng.below(SYMBOLS)] = 1.0;
                }
                train.push((r * LEN + s) as i64);
                ttarget.push(cue as i64);
                if s - t >= min_gap {
                    eval.push((r * LEN + s) as i64);
                    etarget.push(cue as i64);
                }
            }
            t += len;
        }
    }
    let ints = |v: Vec<i64>| {
        let n = v.len();
        Tensor::<1, Int>::from_data(TensorData::new(v, [n]), dev)
    };
    Batch {
        obs: Tensor::from_data(TensorData::new(obs, [ROWS, LEN, OBS]), dev),
        start: Tensor::from_data(TensorData::new(start, [ROWS, LEN]), dev),
        train: (ints(train), ints(ttarget)),
        eval: (ints(eval), etarget),
    }
}

#[derive(Module, Debug)]
struct FfmModel {
    cell: FfmCell,
    head: Linear,
}

impl FfmModel {
    /// Logits `[ROWS * LEN, SYMBOLS]` at the flat steps `idx`.
    fn logits(&self, b: &Batch, idx: &Tensor<1, Int>) -> Tensor<2> {
        let (y, _) = self
            .cell
            .forward(b.obs.clone(), None, Some(b.start.clone()))
            .expect("linrec FFM");
        self.head
            .forward(y)
            .reshape([ROWS * LEN, SYMBOLS])
            .select(0, idx.clone())
    }
}

fn accuracy(m: &FfmModel, eval: &[Batch]) -> f64 {
    let (mut hit, mut n) = (0usize, 0usize);
    for b in eval {
        let pred = m.logits(b, &b.eval.0).argmax(1);
        let pred = pred
            .into_data()
            .convert::<i64>()
            .try_to_vec::<i64>()
            .unwrap();
        hit += pred.iter().zip(&b.eval.1).filter(|(p, t)| p == t).count();
        n += b.eval.1.len();
    }
    hit as f64 / n.max(1) as f64
}

struct Opts {
    cpu: bool,
    max_steps: usize,
    max_time: Duration,
    seed: u64,
    lr: f64,
    gap: (usize, usize),
}

fn opts() -> Opts {
    let mut o = Opts {
        cpu: false,
        max_steps: 600,
        max_time: Duration::from_secs(300),
        seed: 7,
        lr: 1e-2,
        gap: (100, 200),
    };
    let args: Vec<String> = std::env::args().collect();
    o.cpu = args.iter().any(|a| a == "--cpu");
    for w in args.windows(2) {
        match w[0].as_str() {
            "--max-steps" => o.max_steps = w[1].parse().expect("--max-steps N"),
            "--max-seconds" => {
                o.max_time = Duration::from_secs(w[1].parse().expect("--max-seconds S"))
            }
            "--seed" => o.seed = w[1].parse().expect("--seed N"),
            "--lr" => o.lr = w[1].parse().expect("--lr X"),
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

fn main() -> linrec::Result<()> {
    let o = opts();
    #[allow(deprecated)] // burn 0.22 deprecates ndarray for burn-flex; it still ships it
    let base = if o.cpu {
        Device::ndarray()
    } else {
        linrec::burn::wgpu_device()?
    };
    base.seed(o.seed);
    let dev = base.clone().autodiff();
    println!(
        "cue recall across {}-{} steps; {ROWS} rows x {LEN} steps per batch, episodes packed with resets; burn device {base:?}",
        o.gap.0, o.gap.1
    );
    let cfg = FfmCellConfig {
        max_horizon: 512.0,
        ..FfmCellConfig::new(OBS, 32, 32, 4)
    };
    let mut model = FfmModel {
        cell: FfmCell::new(cfg, &dev)?,
        head: LinearConfig::new(32, SYMBOLS).init(&dev),
    };
    let params = model.num_params();
    let mut opt = AdamConfig::new().init();
    let loss_fn = CrossEntropyLossConfig::new().init(&dev);
    let mut rng = Rng(o.seed);
    let mut erng = Rng(o.seed ^ 0xE7A1);
    let eval: Vec<Batch> = (0..4).map(|_| batch(&mut erng, o.gap, &base)).collect();
    let pb = ProgressBar::new(o.max_steps as u64);
    pb.set_style(
        ProgressStyle::with_template("FFM [{elapsed_precise}] {bar:30} {pos}/{len} {msg}")
            .expect("valid template"),
    );
    let t0 = Instant::now();
    let (mut acc, mut to_95, mut steps) = (0.25, None, 0);
    let mut step_time = Duration::ZERO;
    while steps < o.max_steps && t0.elapsed() < o.max_time {
        let b = batch(&mut rng, o.gap, &dev);
        let ts = Instant::now();
        let logits = model.logits(&b, &b.train.0);
        let loss = loss_fn.forward(logits, b.train.1.clone());
        let lv = loss.clone().into_scalar::<f32>();
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        model = opt.step(o.lr, model, grads);
        step_time += ts.elapsed();
        steps += 1;
        if steps % 10 == 0 {
            acc = accuracy(&model.valid(), &eval);
            if acc >= 0.95 && to_95.is_none() {
                to_95 = Some((steps, t0.elapsed()));
            }
        }
        pb.set_position(steps as u64);
        pb.set_message(format!(
            "loss {lv:.3}  eval acc {:.1}%  {:.0} ms/step",
            acc * 100.0,
            step_time.as_secs_f64() * 1e3 / steps as f64
        ));
        if acc >= 0.99 {
            break;
        }
    }
    acc = accuracy(&model.valid(), &eval);
    pb.finish_with_message(format!("eval acc {:.1}%", acc * 100.0));
    println!();
    println!(
        "FFM (burn, {}): {params} params, {steps} steps in {:.1} s ({:.0} ms per training step), eval acc {:.1}%, time to 95%: {}",
        if o.cpu { "ndarray" } else { "wgpu" },
        t0.elapsed().as_secs_f64(),
        step_time.as_secs_f64() * 1e3 / steps.max(1) as f64,
        acc * 100.0,
        to_95.map_or("not reached".to_string(), |(k, d)| format!(
            "{:.1} s ({k} steps)",
            d.as_secs_f64()
        ))
    );
    Ok(())
}
