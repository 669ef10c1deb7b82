#!/usr/bin/env python3
"""Write RESULTS.md and throughput.png into --out DIR from a meterbench results file.

meterbench runs this at the end of a run. Only the standard library is needed
for RESULTS.md; the plot needs matplotlib (Debian: python3-matplotlib) and is
skipped with a warning when it is missing.
"""
import argparse
import datetime
import json
import os
import platform
import subprocess
import sys

TARGET_EPS = 3_000_000
TARGET_PG_RATIO = 25
TARGET_P99_MS = 5.0
TARGET_CLOSE_S = 1.0
TARGET_CLOSE_TENANTS = 1_000
TARGET_CLOSE_EVENTS = 100_000_000


def machine_description():
    """Return CPU model, logical CPUs and memory from /proc."""
    model = "unknown CPU"
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    memory_kib = 0
    try:
        with open("/proc/meminfo", encoding="ascii") as meminfo:
            for line in meminfo:
                if line.startswith("MemTotal:"):
                    memory_kib = int(line.split()[1])
    except OSError:
        pass
    return (f"{model}, {os.cpu_count()} logical CPUs (nproc), "
            f"{memory_kib / 1024 / 1024:.1f} GiB memory, Linux {platform.release()}")


def load_average():
    """Return the 1-minute load average from /proc/loadavg, or "unknown"."""
    try:
        with open("/proc/loadavg", encoding="ascii") as source:
            return source.read().split()[0]
    except (OSError, IndexError):
        return "unknown"


