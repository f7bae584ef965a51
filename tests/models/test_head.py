"""The head's fused gathers and split products give the figures (and gradients) of their plain forms."""

from __future__ import annotations

import pytest
import torch

from ripplerec.models.base import ACTIONS
from ripplerec.models.head import RECENCY_BUCKETS, VALUE_BUCKETS, Head, HeadConfig, HistoryBatch
from ripplerec.models.trainer import OnlineTrainer, TrainerConfig

N_ITEMS, BATCH, LENGTH = 40, 6, 8


def _head(**config: object) -> Head:
    torch.manual_seed(0)
    head = Head(
        HeadConfig(**{"text_dim": 12, "dim": 8, "history_length": LENGTH, "tower_hidden": 16, **config}),  # type: ignore[arg-type]
        capacity=N_ITEMS,
    )
    if head.config.uses_text:
        with torch.no_grad():
            head.item_text.copy_(torch.randn(N_ITEMS, 12))
    return head


def _history(rows: int = BATCH, seed: int = 1) -> HistoryBatch:
    """``rows`` histories: all six have more slots than the catalog has items, two have fewer."""
    generator = torch.Generator().manual_seed(seed)
    used = torch.tensor([0, 1, 3, LENGTH, 5, LENGTH])  # left-padded, an empty history among them
    mask = torch.arange(LENGTH).flip(0).unsqueeze(0) < used.unsqueeze(1)

    def draw(high: int) -> torch.Tensor:
        return torch.randint(0, high, (BATCH, LENGTH), generator=generator) * mask

    batch = HistoryBatch(draw(N_ITEMS), draw(len(ACTIONS)), draw(VALUE_BUCKETS), draw(RECENCY_BUCKETS), mask)
    return HistoryBatch(*(tensor[:rows] for tensor in batch))


