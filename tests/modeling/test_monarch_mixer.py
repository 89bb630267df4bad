"""The Monarch sequence mixer and the order-2 Monarch MLP projections (`sequence_mixer="monarch"`,
`monarch_mlp_order=2`), checked against dense matrices built from their factors."""

import math

import pytest
import torch
from helpers import tiny_config

import m2_hf
from m2_hf.modeling.modeling_m2 import BlockDiagonalLinear
from m2_hf.modeling.monarch_sequence_mixer import M2MonarchSequenceMixer
from m2_hf.modeling.projections import MonarchLinear

MONARCH = {"sequence_mixer": "monarch", "monarch_mlp_order": 2, "max_position_embeddings": 16}


def dense_monarch(right: torch.Tensor, left: torch.Tensor) -> torch.Tensor:
    """`P L P^T R` as a dense matrix, from block-diagonal matrices and explicit permutation matrices."""
    k, q = right.shape[:2]
    s = left.shape[1]
    regroup = torch.zeros(q * k, k * q, dtype=right.dtype)  # P^T: (R block i, row j) -> (L block j, column i)
    for i in range(k):
        for j in range(q):
            regroup[j * k + i, i * q + j] = 1
    interleave = torch.zeros(s * q, q * s, dtype=right.dtype)  # P: (L block j, row a) -> output a * q + j
    for j in range(q):
        for a in range(s):
            interleave[a * q + j, j * s + a] = 1
    return interleave @ torch.block_diag(*left) @ regroup @ torch.block_diag(*right)


def dense_mixer_output(mixer: M2MonarchSequenceMixer, hidden_states: torch.Tensor) -> torch.Tensor:
    """`M_2 act(K * M_1 u)` per channel with dense `N x N` matrices, on the zero-padded sequence."""
    first = dense_monarch(mixer.input_monarch.right, mixer.input_monarch.left)
    second = dense_monarch(mixer.output_monarch.right, mixer.output_monarch.left)
    batch, seq_len, hidden = hidden_states.shape
    u = mixer.layernorm(hidden_states) if mixer.layernorm is not None else hidden_states
    grid = torch.zeros(batch, first.shape[0], hidden, dtype=u.dtype)
    grid[:, :seq_len] = u
    inner = mixer.act(torch.einsum("ts,bsc->btc", first, grid) * mixer.kernel.T)
    return torch.einsum("ts,bsc->btc", second, inner)[:, :seq_len]


def randomise_sequence_mixers(model: torch.nn.Module) -> None:
    """Random Monarch factors and kernels, so that every mixer mixes positions (its init is the identity)."""
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, M2MonarchSequenceMixer):
                for monarch in (module.input_monarch, module.output_monarch):
                    monarch.right.normal_(0.0, monarch.right.shape[-1] ** -0.5)
                    monarch.left.normal_(0.0, monarch.left.shape[-1] ** -0.5)
                module.kernel.normal_()


def padded_batch(sequences: list[torch.Tensor], layouts: list[str]) -> tuple[torch.Tensor, torch.Tensor, list]:
    """Stack `[len, ...]` sequences into a width-12 batch with padding on the right, the left or inside."""
    width = 12
    batch = torch.zeros(len(sequences), width, *sequences[0].shape[1:], dtype=sequences[0].dtype)
    mask = torch.zeros(len(sequences), width, dtype=torch.long)
    positions = []
    for row, (seq, layout) in enumerate(zip(sequences, layouts)):
        n = len(seq)
        where = {
            "right": torch.arange(n),
            "left": torch.arange(width - n, width),
            "inside": torch.cat([torch.arange(2), torch.arange(5, 5 + n - 2)]),
        }[layout]
        batch[row, where] = seq
        mask[row, where] = 1
        positions.append(where)
    return batch, mask, positions


# MonarchLinear


