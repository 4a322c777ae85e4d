//! The SVG charts of the results report, drawn with plotters into strings.
//!
//! Plotters is built without its `ttf` feature, so no font is read from the system: the SVG
//! backend writes text as `<text>` elements and the viewer's font draws them. Label widths are
//! then only estimated, which is why the label areas below are sized generously.

use plotters::coord::Shift;
use plotters::coord::ranged1d::{DefaultFormatting, KeyPointHint};
use plotters::coord::types::RangedCoordf64;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use crate::results::report::{format_bytes_exact, format_micros};
use crate::schema::load::{Phase, Sample};
use crate::units::human_bytes;

/// Width and height of every chart, in pixels.
pub const CHART_SIZE: (u32, u32) = (800, 400);

/// Why a chart could not be drawn.
#[derive(Debug, thiserror::Error)]
pub enum ChartError {
    #[error("nothing to draw")]
    NoData,
    #[error("plotters: {0}")]
    Draw(String),
}

impl<E: std::error::Error + Send + Sync> From<DrawingAreaErrorKind<E>> for ChartError {
    fn from(e: DrawingAreaErrorKind<E>) -> Self {
        ChartError::Draw(e.to_string())
    }
}

/// One bar of a bar chart.
#[derive(Clone, Debug, PartialEq)]
pub struct Bar<'a> {
    pub label: &'a str,
    pub value: f64,
    /// A sum of other bars (drawn in another colour so it is not read as one more part).
    pub is_sum: bool,
}

/// One latency distribution: `[percentile 0..=100, microseconds]` pairs.
#[derive(Clone, Debug, PartialEq)]
pub struct Spectrum<'a> {
    pub name: &'a str,
    pub points: &'a [[f64; 2]],
}

// Colours from the usual categorical palette (tab10), distinguishable in print and on screen.
const SERIES_COLORS: [RGBColor; 5] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
];
const PHASE_COLORS: [RGBColor; 4] =
    [RGBColor(31, 119, 180), RGBColor(44, 160, 44), RGBColor(255, 127, 14), RGBColor(148, 103, 189)];
const GRID_GREY: RGBColor = RGBColor(200, 200, 200);

const FONT: &str = "sans-serif";

fn caption_style() -> TextStyle<'static> {
    (FONT, 20).into_font().color(&BLACK)
}

fn label_style() -> TextStyle<'static> {
    (FONT, 14).into_font().color(&BLACK)
}

fn desc_style() -> TextStyle<'static> {
    (FONT, 15).into_font().color(&BLACK)
}

/// `1234567` as `1.2M`, for axis ticks where space is short.
pub fn short_count(v: f64) -> String {
    let a = v.abs();
    if a >= 1e9 {
        format!("{:.1}G", v / 1e9)
    } else if a >= 1e6 {
        format!("{:.1}M", v / 1e6)
    } else if a >= 1e4 {
        format!("{:.0}k", v / 1e3)
    } else if a >= 1e3 {
        format!("{:.1}k", v / 1e3)
    } else if a == a.round() {
        format!("{v:.0}")
    } else {
        format!("{v:.1}")
    }
}

/// Tick positions 0, s, 2s, ... up to `max`, with s a 1, 2 or 5 times a power of ten, giving
/// about `count` ticks.
fn nice_ticks(max: f64, count: usize) -> Vec<f64> {
    if max.is_nan() || max <= 0.0 || max.is_infinite() {
        return vec![0.0];
    }
    let raw = max / count.max(1) as f64;
    let decade = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 5.0, 10.0].iter().map(|m| m * decade).find(|s| *s >= raw).unwrap_or(10.0 * decade);
    (0..).map(|i| i as f64 * step).take_while(|t| *t <= max * (1.0 + 1e-9)).collect()
}

/// A linear f64 axis with ticks where we say. (Plotters' own `with_key_points` wrapper loses
/// the f64 label formatter, so the mesh cannot be drawn with it.)
struct TickedAxis {
    inner: RangedCoordf64,
    ticks: Vec<f64>,
}

