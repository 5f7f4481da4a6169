"""Tokenizer and chat template for a model directory, without importing transformers.

Reads `tokenizer.json` (the `tokenizers` library), `tokenizer_config.json`
(special tokens, chat template), `chat_template.jinja` and the eos ids of
`generation_config.json` / `config.json`. The chat template renders with a
sandboxed Jinja environment configured the way transformers does, so the
prompt the engine serves is the one the trainer trains on.

Left out: slow (sentencepiece-only) tokenizers; a model directory must have
`tokenizer.json`.
"""

from __future__ import annotations

import json
from functools import cached_property
from pathlib import Path
from typing import Any

from tokenizers import Tokenizer as HFTokenizer

# End-of-turn markers of common chat formats: when a template uses one, it stops generation.
END_OF_TURN_TOKENS = ("<|im_end|>", "<|eot_id|>", "<|end|>", "<end_of_turn>", "<|endoftext|>")


class TokenizerError(ValueError):
    pass


def _token_content(value: Any) -> str | None:
    if isinstance(value, dict):
        return value.get("content")
    return value


def _read_json(path: Path) -> dict:
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise TokenizerError(f"{path} is not valid JSON: {e}") from None


class Tokenizer:
    """Encode, decode and render chats for one model."""

    def __init__(
        self,
        hf: HFTokenizer,
        *,
        chat_template: str | None = None,
        bos_token: str | None = None,
        eos_token: str | None = None,
        extra_eos_ids: tuple[int, ...] = (),
        add_bos_token: bool = False,
    ) -> None:
        self.hf = hf
        self.chat_template = chat_template
        self.bos_token = bos_token
        self.eos_token = eos_token
        self.add_bos_token = add_bos_token
        eos: list[int] = list(extra_eos_ids)
        candidates = [eos_token] if eos_token else []
        if chat_template:
            candidates += [t for t in END_OF_TURN_TOKENS if t in chat_template]
        for token in candidates:
            token_id = hf.token_to_id(token)
            if token_id is not None and token_id not in eos:
                eos.append(token_id)
        self.eos_token_ids: tuple[int, ...] = tuple(eos)
        self.bos_token_id = hf.token_to_id(bos_token) if bos_token else None

    @classmethod
    def from_dir(cls, path: str | Path) -> Tokenizer:
        path = Path(path)
        tokenizer_file = path / "tokenizer.json"
        if not tokenizer_file.is_file():
            raise TokenizerError(f"{path} has no tokenizer.json")
        try:
            hf = HFTokenizer.from_file(str(tokenizer_file))
        except Exception as e:  # the tokenizers library raises plain Exception
            raise TokenizerError(f"{tokenizer_file} cannot be loaded: {e}") from None
        config = _read_json(path / "tokenizer_config.json")
        template = config.get("chat_template")
        if isinstance(template, list):  # named templates: take "default"
            named = {t.get("name"): t.get("template") for t in template}
            template = named.get("default") or next(iter(named.values()), None)
        jinja_file = path / "chat_template.jinja"
        if jinja_file.is_file():
            template = jinja_file.read_text()
        eos_ids: list[int] = []
        for name in ("generation_config.json", "config.json"):
            value = _read_json(path / name).get("eos_token_id")
            for token_id in value if isinstance(value, list) else [value]:
                if isinstance(token_id, int) and token_id not in eos_ids:
                    eos_ids.append(token_id)
        return cls(
            hf,
            chat_template=template,
            bos_token=_token_content(config.get("bos_token")),
            eos_token=_token_content(config.get("eos_token")),
            extra_eos_ids=tuple(eos_ids),
            add_bos_token=bool(config.get("add_bos_token", False)),
        )

    @property
    def vocab_size(self) -> int:
        return self.hf.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        ids = self.hf.encode(text, add_special_tokens=add_special_tokens).ids
        bos = self.bos_token_id
        if add_special_tokens and self.add_bos_token and bos is not None and ids[:1] != [bos]:
            ids = [bos, *ids]
        return ids

    def decode(self, token_ids: list[int], skip_special_tokens: bool = True) -> str:
        return self.hf.decode(list(token_ids), skip_special_tokens=skip_special_tokens)

    def id_to_token(self, token_id: int) -> str | None:
        return self.hf.id_to_token(token_id)

    def token_to_id(self, token: str) -> int | None:
        return self.hf.token_to_id(token)

    @cached_property
    def _template(self):
        from jinja2.exceptions import TemplateError
        from jinja2.sandbox import ImmutableSandboxedEnvironment

        def raise_exception(message: str) -> None:
            raise TemplateError(message)

        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
        env.globals["raise_exception"] = raise_exception
        env.filters["tojson"] = lambda x, indent=None, **_: json.dumps(
            x, ensure_ascii=False, indent=indent
        )
        return env.from_string(self.chat_template)

    def apply_chat_template(
        self,
        messages: list[dict[str, Any]],
        add_generation_prompt: bool = True,
        **kwargs: Any,
    ) -> str:
        """Render `messages` ([{"role", "content"}]) to the prompt text."""
        if not self.chat_template:
            # No template: a plain transcript, so base models still answer something sensible.
            text = "".join(f"{m['role']}: {m['content']}\n" for m in messages)
            return text + ("assistant: " if add_generation_prompt else "")
        from jinja2.exceptions import TemplateError

        try:
            return self._template.render(
                messages=messages,
                add_generation_prompt=add_generation_prompt,
                bos_token=self.bos_token or "",
                eos_token=self.eos_token or "",
                **kwargs,
            )
        except TemplateError as e:
            from ownllm.errors import InvalidRequestError

            raise InvalidRequestError(
                f"the model's chat template rejected these messages: {e}", param="messages"
            ) from None

    def encode_chat(
        self, messages: list[dict[str, Any]], add_generation_prompt: bool = True
    ) -> list[int]:
        """Token ids of the rendered chat (special tokens in the text are parsed as such)."""
        text = self.apply_chat_template(messages, add_generation_prompt=add_generation_prompt)
        ids = self.hf.encode(text, add_special_tokens=False).ids
        if (
            self.add_bos_token
            and self.bos_token_id is not None
            and (not ids or ids[0] != self.bos_token_id)
        ):
            ids = [self.bos_token_id, *ids]
        return ids