@pytest.mark.parametrize("in_features, out_features, nblocks", [(16, 16, 4), (32, 128, 4), (64, 32, 4), (12, 18, 3)])
def test_monarch_linear_equals_its_dense_matrix(in_features, out_features, nblocks):
    layer = MonarchLinear(in_features, out_features, nblocks)
    x = torch.randn(2, 5, in_features)
    dense = dense_monarch(layer.right.detach(), layer.left.detach())
    assert dense.shape == (out_features, in_features)
    torch.testing.assert_close(layer(x), x @ dense.T + layer.bias)
    # Unlike a block-diagonal projection, every output depends on every input: the support is full.
    assert (dense_monarch(torch.ones_like(layer.right), torch.ones_like(layer.left)) > 0).all()


def test_monarch_linear_init_is_variance_preserving_and_identity_when_asked():
    layer = MonarchLinear(32, 128, 4, bias=False)
    blocks = layer.left.detach()
    torch.testing.assert_close(blocks.transpose(1, 2) @ blocks, torch.eye(4).expand(32, 4, 4), atol=1e-5, rtol=0)
    # P L P^T is orthogonal, so M x has the norm of R x, the block-diagonal projection with the same blocks.
    x = torch.randn(6, 32)
    block_diagonal = BlockDiagonalLinear(32, 128, 4, bias=False)
    block_diagonal.weight.data.copy_(layer.right.detach())
    torch.testing.assert_close(layer(x).norm(dim=-1), block_diagonal(x).norm(dim=-1))
    square = MonarchLinear(16, 16, 4, bias=False, identity_init=True)
    torch.testing.assert_close(dense_monarch(square.right.detach(), square.left.detach()), torch.eye(16))


def gradcheck_module(module: torch.nn.Module, names: tuple[str, ...], *inputs: torch.Tensor) -> bool:
    """float64 gradcheck of `module(*inputs)` with respect to the first input and the parameters `names`."""

    def run(x, *values):
        return torch.func.functional_call(module, dict(zip(names, values)), (x, *inputs[1:]))

    params = (module.get_parameter(name).detach().clone().requires_grad_(True) for name in names)
    return torch.autograd.gradcheck(run, (inputs[0].requires_grad_(True), *params))


def test_monarch_linear_gradcheck():
    layer = MonarchLinear(6, 9, 3).double()
    assert gradcheck_module(layer, ("right", "left", "bias"), torch.randn(2, 6, dtype=torch.float64))


def test_monarch_linear_rejects_bad_shapes():
    with pytest.raises(ValueError, match="multiples of nblocks"):
        MonarchLinear(30, 32, 4)
    with pytest.raises(ValueError, match="square"):
        MonarchLinear(16, 32, 4, identity_init=True)


# The sequence mixer


@pytest.mark.parametrize("act", ["relu", "linear", "gelu"])
@pytest.mark.parametrize("norm_position", ["post", "pre"])
def test_sequence_mixer_equals_dense_computation(act, norm_position):
    config = tiny_config(**MONARCH, monarch_mixer_act=act, norm_position=norm_position)
    mixer = M2MonarchSequenceMixer(config)
    randomise_sequence_mixers(mixer)
    x = torch.randn(3, 11, 32)
    expected = dense_mixer_output(mixer, x)
    torch.testing.assert_close(mixer(x), expected, atol=1e-5, rtol=1e-4)
    # The mixing is real: changing one position changes the outputs at the others.
    changed = x.clone()
    changed[:, 7] = torch.randn(3, 32)
    assert (mixer(changed)[:, :7] - mixer(x)[:, :7]).abs().amax(dim=(0, 2)).min() > 1e-4


def test_sequence_mixer_starts_as_the_position_wise_activation():
    mixer = M2MonarchSequenceMixer(tiny_config(**MONARCH))
    x = torch.randn(2, 9, 32)
    torch.testing.assert_close(mixer(x), torch.relu(x))


