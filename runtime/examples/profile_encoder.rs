//! Where the encoder's time goes in tract: runs an ONNX encoder graph (as `captiond
//! encoder-graph` writes it) on a 1×3×224×224 input, and prints the time per operator kind
//! and the slowest nodes, medians over N runs after a warm-up. One thread (the caller's).
//!
//! `profile_encoder <encoder.onnx> [N]` (default N = 10); `TRANSFORMS=conv_nhwc,...` applies
//! tract's named model transforms before optimisation. Used to compare graph forms of the
//! encoder; it measures tract only, nothing else.

use std::collections::BTreeMap;
use std::time::Instant;

use anyhow::{Context, Result};
use tract_onnx::prelude::*;

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (path, n) = match args.as_slice() {
        [p] => (p.clone(), 10usize),
        [p, n] => (p.clone(), n.parse().context("N must be a count")?),
        _ => anyhow::bail!("usage: profile_encoder <encoder.onnx> [N]"),
    };
    let model = tract_onnx::onnx()
        .model_for_path(&path)
        .with_context(|| format!("loading {path}"))?
        .with_input_fact(0, f32::fact([1, 3, 224, 224]).into())?
        .into_typed()?
        .into_decluttered()?;
    let mut model = model;
    for t in std::env::var("TRANSFORMS")
        .unwrap_or_default()
        .split(',')
        .filter(|t| !t.is_empty())
    {
        let transform = tract_onnx::tract_core::transform::get_transform(t)?
            .with_context(|| format!("no tract transform {t}"))?;
        transform.transform(&mut model)?;
    }
    let model = model.into_optimized()?;
    let names: Vec<String> = model
        .nodes
        .iter()
        .map(|n| {
            let out = n
                .outputs
                .first()
                .map(|o| format!("{:?}", o.fact.shape))
                .unwrap_or_default();
            let info = n.op().info().unwrap_or_default().join("; ");
            format!("{} -> {out} [{info}]", n.name)
        })
        .collect();
    let kinds: Vec<String> = model
        .nodes
        .iter()
        .map(|n| n.op().name().to_string())
        .collect();
    let plan = model.into_runnable()?;
    let input: TValue = Tensor::zero::<f32>(&[1, 3, 224, 224])?.into();
    let mut per_node: Vec<Vec<f64>> = vec![Vec::new(); names.len()];
    let mut totals = Vec::new();
    for run in 0..n + 1 {
        let mut state = tract_onnx::tract_core::plan::SimpleState::new(&plan)?;
        let mut times: Vec<f64> = vec![0.0; names.len()];
        let start = Instant::now();
        state.run_plan_with_eval(tvec!(input.clone()), |ctx, op_state, node, inputs| {
            let t = Instant::now();
            let out = tract_onnx::tract_core::plan::eval(ctx, op_state, node, inputs);
            times[node.id] += t.elapsed().as_secs_f64() * 1e3;
            out
        })?;
        if run > 0 {
            totals.push(start.elapsed().as_secs_f64() * 1e3);
            for (id, t) in times.into_iter().enumerate() {
                per_node[id].push(t);
            }
        }
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v.get(v.len() / 2).copied().unwrap_or(0.0)
    };
    let mut node_ms: Vec<(usize, f64)> = per_node
        .iter_mut()
        .enumerate()
        .map(|(id, v)| (id, median(v)))
        .collect();
    let mut by_kind: BTreeMap<&str, (f64, usize)> = BTreeMap::new();
    for &(id, ms) in &node_ms {
        let e = by_kind.entry(&kinds[id]).or_default();
        e.0 += ms;
        e.1 += 1;
    }
    println!("total {:.2} ms (median of {n})", median(&mut totals));
    let mut kinds_sorted: Vec<_> = by_kind.into_iter().collect();
    kinds_sorted.sort_by(|a, b| b.1 .0.total_cmp(&a.1 .0));
    for (kind, (ms, count)) in kinds_sorted {
        println!("{ms:>8.2} ms  {count:>4}×  {kind}");
    }
    node_ms.sort_by(|a, b| b.1.total_cmp(&a.1));
    println!("slowest nodes:");
    for &(id, ms) in node_ms.iter().take(25) {
        println!("{ms:>8.2} ms  {}  {}", kinds[id], names[id]);
    }
    Ok(())
}
