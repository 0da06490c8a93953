from __future__ import annotations

import json
from pathlib import Path

import pytest

from infra.inventory import SECRET, Inventory, InventoryError

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"


def test_reads_a_real_pulumi_preview_json():
    inventory = Inventory.read(FIXTURES / "pulumi-preview-dev.json")
    assert (inventory.project, inventory.stack, inventory.source) == ("mlops-platform", "dev", "pulumi-preview")
    names = {r.name: r for r in inventory.resources}
    # the root stack and the deleted bucket are not in what will exist
    assert set(names) == {"mlops-dev-storage", "mlops-dev-storage-artifacts", "mlops-dev-storage-key"}
    component = names["mlops-dev-storage"]
    assert component.is_component and component.parent is None
    assert names["mlops-dev-storage-artifacts"].parent == component.urn
    assert names["mlops-dev-storage-artifacts"].inputs["forceDestroy"] is True
    key = names["mlops-dev-storage-key"]
    assert key.op == "update" and key.protect and key.retain_on_delete
    assert key.inputs["policy"] == SECRET  # secret envelopes never reach an inventory
    assert inventory.component_of(key) is component


def test_inventory_round_trips_through_its_file(tmp_path, stack_inventories):
    original = stack_inventories["dev"]
    path = tmp_path / "inventory.json"
    original.write(path)
    assert json.loads(path.read_text())["schema"] == "mlops-platform/inventory@1"
    again = Inventory.read(path)
    assert [r.to_json() for r in again.resources] == [r.to_json() for r in original.resources]
    assert again.outputs == original.outputs


def test_offline_urns_have_the_engine_shape(stack_inventories):
    vpc = stack_inventories["dev"].of_type("aws:ec2/vpc:Vpc")[0]
    assert vpc.urn == "urn:pulumi:dev::mlops-platform::mlops:network:Network$aws:ec2/vpc:Vpc::mlops-dev-net-vpc"
    assert vpc.parent == "urn:pulumi:dev::mlops-platform::mlops:network:Network::mlops-dev-net"


@pytest.mark.parametrize("content", ["not json", '{"resources": []}', "[]"])
def test_other_files_are_refused_with_a_reason(tmp_path, content):
    path = tmp_path / "x.json"
    path.write_text(content)
    with pytest.raises(InventoryError, match="x.json"):
        Inventory.read(path)