def test_sequence_grid_is_the_smallest_near_square_factorisation():
    def factors_near_square(n):
        return any(n % a == 0 and a <= n // a <= 2 * a for a in range(1, n + 1))

    for length in range(2, 300):
        nblocks, block_size = tiny_config(max_position_embeddings=length).monarch_sequence_grid
        grid = nblocks * block_size
        assert grid >= length and nblocks <= block_size <= 2 * nblocks
        assert not any(factors_near_square(m) for m in range(length, grid))
    assert tiny_config(max_position_embeddings=128).monarch_sequence_grid == (8, 16)
    assert tiny_config(max_position_embeddings=100).monarch_sequence_grid == (10, 10)
    assert tiny_config(max_position_embeddings=16, long_conv_max_length=97).monarch_sequence_grid == (7, 14)
    assert M2MonarchSequenceMixer(tiny_config(**{**MONARCH, "max_position_embeddings": 97})).kernel.shape == (32, 98)


def test_sequence_mixer_padding_does_not_change_real_tokens():
    mixer = M2MonarchSequenceMixer(tiny_config(**MONARCH))
    randomise_sequence_mixers(mixer)
    sequences = [torch.randn(n, 32) for n in (12, 5, 9, 7)]
    batch, mask, positions = padded_batch(sequences, ["right", "right", "left", "inside"])
    padding_mask = mask[:, None].float()
    batch_out = mixer(batch, padding_mask)
    for row, seq in enumerate(sequences):
        alone = mixer(seq[None])[0]
        torch.testing.assert_close(batch_out[row, positions[row]], alone, atol=1e-5, rtol=1e-4)
    # Without the mask the padding is mixed into the real tokens.
    unmasked = mixer(batch)
    assert (unmasked[2, positions[2]] - mixer(sequences[2][None])[0]).abs().max() > 1e-3


def test_sequence_mixer_gradcheck_float64():
    config = tiny_config(**{**MONARCH, "max_position_embeddings": 8, "hidden_size": 4, "intermediate_size": 8})
    mixer = M2MonarchSequenceMixer(config).double()
    randomise_sequence_mixers(mixer)
    padding_mask = torch.tensor([[[1, 1, 1, 1, 1, 1]], [[0, 1, 1, 0, 1, 1]]], dtype=torch.float64)
    names = ("kernel", "input_monarch.right", "input_monarch.left", "output_monarch.right", "output_monarch.left")
    assert gradcheck_module(mixer, names, torch.randn(2, 6, 4, dtype=torch.float64), padding_mask)


def test_sequence_mixer_refuses_a_cache():
    mixer = M2MonarchSequenceMixer(tiny_config(**MONARCH))
    with pytest.raises(ValueError, match="bidirectional"):
        mixer(torch.randn(1, 4, 32), None, object())


# Full models


@pytest.mark.parametrize("side", ["right", "left"])
@pytest.mark.parametrize("norm_position", ["post", "pre"])
def test_padded_batch_equals_each_sequence_alone(side, norm_position):
    model = m2_hf.M2Model(tiny_config(**MONARCH, norm_position=norm_position, pooling="mean")).eval()
    randomise_sequence_mixers(model)
    sequences = [torch.randint(1, 99, (n,)) for n in (12, 5, 9)]
    ids, mask, positions = padded_batch(sequences, [side] * 3)
    with torch.no_grad():
        batched = model(ids, attention_mask=mask)
        for row, seq in enumerate(sequences):
            alone = model(seq[None])
            torch.testing.assert_close(
                batched.last_hidden_state[row, positions[row]], alone.last_hidden_state[0], atol=1e-5, rtol=1e-4
            )
            torch.testing.assert_close(batched.pooler_output[row], alone.pooler_output[0], atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("model_class", [m2_hf.M2Model, m2_hf.M2ForMaskedLM, m2_hf.M2ForSequenceClassification])
def test_models_train_and_every_parameter_gets_a_gradient(model_class):
    config = tiny_config(**MONARCH, num_labels=2, mixer_layernorm=True)
    model = model_class(config).train()
    layer = model.model.layers[0] if model_class is not m2_hf.M2Model else model.layers[0]
    assert isinstance(layer.mixer, M2MonarchSequenceMixer)
    assert isinstance(layer.mlp.in_proj, MonarchLinear) and isinstance(layer.mlp.out_proj, MonarchLinear)
    ids = torch.randint(1, 99, (3, 16))  # the full grid, so that every kernel entry meets a token
    if model_class is m2_hf.M2Model:
        output = model(ids)
        loss = output.last_hidden_state.square().mean() + output.pooler_output.sum()
    elif model_class is m2_hf.M2ForMaskedLM:
        loss = model(ids, labels=ids).loss
    else:
        loss = model(ids, labels=torch.tensor([0, 1, 1])).loss
    loss.backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert missing == []


@pytest.mark.parametrize("model_class", [m2_hf.M2Model, m2_hf.M2ForMaskedLM, m2_hf.M2ForSequenceClassification])
def test_save_and_load_round_trip_is_exact(tmp_path, model_class):
    model = model_class(tiny_config(**MONARCH, num_labels=3)).eval()
    randomise_sequence_mixers(model)
    model.save_pretrained(tmp_path)
    loaded = model_class.from_pretrained(tmp_path).eval()
    assert loaded.config.sequence_mixer == "monarch" and loaded.config.monarch_mlp_order == 2
    for name, tensor in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], tensor), name
    ids = torch.randint(1, 99, (2, 10))
    mask = torch.ones_like(ids)
    mask[1, 7:] = 0
    with torch.no_grad():
        first, second = model(ids, attention_mask=mask), loaded(ids, attention_mask=mask)
    for key in first:
        assert torch.equal(first[key], second[key]), key