impl TickedAxis {
    fn new(range: std::ops::Range<f64>, ticks: Vec<f64>) -> TickedAxis {
        TickedAxis { inner: range.into(), ticks }
    }
}

impl Ranged for TickedAxis {
    type FormatOption = DefaultFormatting;
    type ValueType = f64;

    fn map(&self, value: &f64, limit: (i32, i32)) -> i32 {
        self.inner.map(value, limit)
    }

    fn key_points<Hint: KeyPointHint>(&self, hint: Hint) -> Vec<f64> {
        // Only bold grid lines, at our ticks.
        if hint.weight().allow_light_points() { Vec::new() } else { self.ticks.clone() }
    }

    fn range(&self) -> std::ops::Range<f64> {
        self.inner.range()
    }
}

fn bar_color(is_sum: bool) -> RGBColor {
    if is_sum { SERIES_COLORS[1] } else { SERIES_COLORS[0] }
}

/// Says which colour is a part and which a whole (MemFree-based) (drawn as empty labelled series).
fn draw_bar_legend<'a, DB: DrawingBackend + 'a>(
    chart: &mut ChartContext<'a, DB, Cartesian2d<TickedAxis, TickedAxis>>,
) -> Result<(), ChartError>
where
    DB::ErrorType: 'static,
{
    for (label, is_sum) in [("one part", false), ("all of it (MemFree drop)", true)] {
        let style = bar_color(is_sum).mix(0.85).filled();
        chart
            .draw_series(std::iter::empty::<Rectangle<(f64, f64)>>())?
            .label(label)
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 16, y + 5)], style));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.85))
        .border_style(GRID_GREY)
        .label_font(label_style())
        .draw()?;
    Ok(())
}

/// Like [`nice_ticks`] but round in KiB, MiB or GiB, so the labels read `2.0 KiB`, `4.0 KiB`.
fn byte_ticks(max: f64, count: usize) -> Vec<f64> {
    let unit = [1u64 << 30, 1 << 20, 1 << 10, 1].into_iter().map(|u| u as f64).find(|u| max / u >= 2.0).unwrap_or(1.0);
    nice_ticks(max / unit, count).into_iter().map(|t| t * unit).collect()
}

/// Draws into an SVG string; `draw` gets the whole canvas.
fn render_svg(
    draw: impl FnOnce(&DrawingArea<SVGBackend<'_>, Shift>) -> Result<(), ChartError>,
) -> Result<String, ChartError> {
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, CHART_SIZE).into_drawing_area();
        root.fill(&WHITE)?;
        draw(&root)?;
        root.present()?;
    }
    Ok(svg)
}

// ---------------------------------------------------------------------------------------------
// Connections over time

