"""RiskLSTM: pooling reads the last real step, the padded tail never leaks in, configs round-trip."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from model_helpers import order_batch

from riskmodel.batch import SequenceBatch
from riskmodel.model import LEGACY_FIELDS, ModelConfig, RiskLSTM, batch_tensors, last_real_step


def test_last_real_step_picks_position_length_minus_one() -> None:
    n, seq_len = 5, 7
    outputs = torch.arange(n * seq_len * 2, dtype=torch.float32).view(n, seq_len, 2)
    lengths = torch.tensor([1, 2, 4, 7, 0])
    pooled = last_real_step(outputs, lengths)
    for i, k in enumerate([1, 2, 4, 7]):
        assert torch.equal(pooled[i], outputs[i, k - 1])
    assert torch.equal(pooled[4], torch.zeros(2))


@pytest.mark.parametrize("seq_len", [1, 5, 16])
def test_padded_tail_does_not_change_the_output_for_any_length(seq_len: int) -> None:
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    n = seq_len
    batch = SequenceBatch.empty(n=n, seq_len=seq_len, n_num=2, n_cat=1, n_time=4, n_static_num=1,
                                n_static_cat=1, n_agg=2)
    batch.lengths[:] = np.arange(1, n + 1)
    real = np.arange(seq_len)[None, :] < batch.lengths[:, None]
    batch.num[:] = np.where(real[:, :, None], rng.normal(size=batch.num.shape), 0)
    batch.time[:] = np.where(real[:, :, None], rng.normal(size=batch.time.shape), 0)
    batch.cat[:] = np.where(real[:, :, None], rng.integers(1, 5, batch.cat.shape), 0)
    batch.static_cat[:] = 2
    net = RiskLSTM(ModelConfig.for_batch(batch, [5], [3], hidden=8, dropout=0.0)).eval()
    with torch.no_grad():
        clean = net(**batch_tensors(batch))
        noisy = SequenceBatch.concat([batch])
        noisy.num[~real] = 1e6
        noisy.time[~real] = -1e6
        noisy.cat[~real] = 4
        dirty = net(**batch_tensors(noisy))
    assert torch.isfinite(clean).all()
    assert torch.allclose(clean, dirty, atol=1e-6)
    if seq_len > 1:
        noisy.num[0, 0, 0] = 50.0
        with torch.no_grad():
            assert not torch.allclose(net(**batch_tensors(noisy))[0], clean[0])


def test_unknown_category_ids_map_to_unseen_instead_of_crashing() -> None:
    batch = order_batch(4, seq_len=8)
    net = RiskLSTM(ModelConfig.for_batch(batch, [6], [4], hidden=8, dropout=0.0)).eval()
    with torch.no_grad():
        base = net(**batch_tensors(batch))
        ones = SequenceBatch.concat([batch])
        ones.cat[:, 0, 0] = 1
        huge = SequenceBatch.concat([batch])
        huge.cat[:, 0, 0] = 10_000
        assert torch.allclose(net(**batch_tensors(huge)), net(**batch_tensors(ones)))
    assert base.shape == (4,)


def test_config_round_trip() -> None:
    config = ModelConfig.for_batch(order_batch(3, seq_len=8), hidden=12, layers=2)
    again = ModelConfig.from_dict(config.to_dict())
    assert again == config
    assert RiskLSTM(again).lstm.num_layers == 2


def test_a_column_above_the_embedding_cap_does_not_reach_the_score() -> None:
    """Merchant-like columns get no embedding: new ids change nothing; a capped-in column still counts."""
    torch.manual_seed(0)
    batch = order_batch(6, seq_len=10)
    other = SequenceBatch.concat([batch])
    other.cat[:, :, 0] = np.where(batch.cat[:, :, 0] > 0, 7, 0)
    scores = {}
    for cap in (20, 40):
        net = RiskLSTM(ModelConfig.for_batch(batch, [40], [4], hidden=8, dropout=0.0,
                                             max_embedded_cardinality=cap)).eval()
        assert len(net.cat_emb) == (cap >= 40)
        with torch.no_grad():
            scores[cap] = (net(**batch_tensors(batch)), net(**batch_tensors(other)))
    assert torch.allclose(*scores[20])
    assert not torch.allclose(*scores[40])


def test_aggregate_dropout_hides_whole_rows_of_aggregates_in_training_only() -> None:
    torch.manual_seed(0)
    batch = order_batch(400, seq_len=6)
    shifted = SequenceBatch.concat([batch])
    shifted.agg = batch.agg * 3.0 + 5.0
    net = RiskLSTM(ModelConfig.for_batch(batch, [6], [4], hidden=8, dropout=0.0, aggregate_dropout=0.5))
    net.set_agg_stats(batch.agg)
    with torch.no_grad():
        net.eval()
        assert not torch.allclose(net(**batch_tensors(batch)), net(**batch_tensors(shifted)))
        net.train()
        torch.manual_seed(1)
        first = net(**batch_tensors(batch))
        torch.manual_seed(1)
        second = net(**batch_tensors(shifted))
    same = torch.isclose(first, second)
    assert 0.35 < same.float().mean().item() < 0.65, "about half the rows must ignore their aggregates"
    mean_agg = SequenceBatch.concat([batch])
    mean_agg.agg[:] = np.sign(net.agg_mean.numpy()) * np.expm1(np.abs(net.agg_mean.numpy()))
    with torch.no_grad():
        net.eval()
        hidden = net(**batch_tensors(mean_agg))
    assert torch.allclose(first[same], hidden[same], atol=1e-5), "a hidden row sees the training mean"


def test_manifests_without_the_cap_rebuild_the_model_they_describe() -> None:
    config = ModelConfig.for_batch(order_batch(3, seq_len=8), [5000], [4], hidden=8)
    assert len(RiskLSTM(config).cat_emb) == 0
    legacy = {k: v for k, v in config.to_dict().items() if k not in LEGACY_FIELDS}
    old = ModelConfig.from_dict(legacy)
    assert len(RiskLSTM(old).cat_emb) == 1
    assert ModelConfig.from_dict(config.to_dict()) == config
