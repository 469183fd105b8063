"""What a try costs: the price table (``[reflow.cost]`` in reflow.toml) and the arithmetic
that prices what one try used with it. Pure: no database, no clock, no launcher.

A pod is priced by what it *requested* (that is what a node reserves for it, used or not)
for as long as it held it; a local process by what it was *measured* to use (CPU-seconds,
and its peak memory for as long as it ran). Money is :class:`~decimal.Decimal` throughout,
kept to 12 decimal places (:data:`PLACES`), rounded only when it is shown.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator

# A price per unit: never negative, never infinite.
Price = Annotated[Decimal, Field(ge=0, allow_inf_nan=False)]
Currency = Annotated[str, StringConstraints(pattern=r"^[A-Z]{3}$")]
GIB = Decimal(1024**3)
HOUR = Decimal(3600)
# Storage is billed per GiB-month; clouds count a month as 730 hours (365 x 24 / 12).
MONTH = 730 * HOUR
ZERO = Decimal(0)
# Amounts are kept to 12 decimal places (a millionth of a millionth of the currency): sums
# of them are then exact whatever their order, and a line's costs add up to its total.
PLACES = Decimal("1e-12")
# What a table without any price says about the figures it gives.
NO_PRICES = "no prices configured ([reflow.cost] in reflow.toml): every cost is 0"


class NodePool(BaseModel):
    """The prices of the nodes that a pod's node selector picks (a spot pool next to an
    on-demand one): a pod whose node selector holds every label of ``selector`` is priced
    with these rates; a rate left out is the table's own."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    selector: dict[str, str] = Field(min_length=1)
    cpu_hour: Price | None = None
    memory_gib_hour: Price | None = None
    gpu_hour: dict[str, Price] = Field(default_factory=dict)

    def picks(self, node_selector: Mapping[str, str]) -> bool:
        return all(node_selector.get(k) == v for k, v in self.selector.items())


@dataclass(frozen=True)
class Rates:
    """The rates one try is priced with (the table's, or a node pool's over them)."""

    cpu_hour: Decimal = ZERO
    memory_gib_hour: Decimal = ZERO
    gpu_hour: Mapping[str, Decimal] = field(default_factory=dict)
    ephemeral_gib_hour: Decimal = ZERO
    storage_gib_month: Mapping[str, Decimal] = field(default_factory=dict)


