//! `spool-loadgen plot DIR OUT`: the bench results committed under `benches/results/` as
//! SVG charts (`benches/RESULTS.md` embeds them), one per bench, commits side by side.
//!
//! Each result file is the JSON a bench script writes; the part drawn is its `plot` entry:
//! `{"title", "unit", "series": {NAME: VALUE}}` for throughputs (bars per series, grouped
//! by commit) or `{"title", "unit", "percentiles": {NAME: {"p50", "p99", "p999"}}}` for
//! latencies (bars per percentile, grouped by series and commit). Files without one are
//! skipped with a line.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use plotters::prelude::*;
use serde::Deserialize;

#[derive(Debug, clap::Args)]
pub struct PlotArgs {
    /// Directory of result files (`NAME-COMMIT.json`, as the bench scripts write them).
    #[arg(default_value = "benches/results")]
    pub dir: PathBuf,
    /// Directory the SVGs are written to (one per bench NAME).
    #[arg(default_value = "benches/plots")]
    pub out: PathBuf,
}

#[derive(Debug, Deserialize)]
struct ResultFile {
    commit: String,
    /// When it was measured (RFC 3339): commits are drawn in this order.
    #[serde(default)]
    date: String,
    plot: Option<Plot>,
}

#[derive(Debug, Deserialize)]
struct Plot {
    title: String,
    unit: String,
    #[serde(default)]
    series: BTreeMap<String, f64>,
    #[serde(default)]
    percentiles: BTreeMap<String, BTreeMap<String, f64>>,
}

/// One bench's results: (commit, plot), oldest first.
type Bench = Vec<(String, Plot)>;

pub fn run(args: &PlotArgs) -> Result<()> {
    let benches = load(&args.dir)?;
    if benches.is_empty() {
        bail!("no result file with a plot in {}", args.dir.display());
    }
    std::fs::create_dir_all(&args.out)?;
    for (name, runs) in &benches {
        let path = args.out.join(format!("{name}.svg"));
        let bars = bars_of(runs);
        draw(&path, &runs[0].1, &bars).with_context(|| format!("drawing {}", path.display()))?;
        println!("wrote {}", path.display());
    }
    Ok(())
}

/// Result files by bench name (the file name up to its last `-`).
fn load(dir: &Path) -> Result<BTreeMap<String, Bench>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    files.sort();
    let mut dated: BTreeMap<String, Vec<(String, String, Plot)>> = BTreeMap::new();
    for path in files {
        let stem = path.file_stem().unwrap_or_default().to_string_lossy();
        let name = stem.rsplit_once('-').map_or(&*stem, |(n, _)| n).to_owned();
        let text = std::fs::read_to_string(&path)?;
        let f: ResultFile =
            serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
        match f.plot {
            Some(p) => dated.entry(name).or_default().push((f.date, f.commit, p)),
            None => eprintln!("skipped {}: no plot entry", path.display()),
        }
    }
    let mut out = BTreeMap::new();
    for (name, mut runs) in dated {
        // Stable: undated files keep their file-name order.
        runs.sort_by(|a, b| a.0.cmp(&b.0));
        out.insert(name, runs.into_iter().map(|(_, c, p)| (c, p)).collect());
    }
    Ok(out)
}

/// A bar: its group label (commit, or series at commit), its legend key and value.
struct Bar {
    group: String,
    key: String,
    value: f64,
}

fn bars_of(runs: &Bench) -> Vec<Bar> {
    let mut bars = Vec::new();
    for (commit, p) in runs {
        for (key, &value) in &p.series {
            bars.push(Bar {
                group: commit.clone(),
                key: key.clone(),
                value,
            });
        }
        for (series, pcts) in &p.percentiles {
            for (key, &value) in pcts {
                bars.push(Bar {
                    group: format!("{series} @ {commit}"),
                    key: key.clone(),
                    value,
                });
            }
        }
    }
    bars
}

/// First-seen order of `f` over the bars, without repeats.
fn distinct(bars: &[Bar], f: impl Fn(&Bar) -> &String) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for b in bars {
        if !out.contains(f(b)) {
            out.push(f(b).clone());
        }
    }
    out
}

