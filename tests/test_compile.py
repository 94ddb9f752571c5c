"""The ops inside torch.compile(fullgraph=True): a small GRPO step on CPU, no graph breaks."""

import pytest
import torch

import rlvr_fast as rf


class TinyPolicy(torch.nn.Module):
    def __init__(self, vocab=50, dim=16):
        super().__init__()
        self.emb = torch.nn.Embedding(vocab, dim)
        self.head = torch.nn.Linear(dim, vocab)

    def forward(self, ids):
        return self.head(torch.tanh(self.emb(ids)))


def grpo_loss(policy, seqs, scores, response_mask, old_logp, ref_logp, fused: bool):
    adv = rf.group_advantages(scores, group_size=4, response_mask=response_mask)
    logits = policy(seqs)[:, :-1]
    targets = seqs[:, 1:]
    if fused:
        return rf.policy_loss_from_logits(
            logits,
            targets,
            old_logp,
            adv,
            response_mask,
            ref_logp=ref_logp,
            kl_type="k3",
            kl_coef=0.05,
            entropy_coef=0.01,
            dual_clip=3.0,
        )
    logp, ent = rf.token_logprobs(logits, targets, return_entropy=True)
    return rf.policy_loss(
        logp,
        old_logp,
        adv,
        response_mask,
        ref_logp=ref_logp,
        kl_type="k3",
        kl_coef=0.05,
        entropy=ent,
        entropy_coef=0.01,
        dual_clip=3.0,
    )


@pytest.mark.parametrize("fused", [False, True])
def test_grpo_step_compiles_fullgraph_and_matches_eager(monkeypatch, fused):
    monkeypatch.setenv("RLVR_FAST_BACKEND", "torch")
    torch._dynamo.reset()
    B, L, V = 8, 10, 50
    seqs = torch.randint(0, V, (B, L))
    scores = torch.randn(B)
    mask = torch.rand(B, L - 1) > 0.2
    old = torch.randn(B, L - 1) * 0.1 - 4
    ref = old + 0.05
    eager_policy = TinyPolicy(V)
    compiled_policy = TinyPolicy(V)
    compiled_policy.load_state_dict(eager_policy.state_dict())

    loss_e, m_e = grpo_loss(eager_policy, seqs, scores, mask, old, ref, fused)
    loss_e.backward()
    step = torch.compile(grpo_loss, fullgraph=True, backend="aot_eager")
    loss_c, m_c = step(compiled_policy, seqs, scores, mask, old, ref, fused)
    loss_c.backward()

    torch.testing.assert_close(loss_c, loss_e)
    torch.testing.assert_close(m_c["clipfrac"], m_e["clipfrac"])
    for (name, p_e), p_c in zip(eager_policy.named_parameters(), compiled_policy.parameters()):
        torch.testing.assert_close(p_c.grad, p_e.grad, msg=name)


def test_inductor_backend_compiles_the_step(monkeypatch):
    """The default inductor backend also traces the custom ops without a graph break."""
    monkeypatch.setenv("RLVR_FAST_BACKEND", "torch")
    torch._dynamo.reset()
    policy = TinyPolicy()
    seqs = torch.randint(0, 50, (8, 6))
    args = (seqs, torch.randn(8), torch.ones(8, 5, dtype=torch.bool), torch.randn(8, 5) - 4, torch.randn(8, 5) - 4)
    step = torch.compile(grpo_loss, fullgraph=True)
    loss, _ = step(policy, *args, True)
    loss.backward()
    want, _ = grpo_loss(policy, *args, True)
    torch.testing.assert_close(loss, want)