/// Established connections over time (left axis) against the count requested (dashed), and the
/// connect rate (right axis), with the phases of the run shaded behind them.
pub fn connections_chart(
    title: &str,
    requested: u64,
    timeline: &[Sample],
    phases: &[Phase],
) -> Result<String, ChartError> {
    if timeline.is_empty() {
        return Err(ChartError::NoData);
    }
    let t_end = timeline.iter().map(|s| s.t).chain(phases.iter().map(|p| p.end)).fold(1.0, f64::max);
    // Headroom above the lines leaves the top strip free for the phase names.
    let est_max = timeline.iter().map(|s| s.established as f64).fold(requested.max(1) as f64, f64::max) * 1.15;
    let rate_max = timeline.iter().map(|s| s.connect_rate).fold(1.0, f64::max) * 1.15;

    render_svg(|root| {
        let mut chart = ChartBuilder::on(root)
            .caption(title, caption_style())
            .margin(12)
            .x_label_area_size(45)
            .y_label_area_size(75)
            .right_y_label_area_size(75)
            .build_cartesian_2d(0f64..t_end, 0f64..est_max)?
            .set_secondary_coord(0f64..t_end, 0f64..rate_max);
        chart
            .configure_mesh()
            .light_line_style(WHITE)
            .bold_line_style(GRID_GREY.mix(0.6))
            .x_desc("seconds since the load started")
            .x_label_formatter(&|v| short_count(*v))
            .y_desc("established connections")
            .y_label_formatter(&|v| short_count(*v))
            .label_style(label_style())
            .axis_desc_style(desc_style())
            .draw()?;
        chart
            .configure_secondary_axes()
            .y_desc("connects per second")
            .y_label_formatter(&|v| short_count(*v))
            .label_style(label_style())
            .axis_desc_style(desc_style())
            .draw()?;

        draw_phases(&mut chart, phases, est_max)?;

        let established = SERIES_COLORS[0].stroke_width(2);
        chart
            .draw_series(LineSeries::new(timeline.iter().map(|s| (s.t, s.established as f64)), established))?
            .label("established (left axis)")
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], established));
        let asked = BLACK.mix(0.6).stroke_width(1);
        chart
            .draw_series(DashedLineSeries::new([(0.0, requested as f64), (t_end, requested as f64)], 6, 4, asked))?
            .label("requested")
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], asked));
        let rate = SERIES_COLORS[1].stroke_width(2);
        chart
            .draw_secondary_series(LineSeries::new(timeline.iter().map(|s| (s.t, s.connect_rate)), rate))?
            .label("connects/s (right axis)")
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], rate));
        // While connections are held the established line is high and the rate is zero, so the
        // lower middle is the part of the plot most often empty.
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::LowerMiddle)
            .background_style(WHITE.mix(0.85))
            .border_style(GRID_GREY)
            .label_font(label_style())
            .draw()?;
        Ok(())
    })
}

