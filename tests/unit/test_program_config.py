"""The stack program reads its config exactly as the Pulumi CLI hands it over."""

from __future__ import annotations

import json

from pulumi.runtime import config as runtime_config

from infra.program import read_stack_config


def test_reads_every_namespace_key_from_the_cli_environment(monkeypatch):
    token = runtime_config.CONFIG.set({})
    try:
        monkeypatch.setenv(
            "PULUMI_CONFIG",
            json.dumps(
                {
                    "mlops-platform:profile": "dev",
                    "mlops-platform:network": json.dumps({"azCount": 3}),
                    "aws:region": "eu-west-1",
                }
            ),
        )
        raw = read_stack_config()
    finally:
        runtime_config.CONFIG.reset(token)
    assert raw == {"profile": "dev", "network": {"azCount": 3}}
