"""An example pipeline: extract a day of events, transform it, then report on it."""

from reflow import Param, Pipeline, Python, Shell


def report(ds: str, params: dict) -> None:
    with open(f"data/{ds}/clean.txt") as fh:
        lines = fh.read().splitlines()
    if len(lines) < params["min_events"]:
        raise ValueError(
            f"{ds}: only {len(lines)} events, expected at least {params['min_events']}"
        )
    print(f"{ds}: {len(lines)} events, first: {lines[0]!r}")


with Pipeline(
    "example",
    schedule="@daily",
    start_date="2024-01-01",
    max_active_runs=2,
    params={"min_events": Param(3, minimum=0, description="fail the day below this count")},
    defaults={"retries": 1, "retry_delay": "2s", "timeout": "5m"},
):
    extract = Shell(
        "extract",
        "mkdir -p data/{{ ds }} && for i in 1 2 3 4 5; do echo event $i of {{ ds }}; done"
        " > data/{{ ds }}/raw.txt",
    )
    transform = Shell("transform", "sort -r data/{{ ds }}/raw.txt > data/{{ ds }}/clean.txt")
    summary = Python("report", report)
    extract >> transform >> summary
