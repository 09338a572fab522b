"""Device profiles: the registry, profile files and what a profile charges."""
import json

import numpy as np
import pytest

from analysis.core.costs import CostModel, get_profile, list_profiles, load_profile_file


def test_profiles_registry_and_files(tmp_path, synth_cache):
    assert {"measured", "raspberry-pi-4", "jetson-nano", "mcu-npu"} <= set(list_profiles())
    for name in list_profiles():
        p = get_profile(name)
        assert p.measured or (p.source and p.macs_per_s > 0)
    with pytest.raises(KeyError, match="unknown device profile 'tpu9'; known: .*jetson-nano"):
        get_profile("tpu9")
    f = tmp_path / "dev.yaml"
    f.write_text("name: mydev\nmacs_per_s: 1.0e9\nbytes_per_s: 1.0e9\noverhead_ms: 0.5\n")
    p = load_profile_file(f)
    c = CostModel.from_cache(synth_cache, str(f))
    np.testing.assert_allclose(c.stage_ms, synth_cache.cost_vector("stage", "macs") / 1e9 * 1e3 + 0.5)
    f.write_text("name: mydev\nmacs_per_s: 1.0e9\n")
    with pytest.raises(ValueError, match="missing bytes_per_s"):
        get_profile(str(f))
    f2 = tmp_path / "dev.json"
    f2.write_text(json.dumps({"name": "x", "macs_per_s": 1, "bytes_per_s": 1, "flops": 3}))
    with pytest.raises(ValueError, match="unknown profile field"):
        get_profile(str(f2))
    assert p.name == "mydev"


def test_mcu_profile_charges_spills():
    p = get_profile("mcu-npu")
    small, big = p.buffer_ms([1000])[0], p.buffer_ms([2 * p.onchip_bytes])[0]
    assert big > 2 * small * p.onchip_bytes / 1000  # beyond on-chip memory the bandwidth drops

