"""The price table and the pricing of one try's usage: exact amounts from known requests,
measurements and durations; zeros and a note without prices; one line for a bad table."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import pytest

from reflow.core.config import load_settings
from reflow.core.cost import (
    GIB,
    NO_PRICES,
    Claim,
    Cost,
    CostSettings,
    Usage,
    price,
)
from reflow.core.errors import ConfigError

D = Decimal
TABLE = CostSettings.model_validate(
    {
        "currency": "EUR",
        "cpu_hour": "0.04",
        "memory_gib_hour": "0.005",
        "gpu_hour": {"nvidia.com/gpu": "2.5"},
        "ephemeral_gib_hour": "0.0002",
        "storage_gib_month": {"default": "0.10", "fast-ssd": "0.17"},
        "node_pools": [{"selector": {"pool": "spot"}, "cpu_hour": "0.012"}],
    }
)


def test_a_pod_costs_what_it_requested_for_as_long_as_it_held_it() -> None:
    # 2 vCPU and 4 GiB for 90 minutes, with 10 GiB of scratch space.
    usage = Usage(seconds=D(5400), cpu=D(2), memory=4 * GIB, ephemeral=10 * GIB)
    cost = price(usage, TABLE)
    assert cost.cpu == D("0.12")  # 2 x 1.5 h x 0.04
    assert cost.memory == D("0.03")  # 4 GiB x 1.5 h x 0.005
    assert cost.ephemeral == D("0.003")  # 10 GiB x 1.5 h x 0.0002
    assert (cost.gpu, cost.storage) == (0, 0)
    assert cost.total == D("0.153")


def test_a_node_pool_prices_the_pods_it_picks_and_only_those() -> None:
    spot = Usage(seconds=D(3600), cpu=D(4), node_selector={"pool": "spot", "zone": "a"})
    assert price(spot, TABLE).cpu == D("0.048")  # the pool's 0.012, not 0.04
    other = Usage(seconds=D(3600), cpu=D(4), node_selector={"pool": "on-demand"})
    assert price(other, TABLE).cpu == D("0.16")
    # What the pool leaves out is the table's: memory at 0.005.
    assert price(
        Usage(seconds=D(3600), memory=GIB, node_selector={"pool": "spot"}), TABLE
    ).memory == D("0.005")


def test_gpus_are_priced_by_resource_name_and_an_unpriced_one_costs_nothing() -> None:
    usage = Usage(seconds=D(1800), gpus={"nvidia.com/gpu": D(2), "amd.com/gpu": D(1)})
    assert price(usage, TABLE).gpu == D("2.5")  # 2 x 0.5 h x 2.5; amd.com/gpu has no price


def test_claims_are_priced_per_gib_month_by_storage_class() -> None:
    month = D(730 * 3600)
    usage = Usage(
        seconds=D(60),
        claims=(
            Claim(size=100 * GIB, seconds=month),  # the default class, a whole month
            Claim(size=50 * GIB, seconds=month / 2, storage_class="fast-ssd"),
            Claim(size=GIB, seconds=month, storage_class="unpriced"),
        ),
    )
    assert price(usage, TABLE).storage == D("10") + D("4.25")


def test_a_local_process_costs_what_it_was_measured_to_use() -> None:
    # Ran 1 hour, used 30 CPU-minutes, peaked at 2 GiB: its requests do not count.
    usage = Usage(seconds=D(3600), cpu=D(8), cpu_seconds=D(1800), peak_memory=2 * GIB)
    cost = price(usage, TABLE)
    assert cost.cpu == D("0.02")
    assert cost.memory == D("0.01")
    assert usage.measured


def test_without_prices_everything_costs_zero_and_says_so() -> None:
    table = CostSettings()
    assert not table.configured and TABLE.configured
    usage = Usage(seconds=D(86400), cpu=D(64), memory=256 * GIB, gpus={"nvidia.com/gpu": D(8)})
    assert price(usage, table).total == 0
    assert "no prices configured" in NO_PRICES
    # A pool's price alone is a price.
    assert CostSettings.model_validate(
        {"node_pools": [{"selector": {"pool": "spot"}, "cpu_hour": 0.01}]}
    ).configured


def test_costs_add_up() -> None:
    a = price(Usage(seconds=D(3600), cpu=D(1)), TABLE)
    b = price(Usage(seconds=D(3600), memory=2 * GIB), TABLE)
    assert a + b == Cost(cpu=D("0.04"), memory=D("0.01"))
    assert (a + b).total == D("0.05") == sum([a, b], Cost()).total


@pytest.mark.parametrize(
    ("section", "message"),
    [
        ("cpu_hour = -0.04", "cost.cpu_hour: Input should be greater than or equal to 0"),
        ('cpu_hour = "cheap"', "cost.cpu_hour: Input should be a valid decimal"),
        ('currency = "euro"', "cost.currency: String should match pattern"),
        ("cpu_per_hour = 0.04", "cost.cpu_per_hour: Extra inputs are not permitted"),
        ("gpu_hour = { gpu = 2.5 }", "'gpu' is not a resource name (e.g. 'nvidia.com/gpu')"),
        (
            "[[reflow.cost.node_pools]]\ncpu_hour = 0.01",
            "cost.node_pools.0.selector: Field required",
        ),
    ],
)
def test_a_bad_price_table_is_one_clear_line(tmp_path: Path, section: str, message: str) -> None:
    header = "" if section.startswith("[[") else "[reflow.cost]\n"
    (tmp_path / "reflow.toml").write_text(f"{header}{section}\n")
    with pytest.raises(ConfigError) as caught:
        load_settings(tmp_path)
    text = str(caught.value)
    assert message in text and "\n" not in text


def test_a_price_table_in_reflow_toml(tmp_path: Path) -> None:
    (tmp_path / "reflow.toml").write_text(
        '[reflow.cost]\ncurrency = "EUR"\ncpu_hour = 0.0316\n'
        '[reflow.cost.gpu_hour]\n"nvidia.com/gpu" = 2.48\n'
    )
    table = load_settings(tmp_path).cost
    assert (table.currency, table.cpu_hour) == ("EUR", D("0.0316"))
    assert table.gpu_hour == {"nvidia.com/gpu": D("2.48")}
    bare = tmp_path / "bare"
    bare.mkdir()
    (bare / "reflow.toml").write_text("[reflow]\n")
    assert load_settings(bare).cost == CostSettings()
