"""Whole models on the Triton kernels (CPU interpreter) against the same models on the pure-PyTorch path."""

import pytest
import torch
from helpers import tiny_config

import m2_hf

CASES = {
    "m2-bert": dict(),
    "m2-bert-original-layout": dict(mixer_layernorm=True, mask_padding=False),
    "m2-gpt": dict(bidirectional=False, norm_position="pre", use_position_embeddings=False, type_vocab_size=0),
    "monarch-both-axes": dict(sequence_mixer="monarch", monarch_mlp_order=2, max_position_embeddings=16),
}


def pair(model_class, **fields):
    """The same weights twice: one model forced onto the Triton kernels, one onto the reference ops."""
    torch.manual_seed(0)
    triton_model = model_class(tiny_config(kernel_backend="triton", num_hidden_layers=1, **fields))
    torch_model = model_class(tiny_config(kernel_backend="torch", num_hidden_layers=1, **fields))
    torch_model.load_state_dict(triton_model.state_dict())
    return triton_model, torch_model


@pytest.mark.parametrize("case", sorted(CASES))
def test_masked_lm_forward_and_backward_match_the_reference(case):
    fields = CASES[case]
    model_class = m2_hf.M2ForCausalLM if case == "m2-gpt" else m2_hf.M2ForMaskedLM
    triton_model, torch_model = pair(model_class, **fields)
    ids = torch.randint(1, 99, (2, 11))
    mask = torch.ones_like(ids)
    mask[1, :3] = 0
    outputs = {}
    for name, model in (("triton", triton_model), ("torch", torch_model)):
        with torch.profiler.profile() as profile:
            out = model(ids, attention_mask=mask, labels=ids)
            out.loss.backward()
        ran = {event.name for event in profile.events() if event.name.startswith("m2hf::")}
        assert bool(ran) == (name == "triton"), ran
        if name == "triton" and case != "monarch-both-axes":
            assert {"m2hf::mixer_front", "m2hf::gated_long_conv_monarch", "m2hf::blockdiag_matmul"} <= ran, ran
        grads = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
        outputs[name] = (out.logits, grads)
    torch.testing.assert_close(outputs["triton"][0], outputs["torch"][0], rtol=1e-5, atol=1e-5)
    assert outputs["triton"][1].keys() == outputs["torch"][1].keys()
    for name, grad in outputs["torch"][1].items():
        torch.testing.assert_close(outputs["triton"][1][name], grad, rtol=1e-4, atol=1e-5, msg=name)


@pytest.mark.parametrize("case", ["m2-bert", "m2-gpt"])
def test_long_inputs_on_the_radix_step_match_the_reference(case, small_radix_plans):
    """Inputs whose long convolutions take the three-launch radix path (scaled down by `small_radix_plans`)."""
    assert m2_hf.ops.long_conv.fft_plan(160).radix == 2
    fields = dict(CASES[case], max_position_embeddings=160)
    model_class = m2_hf.M2ForCausalLM if case == "m2-gpt" else m2_hf.M2ForMaskedLM
    triton_model, torch_model = pair(model_class, **fields)
    ids = torch.randint(1, 99, (2, 160))
    mask = torch.ones_like(ids)
    mask[1, 120:] = 0
    results = []
    for model in (triton_model, torch_model):
        out = model(ids, attention_mask=mask, labels=ids)
        out.loss.backward()
        results.append((out.logits, {n: p.grad for n, p in model.named_parameters() if p.grad is not None}))
    torch.testing.assert_close(results[0][0], results[1][0], rtol=1e-5, atol=1e-5)
    for name, grad in results[1][1].items():
        torch.testing.assert_close(results[0][1][name], grad, rtol=1e-4, atol=1e-5, msg=name)


def kernel_ops_run(function) -> set[str]:
    """The m2hf custom ops (the Triton kernels) that `function()` runs."""
    with torch.profiler.profile() as profile:
        function()
    return {event.name for event in profile.events() if event.name.startswith("m2hf::")}


