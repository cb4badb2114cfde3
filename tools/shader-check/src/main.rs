//! `linrec-shader-check SHADERS_DIR [PIPELINE_LOG]`: translates every WGSL kernel of linrec
//! with naga to SPIR-V (Vulkan), MSL 2.4 (Metal), HLSL SM 6.2 (DX12) and GLSL ES 3.1 (wgpu's GL
//! backend; variants that need subgroups or `f16` are not for GL), with the override constants
//! resolved, and counts the storage buffers and workgroup memory each kernel needs.
//!
//! The kernels checked: every `//! variant:` define set of every shader with its overrides'
//! default values, and every pipeline the test suite built (`PIPELINE_LOG`, written by
//! linrec when `LINREC_WGPU_PIPELINE_LOG` names a file), with the constants it ran with. A
//! logged pipeline built on a device with WebGPU's default limits must fit them (8 storage
//! buffers per stage, 16 KiB of workgroup memory): an independent count of what the runtime
//! check decided. A failure names the file, the variant, the constants and, where naga gives
//! one, the line. Exit status 1 on any failure.

#[path = "../../../src/shader_pp.rs"]
#[allow(dead_code)]
mod shader_pp;

use naga::back::{glsl, hlsl, msl, spv};
use naga::valid::{Capabilities, ValidationFlags, Validator};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// One kernel to check.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Job {
    shader: String,
    entry: String,
    defines: Vec<String>,
    /// `name=value` pairs, sorted.
    constants: Vec<(String, String)>,
    /// Built on a device with WebGPU's default limits (from the log).
    small: bool,
}

struct Needs {
    storage: u32,
    workgroup: u64,
}

fn files(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut v: Vec<_> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .flatten()
        .map(|e| e.path())
        .collect();
    v.sort();
    for p in v {
        if p.is_dir() {
            files(&p, out);
        } else if p.extension().is_some_and(|e| e == "wgsl") {
            out.push(p);
        }
    }
}

