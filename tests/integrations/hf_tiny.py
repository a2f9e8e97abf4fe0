"""A tiny GPT-2 built from a config and a synthetic token dataset: a real ``transformers.Trainer`` run in a second,
with no download. Shared by the Hugging Face integration tests and the notebook test."""

from __future__ import annotations

import os
from typing import Any

import torch

VOCAB, SEQ = 64, 16


class TokenData(torch.utils.data.Dataset):
    """``n`` sequences of ``SEQ`` tokens following a simple rule (next token = previous + 1 mod VOCAB), so the
    loss falls; generated from ``seed``."""

    def __init__(self, n: int = 64, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        start = torch.randint(0, VOCAB, (n, 1), generator=g)
        self.ids = (start + torch.arange(SEQ)) % VOCAB

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.ids[i], "labels": self.ids[i]}


def tiny_model(seed: int = 0, *, lora: bool = False) -> Any:
    import transformers

    transformers.set_seed(seed)
    cfg = transformers.GPT2Config(vocab_size=VOCAB, n_positions=SEQ, n_embd=32, n_layer=2, n_head=2,
                                  bos_token_id=0, eos_token_id=0)
    model = transformers.GPT2LMHeadModel(cfg)
    if lora:
        import peft

        model = peft.get_peft_model(model, peft.LoraConfig(r=4, lora_alpha=8, target_modules=["c_attn"],
                                                           lora_dropout=0.0, fan_in_fan_out=True))
    return model


def tiny_trainer(output_dir: str | os.PathLike, *, max_steps: int = 12, save_steps: int = 4, seed: int = 0,
                 lora: bool = False, callbacks: list | None = None, **args: Any) -> Any:
    import transformers

    targs = transformers.TrainingArguments(
        output_dir=str(output_dir), max_steps=max_steps, save_steps=save_steps, save_strategy="steps",
        per_device_train_batch_size=8, learning_rate=1e-3, logging_steps=1, report_to=[], use_cpu=True,
        seed=seed, data_seed=seed, disable_tqdm=True, dataloader_num_workers=0, **args)
    return transformers.Trainer(model=tiny_model(seed, lora=lora), args=targs, train_dataset=TokenData(seed=seed),
                                callbacks=callbacks)


def weights(trainer: Any) -> dict[str, torch.Tensor]:
    """The model's trainable tensors (a PEFT model: the adapter), detached copies."""
    return {k: v.detach().clone() for k, v in trainer.model.named_parameters() if v.requires_grad}
