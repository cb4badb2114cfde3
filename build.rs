//! Build script: validates every WGSL shader variant with naga (errors point at `file:line`),
//! embeds the shader sources, and with feature `cuda` compiles every `kernels/**/*.cu` to PTX
//! for sm_80 and sm_90 when nvcc is found (otherwise the sources are embedded for NVRTC).

#[path = "src/shader_pp.rs"]
#[allow(dead_code)]
mod shader_pp;

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

fn files(dir: &Path, ext: &str, out: &mut Vec<PathBuf>) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    let mut entries: Vec<_> = rd.flatten().map(|e| e.path()).collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            files(&p, ext, out);
        } else if p.extension().is_some_and(|e| e == ext) {
            out.push(p);
        }
    }
}

fn rel(root: &Path, p: &Path) -> String {
    p.strip_prefix(root)
        .unwrap()
        .to_string_lossy()
        .replace('\\', "/")
}

fn fail(msg: &str) -> ! {
    eprintln!("\n{msg}\n");
    std::process::exit(1);
}

fn validate_wgsl(root: &Path, name: &str, text: &str) {
    let lookup = |n: &str| std::fs::read_to_string(root.join(n)).ok();
    for defines in shader_pp::variants(text) {
        let d: Vec<&str> = defines.iter().map(String::as_str).collect();
        let exp = shader_pp::expand(name, &d, &lookup)
            .unwrap_or_else(|e| fail(&format!("shaders/{name} [{d:?}]: {e}")));
        let module = naga::front::wgsl::parse_str(&exp.source).unwrap_or_else(|e| {
            let line = e
                .location(&exp.source)
                .map_or(0, |l| l.line_number as usize);
            fail(&format!(
                "error: WGSL parse error at shaders/{} (variant {d:?}): {}\n{}",
                exp.locate(line),
                e,
                e.emit_to_string(&exp.source)
            ))
        });
        let mut v = naga::valid::Validator::new(
            naga::valid::ValidationFlags::all(),
            naga::valid::Capabilities::all(),
        );
        if let Err(e) = v.validate(&module) {
            let line = e
                .location(&exp.source)
                .map_or(0, |l| l.line_number as usize);
            fail(&format!(
                "error: WGSL validation error at shaders/{} (variant {d:?}): {}\n{}",
                exp.locate(line),
                e.as_inner(),
                e.emit_to_string(&exp.source)
            ))
        }
    }
}

fn find_nvcc() -> Option<PathBuf> {
    if let Ok(p) = std::env::var("NVCC") {
        let p = PathBuf::from(p);
        if p.exists() {
            return Some(p);
        }
        println!(
            "cargo:warning=linrec: NVCC={} does not exist; looking for nvcc elsewhere",
            p.display()
        );
    }
    if let Ok(h) = std::env::var("CUDA_HOME") {
        let p = Path::new(&h).join("bin/nvcc");
        if p.exists() {
            return Some(p);
        }
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join("nvcc"))
        .find(|p| p.exists())
}

