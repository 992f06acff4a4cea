//! Which of a benchmark's scenarios a run measures (`BENCH_SCENARIOS`).

/// The indices into `names` of the scenarios `wanted` lists: names separated by commas,
/// surrounding spaces ignored, in `names`' order whatever the list's, each once. No list (or
/// one with nothing but spaces and commas) means every scenario. A name `names` lacks is an
/// error that lists the names it has.
pub fn pick(names: &[&str], wanted: Option<&str>) -> Result<Vec<usize>, String> {
    let asked: Vec<&str> = wanted
        .unwrap_or("")
        .split(',')
        .map(str::trim)
        .filter(|w| !w.is_empty())
        .collect();
    if asked.is_empty() {
        return Ok((0..names.len()).collect());
    }
    if let Some(unknown) = asked.iter().find(|w| !names.contains(w)) {
        return Err(format!(
            "BENCH_SCENARIOS names `{unknown}`, which is not a scenario; the scenarios are: {}",
            names.join(", ")
        ));
    }
    Ok((0..names.len())
        .filter(|i| asked.contains(&names[*i]))
        .collect())
}
