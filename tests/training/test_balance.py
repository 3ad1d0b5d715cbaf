"""Load balancing: the sequence-level aux loss, the aux-loss-free bias update, load statistics, and (end to end)
balancing a deliberately skewed router."""
import torch

from model.config import NemotronHConfig
from model.nemotron_h import build_model
from training.balance import LoadBalancer, sequence_aux_loss
from training.pretrain import build_trainer


def seq_aux_loss_naive(scores, topk_idx, offsets):
    """Megatron's sequence_load_balancing_loss_func, one sequence at a time, in float64."""
    E, k = scores.shape[1], topk_idx.shape[1]
    losses = []
    for a, b in zip(offsets[:-1], offsets[1:]):
        s = scores[a:b].double()
        p = s / (s.sum(-1, keepdim=True) + 1e-20)
        L = b - a
        count = torch.zeros(E, dtype=torch.float64)
        for e in topk_idx[a:b].reshape(-1).tolist():
            count[e] += 1
        losses.append(((count * E / (k * L)) * p.mean(0)).sum())
    return torch.stack(losses).mean()


def test_sequence_aux_loss_matches_megatron_formula():
    torch.manual_seed(0)
    T, E, k = 23, 8, 2
    scores = torch.sigmoid(torch.randn(T, E, dtype=torch.float64)).requires_grad_()
    bias = torch.randn(E, dtype=torch.float64) * 0.1
    idx = torch.topk(scores.detach() + bias, k, dim=-1).indices
    offsets = [0, 5, 6, 17, 23]
    loss = sequence_aux_loss(scores, idx, torch.tensor(offsets, dtype=torch.int32))
    torch.testing.assert_close(loss, seq_aux_loss_naive(scores, idx, offsets), rtol=1e-12, atol=1e-12)
    loss.backward()
    assert scores.grad is not None and scores.grad.abs().sum() > 0
    # one sequence when no offsets are given
    whole = sequence_aux_loss(scores, idx, None)
    torch.testing.assert_close(whole, seq_aux_loss_naive(scores, idx, [0, T]), rtol=1e-12, atol=1e-12)


def test_sequence_aux_loss_is_one_for_uniform_routing():
    E, k = 8, 2
    scores = torch.full((E * 3, E), 0.5)
    idx = torch.arange(E * 3 * k).remainder(E).view(E * 3, k)   # every expert equally often
    assert sequence_aux_loss(scores, idx, None).item() == 1.0


def test_aux_loss_uses_the_routers_own_selection():
    """Group-limited routing (n_group 4, topk_group 1: all k experts from one group) differs from a plain top-k
    over the scores; the loss must count the experts the router chose, which MoEAux.ids records."""
    from model.nemotron_h import MoEAux
    from training.trainer import CausalLMLoss
    cfg = NemotronHConfig.from_preset("tiny")
    cfg.n_group, cfg.topk_group = 4, 1
    model = build_model(cfg, backend="reference", seed=0)
    ids = torch.randint(0, cfg.vocab_size, (1, 40), generator=torch.Generator().manual_seed(0))
    cu = torch.tensor([0, 17, 40], dtype=torch.int32)
    aux = MoEAux()
    model.hidden_states(ids, cu, aux)
    per_group = cfg.n_routed_experts // cfg.n_group
    plain_differs = False
    for scores, idx in zip(aux.scores, aux.ids):
        assert idx.shape == (40, cfg.num_experts_per_tok)
        assert (idx // per_group == idx[:, :1] // per_group).all(), "router left the selected group"
        plain = torch.topk(scores.detach(), cfg.num_experts_per_tok, dim=-1).indices
        plain_differs |= not torch.equal(plain.sort(-1).values, idx.long().sort(-1).values)
    assert plain_differs, "test needs inputs where group-limited routing differs from a plain top-k"
    _, aux_loss, _ = CausalLMLoss(model)(ids, ids, cu)
    expect = sum(sequence_aux_loss(s, i, cu, reduction="sum") for s, i in zip(aux.scores, aux.ids))
    torch.testing.assert_close(aux_loss, expect)


def test_bias_update_rule_and_stats():
    model = build_model(NemotronHConfig.from_preset("tiny"), backend="reference")
    bal = LoadBalancer(model, rate=1e-3)
    assert bal.layer_ids == [2, 4] and bal.num_experts == 8
    counts = [torch.tensor([10, 0, 5, 5, 5, 5, 5, 5], dtype=torch.int32), torch.full((8,), 5, dtype=torch.int32)]
    bal.accumulate(counts)
    bal.accumulate(counts)                                      # counts are summed over the step's micro-batches
    bal.step()
    b0, b1 = (b.clone() for b in bal.biases())
    # mean load 10 per expert: overloaded expert 0 goes down, idle expert 1 up, experts at the mean stay
    assert b0.tolist() == [-1e-3, 1e-3] + [0.0] * 6 or torch.allclose(b0, torch.tensor([-1e-3, 1e-3] + [0.0] * 6))
    assert torch.equal(b1, torch.zeros(8))
    stats = bal.stats()
    assert stats["max_over_mean"] == [2.0, 1.0] and stats["min_over_mean"] == [0.0, 1.0]
    assert stats["entropy"][1] == 1.0 and stats["entropy"][0] < 1.0
    assert stats["max_share"] == [0.25, 0.125]
    assert bal.collapse_share == 0.25                           # max(5%, twice the uniform share 1/8)
    assert bal.collapsed(stats) == [] and bal.collapsed({"max_share": [0.3, 0.2]}) == [(2, 0.3)]
    assert torch.equal(bal.step_counts, torch.zeros_like(bal.step_counts))
    # disabled: statistics only
    off = LoadBalancer(model, rate=1e-3, enabled=False)
    off.accumulate(counts)
    off.step()
    assert torch.equal(off.biases()[0], b0)


def _final_load(pretrain_argv, out, balance: bool, steps: int) -> float:
    """max/mean expert load over the last 10 steps of a run from a router skewed toward low-index experts."""
    args = pretrain_argv(out, "--steps", steps, "--eval-every", 0, "--router-skew", 0.3, "--bias-update-rate", 0.02,
                         "--seq-len", 32, "--batch-rows", 4, "--lr", 3e-3, "--warmup-steps", 5)
    trainer = build_trainer(args + ([] if balance else ["--no-balance"]))
    window = []
    step = trainer.train_step

    def recording_step(i):
        rec = step(i)
        window.append(trainer.balancer.last_counts.clone())
        return rec

    trainer.train_step = recording_step
    trainer.run()
    load = torch.stack(window[-10:]).sum(0).double()            # [Lm, E]
    return (load.max(-1).values / load.mean(-1)).max().item()


def test_loss_free_balancing_fixes_a_skewed_router(pretrain_argv, tmp_path, capsys):
    """Balancing on: max/mean load ends below 1.5 (rate 2e-2 instead of the paper's 1e-3: a 30-step run has to
    undo a 0.3 bias ramp); off: it stays skewed, and the routing-collapse warning says so."""
    assert _final_load(pretrain_argv, tmp_path / "off", balance=False, steps=15) > 2.0
    assert "warning: routing collapse in MoE layer 2" in capsys.readouterr().out
    assert _final_load(pretrain_argv, tmp_path / "on", balance=True, steps=30) < 1.5
