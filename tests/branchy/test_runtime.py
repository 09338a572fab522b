import numpy as np
import pytest
import torch

from analysis.core.costs import CostModel
from analysis.core.simulate import simulate_cascade, simulate_full, simulate_gated
from branchy.cache import dump
from branchy.exits import confidence
from branchy.models import build_model
from branchy.runtime import EarlyExitRuntime


def test_runtime_takes_the_exits_the_simulator_predicts(toy_splits, tmp_path):
    torch.manual_seed(0)
    m = build_model("b-lenet", exits=(0, 1), num_classes=4).eval()
    cache = dump(m, toy_splits, tmp_path / "c", profile=False, progress=False)
    z = np.asarray(cache.logits("test"))
    ent = confidence(z, "entropy")
    t = np.quantile(ent[:, :2], 0.5, axis=0)
    correct = z.argmax(-1) == cache.labels("test")[:, None]
    costs = CostModel.from_arrays(np.ones(3), np.ones(3))
    x = toy_splits.test.batch(torch.arange(len(toy_splits.test)))[0]
    sim = simulate_cascade(ent < np.append(t, np.inf), correct, costs)
    rt = EarlyExitRuntime(m, t)
    pred, taken = rt(x)
    np.testing.assert_array_equal(taken.numpy(), sim.exit)
    np.testing.assert_array_equal(pred.numpy() == cache.labels("test"), sim.correct)
    # batch 1 gives the same decisions as the batched run
    one = [rt(x[i : i + 1]) for i in range(10)]
    assert [int(e) for _, e in one] == taken[:10].tolist()
    # a gate that keeps every row out of exit 0, and exit 1 removed
    gate = lambda h: torch.zeros(len(h), dtype=torch.bool)  # noqa: E731
    rt2 = EarlyExitRuntime(m, t, kept=[True, False, True], gates={0: (0, gate)})
    sim2 = simulate_gated(ent < np.append(t, np.inf), correct, costs, enter=np.zeros((len(x), 3), bool),
                          gate_at=[0, -1, -1], gate_ms=np.zeros(3), kept=[True, False, True])
    np.testing.assert_array_equal(rt2(x)[1].numpy(), sim2.exit)
    assert (sim2.exit == 2).all()


def test_runtime_on_chained_exits_matches_forward_exits(toy_splits):
    torch.manual_seed(0)
    for chain, ens in (("boost", False), ("cascade", True)):
        m = build_model("b-lenet", exits=(0, 1), num_classes=4, chain=chain, ensemble=ens).eval()
        if ens:
            with torch.no_grad():
                m.ens_w.add_(0.3 * torch.rand_like(m.ens_w).tril())
                for lin in m.cascade:
                    lin.weight.normal_(0, 0.5)
        x = toy_splits.test.batch(torch.arange(40))[0]
        with torch.no_grad():
            z = torch.stack(m.forward_exits(x), 1).numpy()
        ent = confidence(z, "entropy")
        t = np.quantile(ent[:, :2], 0.4, axis=0)
        first = np.where(ent[:, 0] < t[0], 0, np.where(ent[:, 1] < t[1], 1, 2))
        pred, taken = EarlyExitRuntime(m, t)(x)
        np.testing.assert_array_equal(taken.numpy(), first)
        np.testing.assert_array_equal(pred.numpy(), z[np.arange(40), first].argmax(1))
        # the simulator agrees, and charges the heads a chained answer needs
        correct = z.argmax(-1) == 0
        costs = CostModel.from_arrays(np.ones(3), np.full(3, 0.5), np.full(3, 0.1), np.full(3, 0.1))
        sim = simulate_cascade(ent < np.append(t, np.inf), correct, costs)
        np.testing.assert_array_equal(sim.exit, taken.numpy())
        full = simulate_full(correct, costs, chained=True)
        np.testing.assert_allclose(full.latency_ms, 3 + 0.5 * 3 + 0.2 * 2)
        # skipping a chained exit would change later answers: refused by the runtime
        with pytest.raises(ValueError, match="chained exits"):
            EarlyExitRuntime(m, t, kept=[False, True, True])
        with pytest.raises(ValueError, match="chained exits"):
            EarlyExitRuntime(m, t, gates={0: (0, lambda h: torch.ones(len(h), dtype=torch.bool))})


@pytest.mark.parametrize("measure", ["entropy", "max_prob"])
def test_saturated_confidences_decide_as_the_simulator(toy_splits, measure):
    """Thresholds between near-equal float64 confidences (as calibration picks them) of a head whose softmax
    saturates: the runtime decides in float64 like the cache's measures, on both paths."""
    torch.manual_seed(0)
    m = build_model("b-lenet", exits=(0, 1), num_classes=4).eval()
    with torch.no_grad():
        for p in m.exits[0].parameters():
            p.mul_(16.0)
    x = toy_splits.test.batch(torch.arange(32))[0]
    with torch.no_grad():
        z = torch.stack(m.forward_exits(x), 1).numpy()
    c = confidence(z, measure)
    vals = np.unique(c[:, 0])
    for t0 in (vals[:-1] + vals[1:])[:: max(1, len(vals) // 8)] / 2:
        t = np.array([t0, -np.inf if measure == "entropy" else np.inf, np.inf])
        want = np.where((c[:, 0] < t0) if measure == "entropy" else (c[:, 0] > t0), 0, 2)
        rt = EarlyExitRuntime(m, t, measure=measure, kept=[True, False, True])
        np.testing.assert_array_equal(rt(x)[1].numpy(), want)
        np.testing.assert_array_equal(torch.cat([rt(x[i : i + 1])[1] for i in range(len(x))]).numpy(), want)


def test_jump_predictor_takes_the_simulators_exits(toy_splits):
    from analysis.core.simulate import simulate_jump

    torch.manual_seed(0)
    m = build_model("b-lenet", exits=(0, 1), num_classes=4).eval()
    x = toy_splits.test.batch(torch.arange(40))[0]
    with torch.no_grad():
        z = torch.stack(m.forward_exits(x), 1).numpy()
    ent = confidence(z, "entropy")
    t = np.quantile(ent[:, :2], 0.6, axis=0)
    target = np.arange(40) % 3  # names exit 0, 1 or the final exit
    costs = CostModel.from_arrays(np.ones(3), np.ones(3))
    sim = simulate_jump(ent < np.append(t, np.inf), z.argmax(-1) == 0, costs, at=0, target=target, gate_ms=0.0)
    calls = {"i": 0}

    def jump(h):  # the target of each row, in the order the rows arrive (batched: all at once)
        n = len(h)
        out = torch.as_tensor(target[calls["i"] : calls["i"] + n])
        calls["i"] += n
        return out

    rt = EarlyExitRuntime(m, t, jump=(0, jump))
    np.testing.assert_array_equal(rt(x)[1].numpy(), sim.exit)
    calls["i"] = 0
    np.testing.assert_array_equal(torch.cat([rt(x[i : i + 1])[1] for i in range(40)]).numpy(), sim.exit)
    assert (sim.exit != simulate_jump(ent < np.append(t, np.inf), z.argmax(-1) == 0, costs, at=0,
                                      target=np.zeros(40, int), gate_ms=0.0).exit).any()  # the jump matters
