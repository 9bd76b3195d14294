"""Prompts as token ids, and where generation ends: what every command and data set shares."""

from __future__ import annotations

import torch

CODE_INSTRUCTION = "Complete this Python function.\n\n"  # code prompts: HumanEval (bench), sources (calibration)


def eos_token_ids(model, tokenizer) -> set[int]:
    """Every token id that ends generation: the tokenizer's EOS and the generation config's."""
    ids = set()
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if configured is not None:
        ids.update(configured if isinstance(configured, list) else [configured])
    if tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    return ids


def check_utf8(text: str) -> None:
    """Refuse text holding undecodable bytes (command-line bytes that are not UTF-8 reach
    Python as lone surrogates, which tokenizers reject with a TypeError)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as error:
        raise ValueError(f"the prompt is not valid UTF-8 text (an undecodable byte at character {error.start}): "
                         "pass UTF-8 text") from None


def encode_prompt(tokenizer, text: str, chat: bool = True) -> torch.Tensor:
    """[1, length] token ids; with ``chat`` the model's chat template (if it has one) wraps
    ``text`` as a user turn and opens the assistant's turn."""
    return encode_conversation(tokenizer, [text], [], chat)


def encode_conversation(tokenizer, user_turns: list[str], answers: list[str], chat: bool = True) -> torch.Tensor:
    """[1, length] token ids of alternating user turns and assistant ``answers`` (one fewer
    answer than turns), ending with the assistant's turn opened. Without a chat template
    (or ``chat=False``) the turns are joined as plain text."""
    if not user_turns or not all(turn.strip() for turn in user_turns):
        raise ValueError("the prompt is empty (or only whitespace): give some text")
    for text in (*user_turns, *answers):
        check_utf8(text)
    if chat and tokenizer.chat_template:
        messages = []
        for index, turn in enumerate(user_turns):
            messages.append({"role": "user", "content": turn})
            if index < len(answers):
                messages.append({"role": "assistant", "content": answers[index]})
        ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=False)
        if isinstance(ids, dict) or hasattr(ids, "input_ids"):
            ids = ids["input_ids"]
    else:
        text = "\n\n".join(part for pair in zip(user_turns, answers + [""]) for part in pair if part)
        ids = tokenizer(text, add_special_tokens=True)["input_ids"]
    return torch.tensor([list(ids)], dtype=torch.long)


def truncate_at_eos(tokens: list[int], eos_token_ids) -> tuple[list[int], bool]:
    """``tokens`` up to and including the first EOS token, and whether one was found."""
    end = next((i for i, token in enumerate(tokens) if token in eos_token_ids), None)
    return (tokens, False) if end is None else (tokens[: end + 1], True)