def git_commit(source_dir):
    """Return the commit of the source tree, marked when files differ from it."""
    try:
        commit = subprocess.run(["git", "-C", source_dir, "rev-parse", "HEAD"],
                                capture_output=True, text=True, check=True).stdout.strip()
        # Build directories and results are untracked: only tracked files changed count.
        dirty = subprocess.run(["git", "-C", source_dir, "status", "--porcelain",
                                "--untracked-files=no"],
                               capture_output=True, text=True, check=True).stdout.strip()
        return commit + (" (with uncommitted changes)" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown (not a git checkout)"


def number(value, digits=0):
    return f"{value:,.{digits}f}"


def open_at(peer, load):
    for entry in peer["open"]:
        if abs(entry["load"] - load) < 1e-9:
            return entry
    return None


def latency_cells(peer, load):
    entry = open_at(peer, load)
    if entry is None or entry["samples"] == 0:
        return "n/a", "n/a", "n/a"
    mark = "*" if entry["incomplete"] else ""
    return (f"{entry['p50_ms']:.2f}{mark}", f"{entry['p99_ms']:.2f}{mark}",
            f"{entry['p999_ms']:.2f}{mark}")


def check_cell(peer):
    if not peer["ran"]:
        return "skipped"
    if peer["failed"]:
        return "FAILED"
    if peer["name"] == "meterd-udp" and peer["stored"] != peer["sent"]:
        return f"{peer['stored']:,} of {peer['sent']:,} stored"
    parts = ["count ok" if peer["count_ok"] else "COUNT DIFFERS"]
    if peer["rollups_checked"]:
        parts.append("rollups equal" if peer["rollup_differences"] == 0
                     else f"{peer['rollup_differences']} ROLLUPS DIFFER")
    return ", ".join(parts)


def kib_cell(peer, key):
    """Return a KiB field of the results as MiB, or n/a when it was not measured (-1)."""
    value = peer.get(key, -1)
    return "n/a" if value < 0 else f"{value / 1024:.1f}"


def main_table(results, peers):
    engine = next((p for p in peers if p["name"] == "meterd-tcp" and p["ran"]), None)
    lines = ["| peer | what an ack means | events/s (closed loop) | meterd-tcp ÷ peer | "
             "p50 ms at 50 % | p99 ms at 50 % | p99.9 ms at 50 % | CPU s per M events | "
             "peak RSS MiB | RssAnon MiB | peak RssAnon MiB | RssFile MiB | check |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for peer in peers:
        if not peer["ran"]:
            lines.append(f"| {peer['name']} | {peer['durability']} | skipped: {peer['note']} "
                         "| | | | | | | | | | |")
            continue
        ratio = "n/a"
        if engine and peer["closed_eps"] > 0:
            ratio = f"{engine['closed_eps'] / peer['closed_eps']:.2f}"
        cpu = peer["cpu_s"] * 1e6 / peer["closed_events"] if peer["closed_events"] else 0
        p50, p99, p999 = latency_cells(peer, 0.5)
        if peer["name"] == "meterd-udp":
            p50 = p99 = p999 = "no acks"
        lines.append(f"| {peer['name']} | {peer['durability']} | {number(peer['closed_eps'])} | "
                     f"{ratio} | {p50} | {p99} | {p999} | {cpu:.2f} | "
                     f"{peer['rss_kib'] / 1024:.1f} | {kib_cell(peer, 'rss_anon_kib')} | "
                     f"{kib_cell(peer, 'rss_anon_peak_kib')} | "
                     f"{kib_cell(peer, 'rss_file_kib')} | {check_cell(peer)} |")
    return lines


def commit_cells(entry):
    """Return the commit columns of an open-loop row: meterd's own counts, n/a for the peers."""
    if entry.get("commits", -1) < 0:
        return "n/a | n/a | n/a | n/a | n/a"
    mean = write = "n/a"
    if entry.get("commit_mean_ms", -1) >= 0:
        mean = f"{entry['commit_mean_ms']:.2f}"
        write = f"{entry['write_mean_ms']:.2f}"
    return (f"{entry['commits']:,} | {entry['commits_over_10ms']:,} | "
            f"{entry['commit_max_ms']:.2f} | {mean} | {write}")


def lag_cell(entry):
    """Return how late the sender wrote frames at p99, or n/a where the driver does not measure it."""
    lag = entry.get("send_lag_p99_ms", -1)
    return "n/a" if lag < 0 else f"{lag:.2f}"


def load_table(peers):
    lines = ["| peer | load | offered events/s | achieved events/s | seconds | frames measured | "
             "p50 ms | p99 ms | p99.9 ms | max ms | sender late p99 ms | commits | "
             "commits over 10 ms | slowest commit ms | mean commit ms | "
             "of it writing and syncing, ms |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for peer in peers:
        for entry in peer["open"]:
            mark = " (incomplete)" if entry["incomplete"] else ""
            if entry["achieved_eps"] < 0.9 * entry["offered_eps"]:
                mark += " (saturated)"
            lines.append(f"| {peer['name']} | {entry['load']:.2f}{mark} | "
                         f"{number(entry['offered_eps'])} | {number(entry['achieved_eps'])} | "
                         f"{entry['seconds']:.2f} | {entry['samples']:,} | {entry['p50_ms']:.2f} | {entry['p99_ms']:.2f} | "
                         f"{entry['p999_ms']:.2f} | {entry['max_ms']:.2f} | "
                         f"{lag_cell(entry)} | {commit_cells(entry)} |")
    return lines


def close_target_line(close):
    """Return the table row of the close target, or None when the results have no close."""
    if close is None:
        return None
    target = (f"closing a period of {number(TARGET_CLOSE_TENANTS)} tenants holding "
              f"{number(TARGET_CLOSE_EVENTS)} events in under {TARGET_CLOSE_S:g} s")
    if not close["ran"]:
        return f"| {target} | not measured: {close['note']} | not measured |"
    measured = (f"{close['close_seconds']:.3f} s for {number(close['tenants'])} tenants and "
                f"{number(close['events'])} events")
    if close["failed"]:
        return f"| {target} | {measured}, FAILED: {close['note']} | no |"
    if close["tenants"] < TARGET_CLOSE_TENANTS or close["events"] < TARGET_CLOSE_EVENTS:
        return (f"| {target} | {measured}, smaller than the target's size | "
                "not measured at that size |")
    met = "yes" if close["close_seconds"] < TARGET_CLOSE_S else "no"
    return f"| {target} | {measured} | {met} |"


def open_loop_basis(results):
    """Return the line that names what the open-loop loads are fractions of."""
    fixed = results.get("open_max_eps", 0)
    if fixed > 0:
        return (f"- loads: fractions of {number(fixed)} events/s for every peer (--open-max), "
                "not of each peer's closed-loop maximum")
    return "- loads: fractions of each peer's own closed-loop maximum"


def target_lines(peers, close, open_max_eps=0):
    by_name = {p["name"]: p for p in peers if p["ran"] and p["closed_eps"] > 0}
    engine = by_name.get("meterd-tcp")
    close_line = close_target_line(close)
    if engine is None:
        if close_line is None:
            return ["meterd-tcp did not run and the results have no close, so no target can "
                    "be compared."]
        return ["| target | measured | met |", "|---|---|---|", close_line, "",
                "meterd-tcp did not run, so its targets cannot be compared."]
    eps = engine["closed_eps"]
    lines = ["| target | measured | met |", "|---|---|---|"]
    lines.append(f"| at least {number(TARGET_EPS)} events/s, durable TCP, batched frames | "
                 f"{number(eps)} events/s ({eps / TARGET_EPS:.3f} of the target) | "
                 f"{'yes' if eps >= TARGET_EPS else 'no'} |")
    postgres = by_name.get("postgres-copy")
    if postgres:
        ratio = eps / postgres["closed_eps"]
        lines.append(f"| at least {TARGET_PG_RATIO}x PostgreSQL COPY | {ratio:.2f}x | "
                     f"{'yes' if ratio >= TARGET_PG_RATIO else 'no'} |")
    lmdb = by_name.get("lmdb-raw")
    if lmdb:
        ratio = eps / lmdb["closed_eps"]
        lines.append(f"| at or above the raw LMDB per-event append ceiling | {ratio:.2f}x of it | "
                     f"{'yes' if ratio >= 1 else 'no'} |")
    half = open_at(engine, 0.5)
    if half and half["samples"] and open_max_eps > 0:
        lines.append(f"| p99 ack latency at most {TARGET_P99_MS:g} ms at half the maximum | "
                     f"not measured: the loads were fractions of --open-max "
                     f"({number(open_max_eps)} events/s), not of this run's maximum | n/a |")
    elif half and half["samples"]:
        lines.append(f"| p99 ack latency at most {TARGET_P99_MS:g} ms at half the maximum | "
                     f"{half['p99_ms']:.2f} ms | "
                     f"{'yes' if half['p99_ms'] <= TARGET_P99_MS else 'no'} |")
    if close_line is not None:
        lines.append(close_line)
    return lines


def money(minor):
    """Format integer cents as a decimal amount, without floating point."""
    sign = "-" if minor < 0 else ""
    return f"{sign}{abs(minor) // 100:,}.{abs(minor) % 100:02d}"


def close_section(close):
    """Return the lines of the close phase: its sizes, times and check."""
    lines = ["## Closing a month", ""]
    if close is None:
        return lines + ["This results file has no close phase.", ""]
    if not close["ran"]:
        return lines + [f"The close phase did not run: {close['note']}.", ""]
    fill_eps = close["events"] / close["fill_seconds"] if close["fill_seconds"] > 0 else 0
    sizes = ""
    if close["events"] < close["events_requested"]:
        sizes = (f" ({number(close['events_requested'])} were requested; the free disk or the "
                 "fill's time cap allowed fewer)")
    lines += [
        "A fresh ledger, filled through the ledger API with events of November 2023 drawn from "
        f"the bundled traces{sizes}, then closed as `meterctl close --period 2023-11` closes "
        "it: open, the grace and order checks, rating, one transaction, the invoice files, "
        "close of the ledger. The second close finds every month closed.",
        "",
        "| tenants | events | fill events/s | ledger GiB | close s | second close s | "
        "finalized invoices | invoice totals USD | check |",
        "|---:|---:|---:|---:|---:|---:|---:|---|---|",
        f"| {number(close['tenants'])} | {number(close['events'])} | {number(fill_eps)} | "
        f"{close['ledger_bytes'] / 2**30:.2f} | {close['close_seconds']:.3f} | "
        f"{close['rerun_seconds']:.3f} | {number(close['invoices'])} | "
        f"{money(close['total_minor_min'])} to {money(close['total_minor_max'])}, sum "
        f"{money(close['total_minor_sum'])} | {'FAILED: ' + close['note'] if close['failed'] else 'ok'} |",
        "",
    ]
    return lines


def write_markdown(results, path, source_dir):
    peers = results["peers"]
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    text = [
        "# meterbench results",
        "",
        "Written by `meterbench` (bench/report.py). How each peer is set up, and why, is in "
        "`bench/README.md`.",
        "",
        f"- command: `{results['command']}`",
        f"- date: {now}",
        f"- commit: {git_commit(source_dir)}",
        f"- machine: {machine_description()}",
        f"- events: {results['closed_events']:,} in the closed loop; the pool holds "
        f"{results['pool_events']:,} events, {results['trace_events']:,} of them replayed "
        "from the bundled traces and the rest drawn from them; "
        f"{results['events_per_frame']} events per frame, {results['tenants']} tenants; "
        f"the drawn events' timestamps spread over {results.get('months', 6)} calendar "
        "months from 2023-11",
        open_loop_basis(results),
        f"- open loop: Poisson arrivals of frames for {results['duration_s']:g} s per load, "
        f"from a pool grown to at most {results['pool_events_max']:,} events, so a peer "
        "faster than that gets a shorter phase (the seconds column); latency from each "
        "frame's scheduled arrival to its acknowledgement",
        f"- group commit of the embedded peers: {results['group_events']} events per commit "
        "(meterd's own average in its closed loop)",
        "",
        f"NOTE: the load average when the run ended was {load_average()} on "
        f"{os.cpu_count()} CPUs; other work on the machine makes the numbers noisy, so "
        "compare peers within this run, not across runs.",
        "",
        "## Side by side",
        "",
    ]
    text += main_table(results, peers)
    text += ["", "An asterisk marks a phase that did not complete (time cap or failure).",
             "CPU is that of the server processes (PostgreSQL: the postmaster and its "
             "backends; Redis, meterd, the socket sink: their process) during the closed loop; "
             "for SQLite and LMDB, which run in meterbench, the CPU of the storage thread.", ""]
    queries = [p for p in peers if p["rollup_query_s"] > 0]
    if queries:
        text += ["Rollups computed by GROUP BY after the closed loop, timed apart from the "
                 "ingest:", ""]
        for peer in queries:
            text.append(f"- {peer['name']}: {peer['rollup_query_s']:.3f} s over "
                        f"{peer['closed_events']:,} events")
        text.append("")
    text += ["## Targets of the engine", "", "Ratios against peers in this run; the targets "
             "are not asserted by any test.", ""]
    text += target_lines(peers, results.get("close"), results.get("open_max_eps", 0))
    text += [""] + close_section(results.get("close"))
    text += ["## Latency at each offered load", "",
             "A load marked saturated achieved less than 90 % of what was offered: the peer, "
             "or the single sender thread, could not keep up, and the latency is mostly queueing. "
             "\"sender late p99 ms\" is the p99 of how long after its scheduled arrival the "
             "sender finished writing a frame (meterd-tcp and socket-ceiling only): that wait "
             "for a CPU or a full socket is part of the latency columns.",
             ""]
    text += load_table(peers)
    text += ["", "![throughput and p99 latency against offered load](throughput.png)", ""]
    with open(path, "w", encoding="utf-8") as out:
        out.write("\n".join(text))


def write_plot(results, path):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("report: matplotlib is missing (apt-get install python3-matplotlib); "
              "no throughput.png written", file=sys.stderr)
        return
    figure, (throughput, latency) = plt.subplots(1, 2, figsize=(13, 5))
    plotted = False
    for peer in results["peers"]:
        points = [e for e in peer["open"] if e["samples"] > 0]
        if not peer["ran"] or not points:
            continue
        offered = [e["offered_eps"] for e in points]
        throughput.plot(offered, [e["achieved_eps"] for e in points], marker="o",
                        label=peer["name"])
        latency.plot(offered, [e["p99_ms"] for e in points], marker="o", label=peer["name"])
        plotted = True
    for axes in (throughput, latency):
        axes.set_xscale("log")
        axes.set_yscale("log")
        axes.set_xlabel("offered load (events/s)")
        axes.grid(True, which="both", alpha=0.3)
        if plotted:
            axes.legend(fontsize=8)
    throughput.set_ylabel("achieved (events/s)")
    throughput.set_title("throughput against offered load")
    latency.set_ylabel("p99 acknowledgement latency (ms)")
    latency.set_title("p99 latency against offered load")
    latency.axhline(TARGET_P99_MS, color="grey", linestyle="--", linewidth=1)
    figure.tight_layout()
    figure.savefig(path, dpi=110)


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--results", required=True, help="results JSON written by meterbench")
    parser.add_argument("--out", required=True, help="directory for RESULTS.md and throughput.png")
    args = parser.parse_args()
    with open(args.results, encoding="utf-8") as source:
        results = json.load(source)
    source_dir = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    os.makedirs(args.out, exist_ok=True)
    write_markdown(results, os.path.join(args.out, "RESULTS.md"), source_dir)
    write_plot(results, os.path.join(args.out, "throughput.png"))
    print(f"report: wrote {os.path.join(args.out, 'RESULTS.md')}", file=sys.stderr)


if __name__ == "__main__":
    main()
