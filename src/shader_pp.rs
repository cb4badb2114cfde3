//! A tiny preprocessor for WGSL and CUDA sources, shared by `build.rs` (which validates every
//! variant of every shader at build time) and the runtime (which expands the variant a launch
//! needs). Standard library only, so `build.rs` can `#[path]`-include this file.
//!
//! Directives, each alone on its line:
//! - `#include "rel/path"`: insert another source (paths relative to the source root); a file
//!   is inserted at most once per expansion (include guards are implicit).
//! - `#ifdef NAME` / `#ifndef NAME` / `#else` / `#endif`: keep lines by the defines in effect.
//! - `//! variant: A B`: (WGSL) a define set `build.rs` validates this file with; no variant
//!   line means the empty set only. `//! include-only` marks a file that is never compiled alone.

/// A source with its origin map.
#[derive(Debug, Clone)]
pub struct Expanded {
    /// The expanded text.
    pub source: String,
    /// For each output line (0-based), the file and 1-based line it came from.
    pub origin: Vec<(String, usize)>,
}

impl Expanded {
    /// `file:line` of an output line (1-based), for error messages.
    pub fn locate(&self, line: usize) -> String {
        match self.origin.get(line.wrapping_sub(1)) {
            Some((f, l)) => format!("{f}:{l}"),
            None => format!("<expanded>:{line}"),
        }
    }
}

/// Expand `name` with `defines`, reading files through `lookup`.
pub fn expand(
    name: &str,
    defines: &[&str],
    lookup: &dyn Fn(&str) -> Option<String>,
) -> Result<Expanded, String> {
    let mut out = Expanded {
        source: String::new(),
        origin: Vec::new(),
    };
    let mut seen = Vec::new();
    expand_into(name, defines, lookup, &mut out, &mut seen)?;
    Ok(out)
}

fn expand_into(
    name: &str,
    defines: &[&str],
    lookup: &dyn Fn(&str) -> Option<String>,
    out: &mut Expanded,
    seen: &mut Vec<String>,
) -> Result<(), String> {
    if seen.iter().any(|s| s == name) {
        return Ok(());
    }
    seen.push(name.to_string());
    let text = lookup(name).ok_or_else(|| format!("source `{name}` not found"))?;
    // Stack of (this branch active, some branch of this #if already taken, parent active).
    let mut stack: Vec<(bool, bool)> = Vec::new();
    let active = |stack: &Vec<(bool, bool)>| stack.iter().all(|&(a, _)| a);
    for (i, line) in text.lines().enumerate() {
        let at = || format!("{name}:{}", i + 1);
        let t = line.trim();
        if let Some(rest) = t.strip_prefix("#ifdef ") {
            stack.push((defines.contains(&rest.trim()), false));
        } else if let Some(rest) = t.strip_prefix("#ifndef ") {
            stack.push((!defines.contains(&rest.trim()), false));
        } else if t == "#else" {
            let top = stack
                .last_mut()
                .ok_or_else(|| format!("{}: #else without #if", at()))?;
            if top.1 {
                return Err(format!("{}: second #else", at()));
            }
            *top = (!top.0, true);
        } else if t == "#endif" {
            stack
                .pop()
                .ok_or_else(|| format!("{}: #endif without #if", at()))?;
        } else if let Some(rest) = t.strip_prefix("#include ") {
            if active(&stack) {
                let inc = rest.trim().trim_matches('"');
                expand_into(inc, defines, lookup, out, seen)
                    .map_err(|e| format!("{}: {e}", at()))?;
            }
        } else if active(&stack) {
            out.source.push_str(line);
            out.source.push('\n');
            out.origin.push((name.to_string(), i + 1));
        }
    }
    if !stack.is_empty() {
        return Err(format!("{name}: unterminated #ifdef"));
    }
    Ok(())
}

/// The define sets declared by `//! variant:` lines (the empty set if there are none).
pub fn variants(text: &str) -> Vec<Vec<String>> {
    let v: Vec<Vec<String>> = text
        .lines()
        .filter_map(|l| l.trim().strip_prefix("//! variant:"))
        .map(|rest| rest.split_whitespace().map(str::to_string).collect())
        .collect();
    if v.is_empty() {
        vec![Vec::new()]
    } else {
        v
    }
}

/// Whether the file says `//! include-only`.
pub fn is_include_only(text: &str) -> bool {
    text.lines().any(|l| l.trim() == "//! include-only")
}

/// Inline local `#include "..."` lines only (for CUDA sources handed to NVRTC, which has no
/// file system); every other line, preprocessor directives included, passes through.
pub fn inline_includes(
    name: &str,
    lookup: &dyn Fn(&str) -> Option<String>,
    seen: &mut Vec<String>,
) -> Result<String, String> {
    if seen.iter().any(|s| s == name) {
        return Ok(String::new());
    }
    seen.push(name.to_string());
    let text = lookup(name).ok_or_else(|| format!("source `{name}` not found"))?;
    let mut out = String::new();
    for line in text.lines() {
        match line.trim().strip_prefix("#include \"") {
            Some(rest) => {
                let inc = rest.trim_end().trim_end_matches('"');
                out.push_str(&inline_includes(inc, lookup, seen)?);
            }
            None => {
                out.push_str(line);
                out.push('\n');
            }
        }
    }
    Ok(out)
}
