//! `pennant conformance DIR`: loads LaunchDarkly-format evaluation test data and checks the engine against it.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;

/// Arguments of `pennant conformance`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Directory of test data files (`*.yml`, `*.yaml`, `*.json`), e.g. LaunchDarkly's SDK test-harness
    /// evaluation data.
    pub dir: PathBuf,
}

/// Runs every case, prints each failure and a final `N passed, M failed` line.
///
/// Exits 0 when every case passed and at least one ran, 1 otherwise; load errors are returned (exit 2).
pub fn run(args: &Args) -> anyhow::Result<ExitCode> {
    let suites = pennant_conformance::load_dir(&args.dir)
        .with_context(|| format!("cannot load conformance data from {}", args.dir.display()))?;
    let report = pennant_conformance::run(&suites);

    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    for result in report.failures() {
        writeln!(out, "FAIL {} :: {}", result.suite, result.case)?;
        if let Some(failure) = &result.failure {
            writeln!(
                out,
                "  call:     {}_variation(default: {})",
                pennant_conformance::value_type_name(failure.value_type),
                failure.default
            )?;
            writeln!(out, "  problems: {}", failure.problems.join("; "))?;
            writeln!(out, "  expected: {}", failure.expected)?;
            writeln!(out, "  actual:   {}", failure.actual)?;
        }
    }
    writeln!(out, "{} passed, {} failed", report.passed(), report.failed())?;
    out.flush()?;

    if report.total() == 0 {
        eprintln!(
            "error: no conformance cases found in {} (expected *.yml, *.yaml or *.json files with evaluations)",
            args.dir.display()
        );
        return Ok(ExitCode::FAILURE);
    }
    Ok(if report.failed() == 0 { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}