def _gradients(head: Head) -> dict[str, torch.Tensor]:
    return {name: p.grad.clone() for name, p in head.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("rows", [BATCH, 2])
def test_behaviours_are_the_sum_of_their_five_embeddings(rows: int) -> None:
    head, history = _head(), _history(rows)
    learned = head.item_vectors()[:, : head.config.dim]
    distance = torch.arange(LENGTH).flip(0)
    fused = head._behaviours(history, learned, history.items, distance)
    plain = (
        learned[history.items]
        + head.action(history.actions)
        + head.value(history.values)
        + head.recency(history.recency)
        + head.position(distance)
    )
    torch.testing.assert_close(fused, plain)
    weights = torch.randn_like(plain)
    (fused * weights).sum().backward(retain_graph=True)  # learned is shared by both sums
    expected = _gradients(head)
    head.zero_grad()
    (plain * weights).sum().backward()
    for name, grad in _gradients(head).items():
        torch.testing.assert_close(expected[name], grad, msg=name)


@pytest.mark.parametrize("rows", [BATCH, 2])
def test_text_profile_matches_the_gathered_weighted_sum(rows: int) -> None:
    head, history = _head(item_representation="text", text_affinity=True), _history(rows)
    vectors = head.item_vectors()
    weights = torch.rand(rows, LENGTH).mul(history.mask).requires_grad_()
    pooled = head._text_profile(history, weights, vectors)
    texts = torch.nn.functional.normalize(head.item_text, dim=-1)[history.items]
    plain = torch.einsum("bl,blt->bt", weights, texts)
    torch.testing.assert_close(pooled, plain)
    torch.testing.assert_close(head._text_profile(history, weights, None), plain)
    (grad,) = torch.autograd.grad(pooled.square().sum(), weights)
    (expected,) = torch.autograd.grad(plain.square().sum(), weights)
    torch.testing.assert_close(grad, expected)


@pytest.mark.parametrize("rows", [BATCH, 2])
@pytest.mark.parametrize("representation", ["text", "id", "text+id"])
def test_user_vectors_from_the_catalog_match_those_from_the_history_rows(representation: str, rows: int) -> None:
    affinity = representation == "text"
    head, history = _head(item_representation=representation, text_affinity=affinity), _history(rows)
    with torch.no_grad():
        from_catalog, weights = head.user_vectors(history, head.item_vectors())
        from_rows, weights_from_rows = head.user_vectors(history)
    assert from_catalog.shape == (rows, head.config.dim + (12 if affinity else 0))
    torch.testing.assert_close(from_catalog, from_rows)
    torch.testing.assert_close(weights, weights_from_rows)


def test_split_scores_have_the_plain_product_and_gradients() -> None:
    head, history = _head(item_representation="text+id", text_affinity=True), _history()
    targets = torch.randn(BATCH, N_ITEMS)
    results = []
    for split in (True, False):
        head.zero_grad()
        vectors = head.item_vectors()
        users, _ = head.user_vectors(history, vectors)
        scores = head.scores(users, vectors) if split else users @ vectors.T
        (scores * targets).sum().backward()
        results.append((scores.detach(), _gradients(head)))
    (split_scores, split_grads), (plain_scores, plain_grads) = results
    torch.testing.assert_close(split_scores, plain_scores)
    assert split_grads.keys() == plain_grads.keys()
    for name, grad in split_grads.items():
        torch.testing.assert_close(grad, plain_grads[name], msg=name)


@pytest.mark.parametrize("full_softmax_max", [N_ITEMS, 4])  # the full catalog, and sampled negatives
def test_features_of_the_first_examples_train_like_zero_padded_features(full_softmax_max: int) -> None:
    history = _history()
    positives = torch.tensor([3, 7, 7, 20, 1, 39])
    features = torch.randn(2, 2, N_ITEMS)  # the first two examples carry features, the others none
    padded = torch.cat([features, torch.zeros(BATCH - 2, 2, N_ITEMS)])
    heads = []
    for given in (features, padded):
        head = _head(cooccurrence_feature=True, transition_feature=True)
        trainer = OnlineTrainer(head, TrainerConfig(full_softmax_max=full_softmax_max, negatives=8, seed=3))
        loss = trainer.step(history, positives, N_ITEMS, features=given)
        heads.append((loss, head))
    (loss, head), (padded_loss, padded_head) = heads
    assert loss == pytest.approx(padded_loss, rel=1e-6)
    for (name, p), q in zip(head.named_parameters(), padded_head.parameters(), strict=True):
        torch.testing.assert_close(p, q, msg=name)


@pytest.mark.parametrize("positive_blocked", [False, True])
def test_blocked_logits_filled_outside_autograd_have_the_gradients_of_a_differentiable_fill(
    positive_blocked: bool,
) -> None:
    history = _history()
    positives = torch.tensor([3, 7, 7, 20, 1, 39])
    active = torch.ones(N_ITEMS, dtype=torch.bool)
    active[[5, 11, 7 if positive_blocked else 30]] = False
    head = _head()
    trainer = OnlineTrainer(head, TrainerConfig(seed=3))
    loss = trainer._loss(history, positives, N_ITEMS, active, None)
    loss.backward()
    filled = _gradients(head)
    head.zero_grad()
    vectors = head.item_vectors()
    users, _ = head.user_vectors(history, vectors)
    blocked = torch.zeros(BATCH, N_ITEMS, dtype=torch.bool)
    for b in range(BATCH):
        blocked[b, history.items[b][history.mask[b]]] = True
    blocked[torch.arange(BATCH), positives] = False
    logits = (head.scores(users, vectors) + head.biases(None)).masked_fill(blocked | ~active, -1e9)
    plain_loss = torch.nn.functional.cross_entropy(logits, positives)
    plain_loss.backward()
    assert torch.equal(loss.detach(), plain_loss.detach())
    assert filled.keys() == _gradients(head).keys()
    for name, grad in _gradients(head).items():
        assert torch.equal(filled[name], grad), name  # bit for bit


def _cosines(head: Head, capacity: int) -> torch.Tensor:
    """The item texts' cosine matrix, zero-padded to ``capacity`` rows and columns (as the scorer keeps it)."""
    unit = torch.nn.functional.normalize(head.item_text, dim=-1)
    padded = torch.zeros(capacity, capacity)
    padded[:N_ITEMS, :N_ITEMS] = unit @ unit.T
    return padded


@pytest.mark.parametrize("capacity", [N_ITEMS, N_ITEMS + 24])
@pytest.mark.parametrize("representation", ["text", "text+id"])
def test_affinity_from_the_cosines_has_the_scores_and_gradients_of_the_text_columns(
    representation: str, capacity: int
) -> None:
    head, history = _head(item_representation=representation, text_affinity=True), _history()
    with torch.no_grad():
        head.affinity_scale.fill_(1.7)  # type: ignore[union-attr]
    targets = torch.randn(BATCH, N_ITEMS)
    results = []
    for apart in (True, False):
        head.zero_grad()
        vectors = head.item_vectors(affinity=not apart)
        users, weights = head.user_vectors(history, vectors, affinity=not apart)
        scores = head.scores(users, vectors)
        if apart:
            assert users.shape == (BATCH, head.config.dim)
            scores = scores + head.affinity_scores(history, weights, _cosines(head, capacity), N_ITEMS)
        (scores * targets).sum().backward()
        results.append((scores.detach(), _gradients(head)))
    (apart_scores, apart_grads), (plain_scores, plain_grads) = results
    torch.testing.assert_close(apart_scores, plain_scores)
    assert apart_grads.keys() == plain_grads.keys()
    assert "affinity_scale" in apart_grads and "attention_query" in apart_grads
    for name, grad in apart_grads.items():
        torch.testing.assert_close(grad, plain_grads[name], msg=name)


@pytest.mark.parametrize("representation", ["text", "text+id"])
def test_training_with_the_cosines_matches_training_with_the_text_columns(representation: str) -> None:
    history = _history()
    positives = torch.tensor([3, 7, 7, 20, 1, 39])
    active = torch.rand(N_ITEMS, generator=torch.Generator().manual_seed(5)) < 0.8
    features = torch.randn(BATCH, 1, N_ITEMS)
    trained = []
    for cosines in (True, False):
        head = _head(item_representation=representation, text_affinity=True, cooccurrence_feature=True)
        trainer = OnlineTrainer(head, TrainerConfig(steps_per_batch=3, seed=3))
        table = _cosines(head, N_ITEMS + 8) if cosines else None
        loss = trainer.step(history, positives, N_ITEMS, active, features, text_cosines=table)
        trained.append((loss, head))
    (loss, head), (plain_loss, plain_head) = trained
    assert loss == pytest.approx(plain_loss, rel=1e-5)
    for (name, p), q in zip(head.named_parameters(), plain_head.parameters(), strict=True):
        torch.testing.assert_close(p, q, msg=name)


def test_unit_texts_are_kept_until_the_item_texts_change() -> None:
    head = _head(item_representation="text", text_affinity=True)
    first = head.unit_texts(N_ITEMS)
    assert head.unit_texts(N_ITEMS) is first  # kept between training steps
    torch.testing.assert_close(first, torch.nn.functional.normalize(head.item_text, dim=-1), rtol=0, atol=0)
    with torch.no_grad():
        head.item_text[3] = 5.0  # a write in place (as add_items does)
    assert head.unit_texts(N_ITEMS)[3].tolist() == pytest.approx([12**-0.5] * 12)
    assert head.unit_texts(5).shape == (5, 12)
    head.grow(N_ITEMS + 4)  # a new buffer
    with torch.no_grad():
        head.item_text[N_ITEMS:] = -2.0
    grown = head.unit_texts(N_ITEMS + 4)
    assert grown.shape == (N_ITEMS + 4, 12) and grown[-1].tolist() == pytest.approx([-(12**-0.5)] * 12)


@pytest.mark.parametrize("additive", [True, False])
def test_attention_logits_are_tanh_keys_times_the_queries(additive: bool) -> None:
    head = _head(additive_attention=additive)
    with torch.no_grad():
        head.attention_query.mul_(10.0)  # a trained query's size
    behaviour = torch.randn(BATCH, LENGTH, head.config.dim)  # layer-normed behaviours
    targets = torch.randn(BATCH, LENGTH, head.config.heads)
    logits = head._attention_logits(behaviour)
    (logits * targets).sum().backward()
    expected_grads = _gradients(head)
    head.zero_grad()
    keys = torch.tanh(head.attention_key(behaviour)) if head.attention_key is not None else behaviour
    plain = torch.nn.functional.linear(keys, head.attention_query)
    (plain * targets).sum().backward()
    torch.testing.assert_close(logits, plain)
    with torch.no_grad():  # scoring computes tanh itself
        torch.testing.assert_close(head._attention_logits(behaviour), plain)
    assert expected_grads.keys() == _gradients(head).keys()
    for name, grad in _gradients(head).items():  # 2 sigmoid(2z) - 1 rounds apart from tanh(z): scaled tolerance
        torch.testing.assert_close(expected_grads[name], grad, rtol=1e-5, atol=1e-6 * grad.abs().max().item(), msg=name)