class CostSettings(BaseModel):
    """``[reflow.cost]``: the price table. Every price defaults to zero: reflow never
    invents a price, and says so (:data:`NO_PRICES`) while none is set."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    currency: Currency = "USD"
    cpu_hour: Price = Field(default=ZERO, description="per vCPU-hour")
    memory_gib_hour: Price = Field(default=ZERO, description="per GiB-hour of memory")
    gpu_hour: dict[str, Price] = Field(
        default_factory=dict, description="per GPU-hour, by resource name (nvidia.com/gpu)"
    )
    ephemeral_gib_hour: Price = Field(
        default=ZERO, description="per GiB-hour of ephemeral storage (scratch space)"
    )
    storage_gib_month: dict[str, Price] = Field(
        default_factory=dict,
        description="per GiB-month of claims, by storage class ('default': a claim that "
        "names none)",
    )
    node_pools: tuple[NodePool, ...] = ()

    @model_validator(mode="after")
    def _gpus_named(self) -> CostSettings:
        for name in [*self.gpu_hour, *(n for p in self.node_pools for n in p.gpu_hour)]:
            if "/" not in name:
                raise ValueError(
                    f"gpu_hour: {name!r} is not a resource name (e.g. 'nvidia.com/gpu')"
                )
        return self

    @property
    def configured(self) -> bool:
        """Is any price set?"""
        rates = [
            self.cpu_hour,
            self.memory_gib_hour,
            self.ephemeral_gib_hour,
            *self.gpu_hour.values(),
            *self.storage_gib_month.values(),
        ]
        for pool in self.node_pools:
            rates += [pool.cpu_hour or ZERO, pool.memory_gib_hour or ZERO]
            rates += pool.gpu_hour.values()
        return any(rate > 0 for rate in rates)

    def rates_for(self, node_selector: Mapping[str, str] | None = None) -> Rates:
        """The rates of a pod with this node selector: the first node pool that picks it
        over the table's own (a local process has none: the table's)."""
        pool = next((p for p in self.node_pools if p.picks(node_selector or {})), None)
        gpus = dict(self.gpu_hour)
        if pool is not None:
            gpus |= pool.gpu_hour
        return Rates(
            cpu_hour=_first(pool.cpu_hour if pool else None, self.cpu_hour),
            memory_gib_hour=_first(pool.memory_gib_hour if pool else None, self.memory_gib_hour),
            gpu_hour=gpus,
            ephemeral_gib_hour=self.ephemeral_gib_hour,
            storage_gib_month=dict(self.storage_gib_month),
        )


def _first(value: Decimal | None, default: Decimal) -> Decimal:
    return default if value is None else value


@dataclass(frozen=True)
class Claim:
    """A volume claim a try held: its size in bytes, its storage class ("default" when it
    names none), and for how long (seconds)."""

    size: Decimal
    seconds: Decimal
    storage_class: str = "default"


@dataclass(frozen=True)
class Usage:
    """What one try used, in the units it is priced in.

    ``seconds``: how long it held what it requested (a pod: from scheduled to ended; a
    process: from its start to its end). Requests: ``cpu`` in vCPUs, ``memory`` and
    ``ephemeral`` in bytes, ``gpus`` by resource name. Measured (a local process):
    ``cpu_seconds`` and ``peak_memory`` in bytes; when both are known, the try is priced
    by them rather than by its requests (a process reserves nothing)."""

    seconds: Decimal
    cpu: Decimal = ZERO
    memory: Decimal = ZERO
    gpus: Mapping[str, Decimal] = field(default_factory=dict)
    ephemeral: Decimal = ZERO
    claims: tuple[Claim, ...] = ()
    node_selector: Mapping[str, str] = field(default_factory=dict)
    cpu_seconds: Decimal | None = None
    peak_memory: Decimal | None = None

    @property
    def measured(self) -> bool:
        return self.cpu_seconds is not None and self.peak_memory is not None


@dataclass(frozen=True)
class Held:
    """What one pod or process of a try held, and from when to when, as its launcher saw it:
    a ``pod`` (a try's own), an ``executor`` (a Spark executor pod it started) or a
    ``process`` (a local try's process tree, measured). Priced as :meth:`usage`."""

    kind: str
    name: str
    began: datetime | None  # a pod: scheduled on a node; a process: started
    ended: datetime | None
    cpu: Decimal = ZERO
    memory: Decimal = ZERO
    gpus: Mapping[str, Decimal] = field(default_factory=dict)
    ephemeral: Decimal = ZERO
    # Claims that live with it (a pod's ephemeral volumes): (size in bytes, storage class).
    claims: tuple[tuple[Decimal, str], ...] = ()
    node_selector: Mapping[str, str] = field(default_factory=dict)
    cpu_seconds: Decimal | None = None
    peak_memory: Decimal | None = None

    @property
    def seconds(self) -> Decimal:
        """How long it held what it asked for (0 when it never began, or has no end)."""
        if self.began is None or self.ended is None:
            return ZERO
        return max(ZERO, Decimal(str((self.ended - self.began).total_seconds())))

    def usage(self) -> Usage:
        seconds = self.seconds
        return Usage(
            seconds=seconds,
            cpu=self.cpu,
            memory=self.memory,
            gpus=self.gpus,
            ephemeral=self.ephemeral,
            claims=tuple(Claim(size, seconds, kind) for size, kind in self.claims),
            node_selector=self.node_selector,
            cpu_seconds=self.cpu_seconds,
            peak_memory=self.peak_memory,
        )


@dataclass(frozen=True)
class Cost:
    """A cost by what it pays for; :attr:`total` is their sum. Costs add up."""

    cpu: Decimal = ZERO
    memory: Decimal = ZERO
    gpu: Decimal = ZERO
    ephemeral: Decimal = ZERO
    storage: Decimal = ZERO

    @property
    def total(self) -> Decimal:
        return self.cpu + self.memory + self.gpu + self.ephemeral + self.storage

    def __add__(self, other: Cost) -> Cost:
        return Cost(
            self.cpu + other.cpu,
            self.memory + other.memory,
            self.gpu + other.gpu,
            self.ephemeral + other.ephemeral,
            self.storage + other.storage,
        )


def price(usage: Usage, prices: CostSettings) -> Cost:
    """What ``usage`` costs at ``prices``. A GPU resource or storage class without a price
    costs nothing (it is not invented)."""
    rates = prices.rates_for(usage.node_selector)
    hours = max(usage.seconds, ZERO) / HOUR
    if usage.measured:
        assert usage.cpu_seconds is not None and usage.peak_memory is not None
        cpu = usage.cpu_seconds / HOUR * rates.cpu_hour
        memory = usage.peak_memory / GIB * hours * rates.memory_gib_hour
    else:
        cpu = usage.cpu * hours * rates.cpu_hour
        memory = usage.memory / GIB * hours * rates.memory_gib_hour
    gpu = sum(
        (count * hours * rates.gpu_hour.get(name, ZERO) for name, count in usage.gpus.items()),
        ZERO,
    )
    ephemeral = usage.ephemeral / GIB * hours * rates.ephemeral_gib_hour
    storage = sum(
        (
            c.size
            / GIB
            * (max(c.seconds, ZERO) / MONTH)
            * rates.storage_gib_month.get(c.storage_class, ZERO)
            for c in usage.claims
        ),
        ZERO,
    )
    return Cost(*(amount.quantize(PLACES) for amount in (cpu, memory, gpu, ephemeral, storage)))