/// Shades each phase and writes its name at the top, where there is room for it.
fn draw_phases<DB: DrawingBackend>(
    chart: &mut ChartContext<'_, DB, Cartesian2d<RangedCoordf64, RangedCoordf64>>,
    phases: &[Phase],
    y_top: f64,
) -> Result<(), ChartError>
where
    DB::ErrorType: 'static,
{
    for (i, phase) in phases.iter().enumerate() {
        let color = PHASE_COLORS[i % PHASE_COLORS.len()];
        chart.draw_series(std::iter::once(Rectangle::new(
            [(phase.start, 0.0), (phase.end, y_top)],
            color.mix(0.10).filled(),
        )))?;
        let left = chart.backend_coord(&(phase.start, y_top)).0;
        let right = chart.backend_coord(&(phase.end, y_top)).0;
        // A name wider than its phase would run into the next one's.
        if right - left >= 8 * phase.name.len() as i32 + 8 {
            let style = label_style().color(&color).pos(Pos::new(HPos::Left, VPos::Top));
            chart.draw_series(std::iter::once(
                EmptyElement::at((phase.start, y_top)) + Text::new(phase.name.clone(), (4, 4), style),
            ))?;
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// A/B rounds

/// One arm's rounds of a metric: `(round number, value)`.
#[derive(Clone, Debug, PartialEq)]
pub struct ArmPoints<'a> {
    pub name: &'a str,
    pub points: &'a [(f64, f64)],
    /// Drawn as a dashed line across the chart.
    pub median: f64,
}

/// Every round's value as a point, by round number, one colour per arm, each arm's median
/// dashed: a reader sees the spread, any drift over the run, and whether the arms overlap.
pub fn rounds_chart(title: &str, unit: &str, arms: &[ArmPoints<'_>]) -> Result<String, ChartError> {
    let values = || arms.iter().flat_map(|a| a.points.iter().map(|p| p.1));
    if values().next().is_none() {
        return Err(ChartError::NoData);
    }
    let rounds = arms.iter().flat_map(|a| a.points.iter().map(|p| p.0)).fold(1.0, f64::max);
    let (lo, hi) = (values().fold(f64::INFINITY, f64::min), values().fold(f64::NEG_INFINITY, f64::max));
    // From 0 unless that flattens the points; room on top for the legend.
    let pad = ((hi - lo) * 0.15).max(hi.abs() * 0.02).max(1e-9);
    let y_lo = if lo >= 0.0 && lo < (hi - lo) * 2.0 { 0.0 } else { lo - pad };
    let y_hi = hi + 3.0 * pad;
    render_svg(|root| {
        let mut chart = ChartBuilder::on(root)
            .caption(title, caption_style())
            .margin(12)
            .x_label_area_size(45)
            .y_label_area_size(85)
            .build_cartesian_2d(0.5f64..rounds + 0.5, y_lo..y_hi)?;
        chart
            .configure_mesh()
            .light_line_style(WHITE)
            .bold_line_style(GRID_GREY.mix(0.6))
            .x_desc("round")
            .x_labels(rounds as usize + 1)
            .x_label_formatter(&|v| if (v - v.round()).abs() < 1e-9 { format!("{v:.0}") } else { String::new() })
            .y_desc(unit)
            .y_label_formatter(&|v| short_count(*v))
            .label_style(label_style())
            .axis_desc_style(desc_style())
            .draw()?;
        for (i, arm) in arms.iter().enumerate() {
            let color = SERIES_COLORS[i % SERIES_COLORS.len()];
            chart
                .draw_series(arm.points.iter().map(|&(x, y)| Circle::new((x, y), 5, color.filled())))?
                .label(arm.name.to_string())
                .legend(move |(x, y)| Circle::new((x + 10, y), 5, color.filled()));
            if arm.median.is_finite() {
                let line = color.mix(0.7).stroke_width(1);
                chart.draw_series(DashedLineSeries::new(
                    [(0.5, arm.median), (rounds + 0.5, arm.median)],
                    6,
                    4,
                    line,
                ))?;
            }
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperRight)
            .background_style(WHITE.mix(0.85))
            .border_style(GRID_GREY)
            .label_font(label_style())
            .draw()?;
        Ok(())
    })
}

// ---------------------------------------------------------------------------------------------
// Time series

/// One line of a time-series chart.
#[derive(Clone, Debug, PartialEq)]
pub struct TimeSeries<'a> {
    pub name: &'a str,
    /// (seconds, value)
    pub points: &'a [(f64, f64)],
}

/// Lines over time on one axis from 0, a band shaded behind them (the steady window a drift is
/// fitted over): a reader sees whether anything climbs while the load holds still.
pub fn time_series_chart(
    title: &str,
    unit: &str,
    series: &[TimeSeries<'_>],
    band: Option<(f64, f64)>,
) -> Result<String, ChartError> {
    let values = || series.iter().flat_map(|s| s.points.iter());
    if values().next().is_none() {
        return Err(ChartError::NoData);
    }
    let t_end = values().map(|p| p.0).fold(1.0, f64::max);
    let hi = values().map(|p| p.1).fold(1.0, f64::max) * 1.25;
    render_svg(|root| {
        let mut chart = ChartBuilder::on(root)
            .caption(title, caption_style())
            .margin(12)
            .x_label_area_size(45)
            .y_label_area_size(85)
            .build_cartesian_2d(0f64..t_end, 0f64..hi)?;
        chart
            .configure_mesh()
            .light_line_style(WHITE)
            .bold_line_style(GRID_GREY.mix(0.6))
            .x_desc("seconds since the soak started")
            .x_label_formatter(&|v| short_count(*v))
            .y_desc(unit)
            .y_label_formatter(&|v| short_count(*v))
            .label_style(label_style())
            .axis_desc_style(desc_style())
            .draw()?;
        if let Some((from, to)) = band {
            chart
                .draw_series(std::iter::once(Rectangle::new([(from, 0.0), (to, hi)], GRID_GREY.mix(0.15).filled())))?;
        }
        for (i, line) in series.iter().enumerate() {
            let color = SERIES_COLORS[i % SERIES_COLORS.len()].stroke_width(2);
            chart
                .draw_series(LineSeries::new(line.points.iter().copied(), color))?
                .label(line.name.to_string())
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperRight)
            .background_style(WHITE.mix(0.85))
            .border_style(GRID_GREY)
            .label_font(label_style())
            .draw()?;
        Ok(())
    })
}

// ---------------------------------------------------------------------------------------------
// Memory per connection

/// Horizontal bars, first bar at the top, each labelled with its value in bytes.
pub fn bytes_bar_chart(title: &str, bars: &[Bar<'_>]) -> Result<String, ChartError> {
    if bars.is_empty() {
        return Err(ChartError::NoData);
    }
    let n = bars.len();
    let max = bars.iter().map(|b| b.value).fold(0.0, f64::max);
    let min = bars.iter().map(|b| b.value).fold(0.0, f64::min);
    let max = if max > 0.0 { max } else { 1.0 };
    // Room on the right for the value labels.
    let x_range = min * 1.1..max * 1.45;
    // Bar i sits at y = n-1-i so the first bar is on top; ticks on whole numbers only.
    let y_ticks: Vec<f64> = (0..n).map(|i| i as f64).collect();
    let label_of = |y: &f64| -> String {
        let idx = n as i64 - 1 - y.round() as i64;
        usize::try_from(idx).ok().and_then(|i| bars.get(i)).map(|b| b.label.to_string()).unwrap_or_default()
    };
    let x_ticks = byte_ticks(max * 1.45, 8);

    render_svg(|root| {
        let mut chart = ChartBuilder::on(root)
            .caption(title, caption_style())
            .margin(12)
            .margin_right(30)
            .x_label_area_size(45)
            .y_label_area_size(175)
            .build_cartesian_2d(TickedAxis::new(x_range, x_ticks), TickedAxis::new(-0.6..n as f64 - 0.4, y_ticks))?;
        chart
            .configure_mesh()
            .disable_y_mesh()
            .bold_line_style(GRID_GREY.mix(0.6))
            .x_desc("bytes per connection")
            .x_label_formatter(&|v| human_bytes(*v))
            .y_label_formatter(&label_of)
            .label_style(label_style())
            .axis_desc_style(desc_style())
            .draw()?;
        for (i, bar) in bars.iter().enumerate() {
            draw_bar(&mut chart, (n - 1 - i) as f64, bar)?;
        }
        draw_bar_legend(&mut chart)?;
        Ok(())
    })
}

fn draw_bar<DB: DrawingBackend>(
    chart: &mut ChartContext<'_, DB, Cartesian2d<TickedAxis, TickedAxis>>,
    y: f64,
    bar: &Bar<'_>,
) -> Result<(), ChartError>
where
    DB::ErrorType: 'static,
{
    let color = bar_color(bar.is_sum);
    chart.draw_series(std::iter::once(Rectangle::new(
        [(0.0, y - 0.35), (bar.value, y + 0.35)],
        color.mix(0.85).filled(),
    )))?;
    let label = format_bytes_exact(bar.value);
    let style = label_style().pos(Pos::new(HPos::Left, VPos::Center));
    chart.draw_series(std::iter::once(EmptyElement::at((bar.value.max(0.0), y)) + Text::new(label, (6, 0), style)))?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Latency by percentile

/// How far right the spectrum goes: 99.99999%. Beyond it a run has too few samples to matter.
const MAX_NINES: f64 = 7.0;

/// Percentile (0..=100) to its place on the x axis: log10(1/(1-p)), as wrk2 and HdrHistogram
/// plot it, so that 90%, 99%, 99.9% ... are equally spaced.
fn percentile_to_x(p: f64) -> f64 {
    let tail = (1.0 - p / 100.0).max(10f64.powf(-MAX_NINES));
    -tail.log10()
}

/// The inverse of [`percentile_to_x`], as an axis label: `50%`, `99.9%`.
fn percentile_label(x: f64) -> String {
    let p = 100.0 * (1.0 - 10f64.powf(-x));
    let text = format!("{p:.5}");
    let text = text.trim_end_matches('0').trim_end_matches('.');
    format!("{text}%")
}

/// The latency axis: linear, or log10 of the value when the values span decades (plotted as
/// log10 on a linear axis, so both cases share one chart type).
#[derive(Clone, Copy, Debug, PartialEq)]
enum LatencyAxis {
    Linear { max: f64 },
    Log { lo_decade: f64, hi_decade: f64 },
}

impl LatencyAxis {
    /// Log when the largest value is more than 20 times the smallest positive one.
    fn for_values(values: impl Iterator<Item = f64> + Clone) -> LatencyAxis {
        let max = values.clone().fold(0.0, f64::max).max(1e-3);
        let min_positive = values.filter(|v| *v > 0.0).fold(f64::INFINITY, f64::min);
        if min_positive.is_finite() && max / min_positive > 20.0 {
            LatencyAxis::Log {
                lo_decade: min_positive.log10().floor(),
                hi_decade: max.log10().ceil().max(min_positive.log10().floor() + 1.0),
            }
        } else {
            LatencyAxis::Linear { max: max * 1.1 }
        }
    }

    fn axis_at(self, us: f64) -> f64 {
        match self {
            LatencyAxis::Linear { .. } => us,
            // Zeros (a sub-microsecond min) sit on the bottom edge rather than at -infinity.
            LatencyAxis::Log { lo_decade, .. } => us.max(10f64.powf(lo_decade)).log10(),
        }
    }

    fn value_at(self, a: f64) -> f64 {
        match self {
            LatencyAxis::Linear { .. } => a,
            LatencyAxis::Log { .. } => 10f64.powf(a),
        }
    }

    fn range(self) -> std::ops::Range<f64> {
        match self {
            LatencyAxis::Linear { max } => 0.0..max,
            LatencyAxis::Log { lo_decade, hi_decade } => lo_decade..hi_decade,
        }
    }

    /// Decades, and 2x and 5x between them when there are few decades.
    fn ticks(self) -> Vec<f64> {
        match self {
            LatencyAxis::Linear { max } => nice_ticks(max, 8),
            LatencyAxis::Log { lo_decade, hi_decade } => {
                let decades = (hi_decade - lo_decade).round() as i32;
                let multiples: &[f64] = if decades <= 3 { &[1.0, 2.0, 5.0] } else { &[1.0] };
                (0..=decades)
                    .flat_map(|d| multiples.iter().map(move |m| (lo_decade + d as f64) + m.log10()))
                    .filter(|a| *a <= hi_decade + 1e-9)
                    .collect()
            }
        }
    }

    fn is_log(self) -> bool {
        matches!(self, LatencyAxis::Log { .. })
    }
}

/// An axis tick in microseconds: `10 µs`, not `10.0 µs`.
fn tick_micros(us: f64) -> String {
    format_micros(us).replace(".00 ", " ").replace(".0 ", " ")
}

/// Latency against percentile for each non-empty spectrum, x on the "1/(1-p)" log scale.
pub fn latency_chart(title: &str, spectra: &[Spectrum<'_>]) -> Result<String, ChartError> {
    let drawn: Vec<&Spectrum<'_>> = spectra.iter().filter(|s| !s.points.is_empty()).collect();
    if drawn.is_empty() {
        return Err(ChartError::NoData);
    }
    let x_end = latency_x_end(&drawn);
    let x_ticks: Vec<f64> = std::iter::once(percentile_to_x(50.0)).chain((1..=x_end as i32).map(f64::from)).collect();
    let axis = LatencyAxis::for_values(
        drawn.iter().flat_map(|s| s.points.iter().map(|p| p[1])).collect::<Vec<_>>().into_iter(),
    );
    let y_desc = if axis.is_log() { "latency (log scale)" } else { "latency" };

    render_svg(|root| {
        let mut chart = ChartBuilder::on(root)
            .caption(title, caption_style())
            .margin(12)
            .margin_right(40)
            .x_label_area_size(45)
            .y_label_area_size(85)
            .build_cartesian_2d(TickedAxis::new(0.0..x_end, x_ticks), TickedAxis::new(axis.range(), axis.ticks()))?;
        chart
            .configure_mesh()
            .bold_line_style(GRID_GREY.mix(0.6))
            .x_desc("percentile")
            .y_desc(y_desc)
            .x_label_formatter(&|x| percentile_label(*x))
            .y_label_formatter(&|a| tick_micros(axis.value_at(*a)))
            .label_style(label_style())
            .axis_desc_style(desc_style())
            .draw()?;
        for (i, spectrum) in drawn.iter().enumerate() {
            let style = SERIES_COLORS[i % SERIES_COLORS.len()].stroke_width(2);
            let points = spectrum.points.iter().map(|p| (percentile_to_x(p[0]).min(x_end), axis.axis_at(p[1])));
            chart
                .draw_series(LineSeries::new(points, style))?
                .label(spectrum.name)
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], style));
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .background_style(WHITE.mix(0.85))
            .border_style(GRID_GREY)
            .label_font(label_style())
            .draw()?;
        Ok(())
    })
}

/// The right end of the percentile axis: the whole decade past the last percentile below 100
/// (where the 100% point, the max, is drawn), and at least 99%.
fn latency_x_end(spectra: &[&Spectrum<'_>]) -> f64 {
    let last_below_100 = spectra
        .iter()
        .flat_map(|s| s.points.iter())
        .map(|p| p[0])
        .filter(|p| *p < 100.0)
        .map(percentile_to_x)
        .fold(0.0, f64::max);
    (last_below_100.floor() + 1.0).clamp(2.0, MAX_NINES)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentile_axis_labels() {
        assert_eq!(percentile_label(percentile_to_x(50.0)), "50%");
        assert_eq!(percentile_label(1.0), "90%");
        assert_eq!(percentile_label(2.0), "99%");
        assert_eq!(percentile_label(3.0), "99.9%");
        assert_eq!(percentile_label(5.0), "99.999%");
        assert!((percentile_to_x(99.9) - 3.0).abs() < 1e-9);
        assert_eq!(percentile_to_x(100.0), MAX_NINES);
    }

    #[test]
    fn ticks_are_round() {
        assert_eq!(nice_ticks(10.0, 5), vec![0.0, 2.0, 4.0, 6.0, 8.0, 10.0]);
        assert_eq!(nice_ticks(0.0, 5), vec![0.0]);
        assert_eq!(short_count(1_250_000.0), "1.2M");
        assert_eq!(short_count(50_000.0), "50k");
        assert_eq!(short_count(999.0), "999");
    }

    #[test]
    fn log_axis_only_when_values_span_decades() {
        let narrow = [100.0, 150.0, 300.0];
        assert!(!LatencyAxis::for_values(narrow.iter().copied()).is_log());
        let wide = [0.0, 40.0, 900.0, 25_000.0];
        let axis = LatencyAxis::for_values(wide.iter().copied());
        assert_eq!(axis, LatencyAxis::Log { lo_decade: 1.0, hi_decade: 5.0 });
        assert_eq!(axis.axis_at(0.0), 1.0);
    }

    #[test]
    fn text_is_written_as_svg_text() {
        let points = [[0.0, 90.0], [50.0, 120.0], [99.0, 800.0], [99.9, 4_000.0], [100.0, 9_000.0]];
        let svg = latency_chart("t: latency", &[Spectrum { name: "rtt", points: &points }]).expect("chart");
        assert!(svg.starts_with("<svg"));
        assert!(svg.contains("<text"));
        assert!(svg.contains("99.9%"));
        // A narrow distribution gets a linear axis; it must draw too.
        let narrow = [[0.0, 90.0], [50.0, 95.0], [99.0, 120.0], [100.0, 130.0]];
        let svg = latency_chart("t", &[Spectrum { name: "rtt", points: &narrow }]).expect("chart");
        assert!(svg.contains(">140 µs<") || svg.contains("140 µs"));
    }

    #[test]
    fn bars_may_be_negative() {
        let bars = [
            Bar { label: "server_user", value: -120.0, is_sum: false },
            Bar { label: "total", value: 9160.0, is_sum: true },
        ];
        let svg = bytes_bar_chart("t: memory", &bars).expect("chart");
        assert!(svg.contains("-120 B") && svg.contains("8.9 KiB (9,160 B)"));
        assert!(matches!(bytes_bar_chart("t", &[]), Err(ChartError::NoData)));
    }
}