fn check(root: &Path, job: &Job) -> Result<Needs, String> {
    let lookup = |n: &str| std::fs::read_to_string(root.join(n)).ok();
    let d: Vec<&str> = job.defines.iter().map(String::as_str).collect();
    let exp = shader_pp::expand(&job.shader, &d, &lookup)?;
    let at = |loc: Option<naga::SourceLocation>| {
        loc.map_or(String::new(), |l| {
            format!(" at {}", exp.locate(l.line_number as usize))
        })
    };
    let module = naga::front::wgsl::parse_str(&exp.source)
        .map_err(|e| format!("parse{}: {e}", at(e.location(&exp.source))))?;
    let info = Validator::new(ValidationFlags::all(), Capabilities::all())
        .validate(&module)
        .map_err(|e| {
            format!(
                "validation{}: {}",
                at(e.location(&exp.source)),
                e.as_inner()
            )
        })?;
    let mut pc = naga::back::PipelineConstants::default();
    for (k, v) in &job.constants {
        let v: f64 = v.parse().map_err(|_| format!("constant {k}={v}"))?;
        pc.insert(k.clone(), v);
    }
    let stage = naga::ShaderStage::Compute;
    let (module, info) = naga::back::pipeline_constants::process_overrides(
        &module,
        &info,
        Some((stage, &job.entry)),
        &pc,
    )
    .map_err(|e| format!("overrides: {e}"))?;
    let index = module
        .entry_points
        .iter()
        .position(|e| e.name == job.entry)
        .ok_or_else(|| format!("no entry point {}", job.entry))?;

    spv::write_vec(
        &module,
        &info,
        &spv::Options::default(),
        Some(&spv::PipelineOptions {
            shader_stage: stage,
            entry_point: job.entry.clone(),
        }),
    )
    .map_err(|e| format!("SPIR-V: {e}"))?;
    msl::write_string(
        &module,
        &info,
        &msl::Options {
            lang_version: (2, 4),
            fake_missing_bindings: true,
            ..Default::default()
        },
        &msl::PipelineOptions {
            entry_point: Some((stage, job.entry.clone())),
            ..Default::default()
        },
    )
    .map_err(|e| format!("MSL 2.4: {e}"))?;
    let mut hl = String::new();
    hlsl::Writer::new(
        &mut hl,
        &hlsl::Options {
            shader_model: hlsl::ShaderModel::V6_2,
            ..Default::default()
        },
        &hlsl::PipelineOptions {
            entry_point: Some((stage, job.entry.clone())),
        },
    )
    .write(&module, &info, None)
    .map_err(|e| format!("HLSL SM 6.2: {e}"))?;
    if !job.defines.iter().any(|d| d == "SUBGROUP" || d == "F16") {
        let mut gl = String::new();
        glsl::Writer::new(
            &mut gl,
            &module,
            &info,
            &glsl::Options::default(),
            &glsl::PipelineOptions {
                shader_stage: stage,
                entry_point: job.entry.clone(),
                multiview: None,
            },
            naga::proc::BoundsCheckPolicies::default(),
        )
        .and_then(|mut w| w.write())
        .map_err(|e| format!("GLSL ES 3.1: {e}"))?;
    }

    let used = info.get_entry_point(index);
    let mut n = Needs {
        storage: 0,
        workgroup: 0,
    };
    for (h, g) in module.global_variables.iter() {
        if used[h].is_empty() {
            continue;
        }
        match g.space {
            naga::AddressSpace::Storage { .. } => n.storage += 1,
            naga::AddressSpace::WorkGroup => {
                let size = module.types[g.ty].inner.size(module.to_ctx()) as u64;
                n.workgroup += size.div_ceil(16) * 16;
            }
            _ => {}
        }
    }
    Ok(n)
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(root) = args.first().map(PathBuf::from) else {
        eprintln!("usage: linrec-shader-check SHADERS_DIR [PIPELINE_LOG]");
        std::process::exit(2);
    };
    let mut jobs = std::collections::BTreeSet::new();
    let mut paths = Vec::new();
    files(&root, &mut paths);
    for p in &paths {
        let name = p
            .strip_prefix(&root)
            .unwrap()
            .to_string_lossy()
            .replace('\\', "/");
        let text = std::fs::read_to_string(p).unwrap();
        if shader_pp::is_include_only(&text) {
            continue;
        }
        for defines in shader_pp::variants(&text) {
            // the entry points, from the variant's expanded source
            let lookup = |n: &str| std::fs::read_to_string(root.join(n)).ok();
            let d: Vec<&str> = defines.iter().map(String::as_str).collect();
            let entries: Vec<String> = shader_pp::expand(&name, &d, &lookup)
                .ok()
                .and_then(|e| naga::front::wgsl::parse_str(&e.source).ok())
                .map(|m| m.entry_points.iter().map(|e| e.name.clone()).collect())
                .unwrap_or_else(|| vec!["main".into()]);
            for entry in entries {
                jobs.insert(Job {
                    shader: name.clone(),
                    entry,
                    defines: defines.clone(),
                    constants: Vec::new(),
                    small: false,
                });
            }
        }
    }
    let declared = jobs.len();
    if let Some(log) = args.get(1) {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        for line in text.lines() {
            let f: Vec<&str> = line.split('\t').collect();
            if f.len() != 5 {
                continue;
            }
            let mut constants: Vec<(String, String)> = f[3]
                .split(',')
                .filter(|s| !s.is_empty())
                .filter_map(|kv| kv.split_once('='))
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            constants.sort();
            jobs.insert(Job {
                shader: f[0].to_string(),
                entry: f[1].to_string(),
                defines: f[2].split_whitespace().map(str::to_string).collect(),
                constants,
                small: f[4] == "webgpu",
            });
        }
    }
    let mut failed = 0;
    // per (shader, variant): the most storage buffers and workgroup bytes over its constants
    let mut table: BTreeMap<(String, String), (u32, u64)> = BTreeMap::new();
    for job in &jobs {
        let what = format!(
            "shaders/{} (variant [{}], entry {}, constants {{{}}})",
            job.shader,
            job.defines.join(" "),
            job.entry,
            job.constants
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(", ")
        );
        match check(&root, job) {
            Err(e) => {
                failed += 1;
                println!("error: {what}: {e}");
            }
            Ok(n) => {
                let key = (job.shader.clone(), job.defines.join(" "));
                let t = table.entry(key).or_default();
                t.0 = t.0.max(n.storage);
                t.1 = t.1.max(n.workgroup);
                if job.small && (n.storage > 8 || n.workgroup > 16384) {
                    failed += 1;
                    println!(
                        "error: {what}: built on a device with WebGPU's default limits but needs \
                         {} storage buffers and {} bytes of workgroup memory (limits 8, 16384)",
                        n.storage, n.workgroup
                    );
                }
            }
        }
    }
    println!("kernel variant                                        storage  workgroup bytes");
    for ((shader, variant), (st, wg)) in &table {
        let mark = if *st > 8 || *wg > 16384 {
            "  > WebGPU defaults"
        } else {
            ""
        };
        println!(
            "{:<54}{st:>7}  {wg:>15}{mark}",
            format!("{shader} [{variant}]")
        );
    }
    let small = jobs.iter().filter(|j| j.small).count();
    println!(
        "{} kernels ({declared} declared variants x entry points with default overrides, {} \
         pipelines from the test log, {small} of them built under WebGPU's default limits): \
         SPIR-V, MSL 2.4, HLSL SM 6.2, GLSL ES 3.1: {} passed, {failed} failed",
        jobs.len(),
        jobs.len() - declared,
        jobs.len() - failed.min(jobs.len()),
    );
    if failed > 0 {
        std::process::exit(1);
    }
}
