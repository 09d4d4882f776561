"""Each new cell records the protocol it ran under, the method's settings and its provenance."""

from __future__ import annotations

import json

import torch

from pyro_bhpeft.compare.cells import cell_record
from pyro_bhpeft.compare.protocol import Protocol


def test_cell_record_holds_protocol_settings_and_provenance():
    protocol = Protocol(task="sentiment", train_size=200, epochs=3, lr=1e-3, samples=8)
    record = json.loads(json.dumps(cell_record(protocol, "blob")))  # JSON all the way down
    assert record["protocol"] == json.loads(json.dumps(protocol.to_dict()))
    assert record["protocol"]["train_size"] == 200 and record["protocol"]["epochs"] == 3
    assert record["method_settings"]["name"] == "blob"
    assert record["method_settings"]["samples"] == 10  # BLoB's own number, not the protocol's 8
    assert cell_record(protocol, "mean-field")["method_settings"]["samples"] == 8
    assert cell_record(protocol, "lora")["method_settings"]["samples"] == 0
    prov = record["provenance"]
    assert prov["library_version"] and prov["torch_version"] and prov["python"] and prov["saved_utc"]
    assert "git_commit" in prov and "git_dirty" in prov


def test_cell_record_holds_what_its_seconds_depend_on():
    threads = torch.get_num_threads()
    try:
        for n in (1, 2):
            torch.set_num_threads(n)
            prov = cell_record(Protocol(task="sentiment"), "lora")["provenance"]
            assert prov["torch_threads"] == n
    finally:
        torch.set_num_threads(threads)
    assert prov["device"] == "cpu" and prov["cpus"] >= 1
    assert prov["load_average"] is None or (len(prov["load_average"]) == 3 and min(prov["load_average"]) >= 0)