fn draw(path: &Path, first: &Plot, bars: &[Bar]) -> Result<()> {
    let groups = distinct(bars, |b| &b.group);
    let keys = distinct(bars, |b| &b.key);
    let slots = groups.len() * (keys.len() + 1);
    // Head room above the bars for the legend.
    let top = bars.iter().map(|b| b.value).fold(0.0, f64::max) * 1.4;
    // Wide enough for each group's label under its bars.
    let label_px = groups.iter().map(|g| g.len()).max().unwrap_or(0) as u32 * 7 + 16;
    let slot_px = (label_px / (keys.len() as u32 + 1)).max(28);
    let width = (160 + slots as u32 * slot_px).max(640);
    let root = SVGBackend::new(path, (width, 420)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(&first.title, ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(60)
        .y_label_area_size(70)
        .build_cartesian_2d(0.0..slots as f64, 0.0..top.max(1.0))?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(0)
        .y_desc(&first.unit)
        .draw()?;
    // Each group's label under its bars, placed in pixels (the mesh would pick "nice" x
    // values that miss the groups).
    let per = keys.len() + 1;
    for (g, label) in groups.iter().enumerate() {
        let mid = (g * per) as f64 + keys.len() as f64 / 2.0;
        let (x, y) = chart.backend_coord(&(mid, 0.0));
        let style = ("sans-serif", 12).into_font().color(&BLACK);
        let style = style.pos(plotters::style::text_anchor::Pos::new(
            plotters::style::text_anchor::HPos::Center,
            plotters::style::text_anchor::VPos::Top,
        ));
        root.draw(&Text::new(label.clone(), (x, y + 8), style))?;
    }
    for (k, key) in keys.iter().enumerate() {
        let color = Palette99::pick(k).to_rgba();
        let rects = bars.iter().filter(|b| &b.key == key).map(|b| {
            let g = groups.iter().position(|x| x == &b.group).unwrap_or(0);
            let x0 = (g * (keys.len() + 1) + k) as f64 + 0.1;
            Rectangle::new([(x0, 0.0), (x0 + 0.8, b.value)], color.filled())
        });
        chart
            .draw_series(rects)?
            .label(key.clone())
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 10, y + 5)], color.filled()));
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .position(SeriesLabelPosition::UpperRight)
        .draw()?;
    root.present()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_bars_and_percentiles_per_commit() {
        let dir = tempfile::tempdir().unwrap();
        let results = dir.path().join("results");
        std::fs::create_dir(&results).unwrap();
        // Named against their dates: drawn by date.
        for (commit, date, v) in [
            ("bbbbbbb", "2026-01-01", 100.0),
            ("aaaaaaa", "2026-02-01", 150.0),
        ] {
            let f = serde_json::json!({"commit": commit, "date": date, "plot": {"title": "unary", "unit": "req/s",
                "series": {"spool": v, "redis": 120.0}}});
            std::fs::write(results.join(format!("unary-{commit}.json")), f.to_string()).unwrap();
        }
        let lat = serde_json::json!({"commit": "bbbbbbb", "plot": {"title": "latency", "unit": "us",
            "percentiles": {"spool": {"p50": 900.0, "p99": 2100.0}}}});
        std::fs::write(results.join("lat-bbbbbbb.json"), lat.to_string()).unwrap();
        std::fs::write(results.join("other-ccccccc.json"), r#"{"commit": "c"}"#).unwrap();
        let out = dir.path().join("plots");
        run(&PlotArgs {
            dir: results,
            out: out.clone(),
        })
        .unwrap();
        let svg = std::fs::read_to_string(out.join("unary.svg")).unwrap();
        let (a, b) = (svg.find("aaaaaaa"), svg.find("bbbbbbb"));
        assert!(svg.contains("<svg") && a.is_some() && b.is_some(), "{svg}");
        assert!(b < a, "the older commit is drawn first");
        assert!(
            svg.contains("redis") && svg.contains("spool"),
            "legend names the series"
        );
        // Each series' colour fills its two bars and its legend swatch.
        for colour in ["#E6194B", "#3CB44B"] {
            let filled = format!("fill=\"{colour}\"");
            assert_eq!(svg.matches(&filled).count(), 3, "{colour}: {svg}");
        }
        let lat = std::fs::read_to_string(out.join("lat.svg")).unwrap();
        assert!(lat.contains("p99") && lat.contains("spool @ bbbbbbb"));
        assert!(!out.join("other.svg").exists());
    }
}