@pytest.mark.parametrize("residual", [True, False])
def test_the_cached_path_runs_on_the_configured_backend(residual):
    """Prefilling a cache, continuing it with a chunk and a decoding step: forced onto the kernels, the prefill and
    the chunk run the fused mixer front and long convolution; forced onto torch, no kernel runs at all. Both give
    the logits of the uncached forward."""
    triton_model, torch_model = pair(m2_hf.M2ForCausalLM, residual_long_conv=residual, **CASES["m2-gpt"])
    ids = torch.randint(1, 99, (2, 14))
    mask = torch.ones_like(ids)
    mask[1, :3] = 0
    with torch.no_grad():
        full = torch_model(ids, attention_mask=mask).logits
        for backend, model in (("triton", triton_model), ("torch", torch_model)):
            steps = {}

            def prefill():
                steps["prefill"] = model(ids[:, :9], attention_mask=mask[:, :9], use_cache=True)

            def chunk():
                cache = steps["prefill"].past_key_values
                steps["chunk"] = model(ids[:, 9:13], attention_mask=mask[:, :13], cache=cache, use_cache=True)

            def decode():
                cache = steps["chunk"].past_key_values
                steps["decode"] = model(ids[:, 13:], attention_mask=mask, cache=cache, use_cache=True)

            steps_in_order = {"prefill": prefill, "chunk": chunk, "decode": decode}
            ran = {name: kernel_ops_run(step) for name, step in steps_in_order.items()}
            if backend == "torch":
                assert not any(ran.values()), ran
            else:
                for name in ("prefill", "chunk"):
                    assert {"m2hf::mixer_front", "m2hf::gated_long_conv_monarch"} <= ran[name], (name, ran[name])
                assert "m2hf::mixer_front" in ran["decode"], ran["decode"]
            logits = torch.cat([steps[name].logits for name in ("prefill", "chunk", "decode")], dim=1)
            torch.testing.assert_close(logits, full, rtol=1e-5, atol=1e-5, msg=backend)


def test_environment_variable_overrides_the_config(monkeypatch):
    monkeypatch.setenv("M2_HF_KERNEL_BACKEND", "torch")
    assert not m2_hf.ops.backend.use_triton(torch.zeros(1), "triton")
    monkeypatch.setenv("M2_HF_KERNEL_BACKEND", "cuda")
    with pytest.raises(ValueError, match="M2_HF_KERNEL_BACKEND"):
        m2_hf.ops.backend.use_triton(torch.zeros(1), "auto")


def test_forcing_triton_without_cuda_or_interpreter_is_an_error(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(RuntimeError, match="kernel_backend='triton'"):
        m2_hf.ops.backend.use_triton(torch.zeros(1), "triton")
    assert not m2_hf.ops.backend.use_triton(torch.zeros(1), "auto")


@pytest.mark.gpu
@pytest.mark.parametrize("case", ["m2-bert", "m2-gpt"])
def test_real_size_model_in_bf16_on_the_kernels_matches_the_reference(case):
    """M2-BERT-80M-sized models (768 wide, 12 layers, L = 1024) under bf16 autocast: kernels against reference."""
    fields = dict(max_position_embeddings=1024, hidden_dropout_prob=0.0)
    if case == "m2-gpt":
        fields.update(CASES["m2-gpt"])
    model_class = m2_hf.M2ForCausalLM if case == "m2-gpt" else m2_hf.M2ForMaskedLM
    torch.manual_seed(0)
    models = {
        backend: model_class(m2_hf.M2Config(kernel_backend=backend, **fields)).cuda() for backend in ("triton", "torch")
    }
    models["torch"].load_state_dict(models["triton"].state_dict())
    ids = torch.randint(1, 30000, (4, 1024), device="cuda")
    results = {}
    for backend, model in models.items():
        with torch.autocast("cuda", dtype=torch.bfloat16):
            out = model(ids, labels=ids)
        out.loss.backward()
        embedding_grad = model.get_input_embeddings().weight.grad.float()
        results[backend] = (out.logits.float(), out.loss.float(), embedding_grad)
    for got, want in zip(results["triton"], results["torch"]):
        assert ((got - want).norm() / want.norm()).item() <= 1e-2


def test_inference_reuses_each_filter_spectrum_in_the_kernel_layout(monkeypatch):
    """In eval mode without gradients the fused path gets each filter's spectrum in the kernels' layout from the
    filter's cache: a second forward does no filter work, and changing a filter weight recomputes it."""
    from m2_hf.modeling import implicit_filter
    from m2_hf.ops.long_conv import fused

    conversions = []
    convert = fused.monarch_spectrum
    monkeypatch.setattr(fused, "monarch_spectrum", lambda *a, **k: conversions.append(1) or convert(*a, **k))
    triton_model, torch_model = pair(m2_hf.M2ForMaskedLM)
    triton_model.eval(), torch_model.eval()
    filters = [m for m in triton_model.modules() if isinstance(m, implicit_filter.M2ImplicitFilter)]
    ids = torch.randint(1, 99, (2, 11))
    with torch.no_grad():
        first = triton_model(ids).logits
        assert len(conversions) == len(filters) >= 2
        second = triton_model(ids).logits
        assert len(conversions) == len(filters)
        torch.testing.assert_close(second, first, rtol=0, atol=0)
        torch.testing.assert_close(first, torch_model(ids).logits, rtol=1e-5, atol=1e-5)
        filters[0].frequency.add_(0.1)
        triton_model(ids)
        assert len(conversions) == len(filters) + 1