fn main() {
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap());
    let out_dir = PathBuf::from(std::env::var("OUT_DIR").unwrap());
    for p in ["shaders", "kernels", "src/shader_pp.rs", "build.rs"] {
        println!("cargo:rerun-if-changed={p}");
    }
    println!("cargo:rerun-if-env-changed=NVCC");
    println!("cargo:rerun-if-env-changed=LINREC_NO_NVCC");
    println!("cargo:rerun-if-env-changed=CUDA_HOME");
    println!("cargo:rerun-if-env-changed=PATH");

    // WGSL: validate every variant, then embed the raw sources (expanded at run time).
    let sroot = manifest.join("shaders");
    let mut wgsl = Vec::new();
    files(&sroot, "wgsl", &mut wgsl);
    let mut gen = String::from("/// Every WGSL source under `shaders/`, by relative path.\n");
    gen.push_str("pub static SOURCES: &[(&str, &str)] = &[\n");
    for p in &wgsl {
        let name = rel(&sroot, p);
        let text = std::fs::read_to_string(p).unwrap();
        if !shader_pp::is_include_only(&text) {
            validate_wgsl(&sroot, &name, &text);
        }
        writeln!(
            gen,
            "    ({name:?}, include_str!({:?})),",
            p.display().to_string()
        )
        .unwrap();
    }
    gen.push_str("];\n");
    std::fs::write(out_dir.join("shaders.rs"), gen).unwrap();

    // CUDA: PTX per architecture when nvcc exists, always the self-contained source for NVRTC.
    let kroot = manifest.join("kernels");
    let mut cu = Vec::new();
    files(&kroot, "cu", &mut cu);
    let cuda = std::env::var_os("CARGO_FEATURE_CUDA").is_some();
    // LINREC_NO_NVCC=1: embed the sources only (NVRTC at run time), even where nvcc exists; CI
    // sets it for clippy and rustdoc, which need no PTX, so nvcc runs once (for the tests)
    let skip_nvcc = std::env::var_os("LINREC_NO_NVCC").is_some_and(|v| v != "0");
    let nvcc = if cuda && !skip_nvcc {
        find_nvcc()
    } else {
        None
    };
    if cuda && !skip_nvcc && nvcc.is_none() {
        println!("cargo:warning=linrec: nvcc not found (set NVCC or CUDA_HOME); CUDA kernels will be compiled by NVRTC at run time");
    }
    let mut gen = String::from(
        "/// Every CUDA module: (name, self-contained source, PTX for sm_80, PTX for sm_90).\n",
    );
    gen.push_str("pub static MODULES: &[(&str, &str, Option<&str>, Option<&str>)] = &[\n");
    let lookup = |n: &str| std::fs::read_to_string(kroot.join(n)).ok();
    // Every (file, architecture) pair is one nvcc process; as many run at once as there are
    // cores (on a 2-core CI machine this halves the build script's wall time).
    const ARCHS: [&str; 2] = ["sm_80", "sm_90"];
    for p in &cu {
        let name = rel(&kroot, p);
        let src = shader_pp::inline_includes(&name, &lookup, &mut Vec::new())
            .unwrap_or_else(|e| fail(&format!("kernels/{name}: {e}")));
        let src_path = out_dir.join(format!("{}.src.cu", name.replace('/', "__")));
        std::fs::write(&src_path, &src).unwrap();
    }
    let jobs: Vec<(usize, usize)> = (0..cu.len())
        .flat_map(|f| (0..ARCHS.len()).map(move |a| (f, a)))
        .collect();
    let next = std::sync::atomic::AtomicUsize::new(0);
    let workers = std::thread::available_parallelism().map_or(2, |n| n.get());
    let mut compiled: Vec<[Option<String>; 2]> = vec![[None, None]; cu.len()];
    if let Some(nvcc) = &nvcc {
        let done: Vec<Vec<(usize, usize, String)>> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..workers)
                .map(|_| {
                    s.spawn(|| {
                        let mut mine = Vec::new();
                        loop {
                            let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            let Some(&(f, a)) = jobs.get(i) else {
                                break mine;
                            };
                            let (p, arch) = (&cu[f], ARCHS[a]);
                            let name = rel(&kroot, p);
                            let out =
                                out_dir.join(format!("{}.{arch}.ptx", name.replace('/', "__")));
                            let res = Command::new(nvcc)
                                .args(["--ptx", "-O3", "-std=c++17", "-lineinfo"])
                                .arg(format!("-arch={arch}"))
                                .arg("-I")
                                .arg(&kroot)
                                .arg("-o")
                                .arg(&out)
                                .arg(p)
                                .output()
                                .unwrap_or_else(|e| {
                                    fail(&format!("cannot run {}: {e}", nvcc.display()))
                                });
                            if !res.status.success() {
                                fail(&format!(
                                    "error: nvcc failed on kernels/{name} for {arch}:\n{}{}",
                                    String::from_utf8_lossy(&res.stdout),
                                    String::from_utf8_lossy(&res.stderr)
                                ));
                            }
                            mine.push((f, a, out.display().to_string()));
                        }
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().unwrap_or_else(|_| fail("an nvcc worker panicked")))
                .collect()
        });
        for (f, a, out) in done.into_iter().flatten() {
            compiled[f][a] = Some(format!("include_str!({out:?})"));
        }
    }
    for (p, ptx) in cu.iter().zip(compiled) {
        let name = rel(&kroot, p);
        let src_path = out_dir.join(format!("{}.src.cu", name.replace('/', "__")));
        let [p80, p90] = ptx.map(|p| p.map_or("None".into(), |s| format!("Some({s})")));
        writeln!(
            gen,
            "    ({name:?}, include_str!({:?}), {p80}, {p90}),",
            src_path.display().to_string()
        )
        .unwrap();
    }
    gen.push_str("];\n");
    std::fs::write(out_dir.join("kernels.rs"), gen).unwrap();
}
