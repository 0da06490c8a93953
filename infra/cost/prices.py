"""The shipped price table (`prices.json`): dated on-demand prices per region, each with its source.

`refresh` rebuilds the table from the AWS Price List API (boto3 `pricing`), using the query
stored with each entry, so the table and the way to re-derive it never drift apart.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

PRICES_PATH = Path(__file__).resolve().parent / "prices.json"
REGION_NAMES = {"us-east-1": "US East (N. Virginia)", "us-west-2": "US West (Oregon)", "eu-west-1": "EU (Ireland)"}


@dataclass(frozen=True)
class Price:
    key: str
    price: float
    unit: str
    source: str
    confidence: str


class PriceTable:
    def __init__(self, document: dict[str, Any]) -> None:
        self.document = document
        self.date: str = document["date"]
        self.hours_per_month: float = document["hoursPerMonth"]

    @classmethod
    def load(cls, path: Path = PRICES_PATH) -> "PriceTable":
        return cls(json.loads(path.read_text(encoding="utf-8")))

    @property
    def regions(self) -> list[str]:
        return sorted(self.document["regions"])

    def get(self, region: str, key: str) -> Price | None:
        entry = self.document["regions"].get(region, {}).get(key)
        if entry is None:
            return None
        return Price(
            key=key, price=entry["price"], unit=entry["unit"], source=entry["source"], confidence=entry["confidence"]
        )


def _on_demand_usd(raw_products: list[str]) -> float | None:
    """The single on-demand USD price in a Price List answer, ignoring free tiers at $0."""
    prices = set()
    for raw in raw_products:
        product = json.loads(raw)
        for term in product.get("terms", {}).get("OnDemand", {}).values():
            for dimension in term["priceDimensions"].values():
                usd = float(dimension["pricePerUnit"].get("USD", "0"))
                if usd > 0:
                    prices.add(usd)
    if len(prices) == 1:
        return prices.pop()
    return min(prices) if prices else None


def refresh(
    client: Any,
    *,
    table: PriceTable,
    regions: list[str],
    progress: Callable[[str], None] = print,
) -> tuple[dict[str, Any], list[str]]:
    """Query every entry's price for each region; returns the new document and the entries left as they were."""
    document = json.loads(json.dumps(table.document))
    unchanged: list[str] = []
    for region in regions:
        entries = document["regions"].setdefault(region, json.loads(json.dumps(document["regions"]["us-east-1"])))
        for index, (key, entry) in enumerate(sorted(entries.items()), start=1):
            query = entry["query"]
            filters = [
                {"Type": "TERM_MATCH", "Field": field, "Value": value} for field, value in query["filters"].items()
            ]
            filters.append({"Type": "TERM_MATCH", "Field": "regionCode", "Value": region})
            products: list[str] = []
            for page in client.get_paginator("get_products").paginate(
                ServiceCode=query["service"], Filters=filters, FormatVersion="aws_v1"
            ):
                products.extend(page["PriceList"])
            price = _on_demand_usd(products)
            if price is None:
                unchanged.append(f"{region} {key}")
                continue
            entry.update(
                price=price,
                source=f"AWS Price List API ({query['service']}), fetched {dt.date.today().isoformat()}",
                confidence="A",
            )
            if index % 20 == 0:
                progress(f"  {region}: {index}/{len(entries)} prices")
        progress(f"{region}: done")
    document["date"] = dt.date.today().isoformat()
    return document, unchanged
