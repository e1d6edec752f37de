"""The soak's tables: what ``soak.py`` prints at the end (the JSON holds everything)."""

from __future__ import annotations

from typing import Any


def print_table(result: dict[str, Any]) -> None:
    jobs = result["jobs"]
    ping = result["ping_ms"]

    def ms(value: float | None) -> str:
        return "-" if value is None else f"{value:.2f}"

    print(f"\nsoak: {result['model']}, {result['minutes']:g} min, at most {result['rate_per_s']:g} requests/s "
          f"({result['machine']})")
    rows = [
        ("messages sent", f"{result['messages_sent']}"),
        ("jobs accepted / ended", f"{jobs['accepted']} / {jobs['ended']}"),
        ("replies lost (accepted, no end)", f"{len(jobs['lost'])}"),
        ("duplicate ends", f"{jobs['duplicate_ends']}"),
        ("requests never answered", f"{len(jobs['unanswered_requests'])}"),
        ("unexpected failures", f"{len(jobs['unexpected_failures'])}"),
        ("wrong lengths", f"{len(jobs['wrong_lengths'])}"),
        ("cancels sent / too late (job had ended)", f"{result['cancels_sent']} / {result['cancels_too_late']}"),
        ("garbage sent / answered", f"{result['garbage_sent']} / {result['garbage_answered']}"),
        ("jams started / segments", f"{result['jams']['started']} / {result['jams']['segments']}"),
        ("ping ms p50 / p95 / p99 / max", f"{ms(ping['p50'])} / {ms(ping['p95'])} / {ms(ping['p99'])} / "
                                          f"{ms(ping['max'])} ({ping['count']} pings, {ping['lost']} lost)"),
        ("daemon RSS MB first / last / max", f"{result['rss_mb']['first']:.0f} / {result['rss_mb']['last']:.0f} / "
                                             f"{result['rss_mb']['max']:.0f}" if result["samples"] else "-"),
        ("daemon log lines / tracebacks", f"{result['daemon']['log_lines']} / {result['daemon']['tracebacks']}"),
    ]
    width = max(len(r[0]) for r in rows)
    print("| what | measured |\n|---|---|")
    for name, value in rows:
        print(f"| {name:<{width}} | {value} |")
    print("\n| kind | outcomes |\n|---|---|")
    for kind, outcomes in jobs["by_kind"].items():
        print(f"| {kind} | " + ", ".join(f"{k} {v}" for k, v in sorted(outcomes.items())) + " |")
    samples = result["samples"]
    if samples:
        step = max(1, len(samples) // 10)
        picked = samples[::step] + ([samples[-1]] if (len(samples) - 1) % step else [])
        print("\n| t (s) | RSS MB | threads | open fds |\n|---|---|---|---|")
        for s in picked:
            print(f"| {s['t']:.0f} | {s['rss_mb']:.0f} | {s['threads']} | {s['fds']} |")
    for name in ("lost", "jobs_ended_twice", "unanswered_requests", "unexpected_failures", "wrong_lengths"):
        if jobs[name]:
            print(f"\n{name}: " + "; ".join(jobs[name][:10]))


def print_hostile(report: dict[str, Any]) -> None:
    print(f"\nhostile mix, {report['rate_per_s']:g} attacks/s (each with a marker ping)")
    print("| daemon | packets sent / answered | request bytes | reply bytes | reply/request bytes (all / max "
          "per packet) | marker ping p99 ms (lost) |\n|---|---|---|---|---|---|")
    for name in ("loopback", "guarded"):
        t = report[name]
        p99 = "-" if t["marker_ping_ms_p99"] is None else f"{t['marker_ping_ms_p99']:.2f}"
        print(f"| {name} | {t['packets_sent']} / {t['packets_answered']} | {t['bytes_in']} | {t['reply_bytes']} | "
              f"{t['reply_per_request_byte']} / {t['max_reply_per_request_byte']} | {p99} ({t['marker_pings_lost']}) |")
    print("\n| attack (loopback) | sent | reply bytes per request byte, max |\n|---|---|---|")
    for kind, row in report["loopback"]["kinds"].items():
        print(f"| {kind} | {row['sent']} | {row['max_ratio']} |")
    rss = report["guarded"]["rss_mb"]
    if rss["first"] is not None:
        print(f"\nguarded daemon RSS MB first / last / max: {rss['first']:.0f} / {rss['last']:.0f} / {rss['max']:.0f}")
    print(f"idle TCP: {report['idle_tcp']}")
