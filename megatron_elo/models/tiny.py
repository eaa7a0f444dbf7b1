"""Tiny random Hugging Face models made locally (tests, the CPU demo): nothing is downloaded."""

from __future__ import annotations

from pathlib import Path

import torch

from megatron_elo.config.schema import ArchConfig
from megatron_elo.models.hf_io import hf_config_dict


def make_tiny_hf_model(arch: ArchConfig, out_dir: str | Path, *, seed: int = 0, init_std: float = 0.02) -> Path:
    """Save a randomly initialised ``transformers`` model of ``arch`` (fp32 safetensors) to ``out_dir``.

    Norm weights are randomised around 1 too, so a test notices a swapped or missing norm.
    """
    import transformers

    config = transformers.AutoConfig.for_model(**hf_config_dict(arch))
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(config, torch_dtype=torch.float32)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("norm.weight"):
                param.copy_(1.0 + 0.1 * torch.randn_like(param))
            else:
                param.normal_(0.0, init_std if param.dim() > 1 else 0.1)
    model.save_pretrained(str(out_dir), safe_serialization=True)
    return Path(out_dir)


CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n"
    "{% if enable_thinking is defined and enable_thinking is false %}<think>\n\n</think>\n\n{% endif %}{% endif %}"
)  # Qwen3's switch: enable_thinking=false (model.chat_template_kwargs) opens the answer with an empty think block
SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")


def make_tiny_tokenizer(out_dir: str | Path) -> Path:
    """Save a byte-level tokenizer (256 byte tokens + 3 specials, Qwen-style chat template) that
    encodes any text, for tiny models that must read free text (the LLM judge in tests).
    Vocabulary size 259: give the model ``vocab_size >= 259``."""
    import transformers
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    byte_vocab = {token: index for index, token in enumerate(sorted(pre_tokenizers.ByteLevel.alphabet()))}
    tokenizer = Tokenizer(models.BPE(vocab=byte_vocab, merges=[]))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.add_special_tokens(list(SPECIAL_TOKENS))
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                                chat_template=CHAT_TEMPLATE)
    fast.save_pretrained(str(out_dir))
    return Path(out_dir)


def lift_output_tokens(model_dir: str | Path, texts: tuple[str, ...] = ("A", "B", "C"), *, factor: float = 3.0) -> None:
    """Scale the output-embedding rows of each text's first token by ``factor`` in the checkpoint at
    ``model_dir`` (its own tokenizer): a random tiny judge then often puts a verdict letter among its
    likeliest next tokens, as a real judge does after "[[" (one-token log-prob verdicts read the top ones)."""
    import transformers

    tokenizer = transformers.AutoTokenizer.from_pretrained(str(model_dir))
    model = transformers.AutoModelForCausalLM.from_pretrained(str(model_dir), torch_dtype=torch.float32)
    with torch.no_grad():
        for text in texts:
            model.get_output_embeddings().weight[tokenizer.encode(text, add_special_tokens=False)[0]] *= factor
    model.save_pretrained(str(model_dir), safe_serialization=True)