def test_monarch_layers_learn_to_mix_positions_from_their_identity_init():
    """Predicting the previous token of fresh random sequences needs positions to be mixed: a position-wise model
    stays at the chance loss ln(7). From `M_1 = M_2 = I` a 2-layer model learns it within 30 steps."""
    vocab = 8
    model = m2_hf.M2ForMaskedLM(tiny_config(**MONARCH, vocab_size=vocab)).train()
    optimiser = torch.optim.Adam(model.parameters(), lr=3e-2)
    losses = []
    for _ in range(30):
        ids = torch.randint(1, vocab, (16, 16))
        labels = torch.full_like(ids, -100)
        labels[:, 1:] = ids[:, :-1]
        loss = model(ids, labels=labels).loss
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        losses.append(loss.item())
    chance = math.log(vocab - 1)
    assert losses[0] > 0.9 * chance
    assert sum(losses[-3:]) / 3 < 0.5 * chance


# Config


@pytest.mark.parametrize(
    "overrides, field",
    [
        ({"sequence_mixer": "monarch", "bidirectional": False}, "bidirectional"),
        ({"monarch_mlp_order": 3}, "monarch_mlp_order"),
        ({"monarch_mlp_order": True}, "monarch_mlp_order"),
        ({"monarch_mixer_act": "no_such_activation"}, "monarch_mixer_act"),
        ({"monarch_mlp_order": 2, "hidden_size": 30}, "hidden_size"),
    ],
)
def test_bad_monarch_configs_raise_naming_the_field(overrides, field):
    with pytest.raises(ValueError, match=field):
        tiny_config(**overrides)


def test_defaults_keep_the_m2_bert_layout():
    config = m2_hf.M2Config()
    assert (config.sequence_mixer, config.monarch_mlp_order, config.monarch_mixer_act) == ("long_conv", 1, "relu")
    layer = m2_hf.M2Model(tiny_config()).layers[0]
    assert isinstance(layer.mlp.in_proj, BlockDiagonalLinear) and not isinstance(layer.mixer, M2MonarchSequenceMixer)
