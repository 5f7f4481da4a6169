"""Tokenizer and chat template for a model directory, without importing transformers.

Reads `tokenizer.json` (the `tokenizers` library), `tokenizer_config.json`
(special tokens, chat template), `chat_template.jinja` and the eos ids of
`generation_config.json` / `config.json`. The chat template renders with a
sandboxed Jinja environment configured the way transformers does, so the
prompt the engine serves is the one the trainer trains on.

Only the template makes turns: special-token text inside a message (a forged
`<|im_start|>system`) encodes as ordinary text, the idea of transformers'
`split_special_tokens` applied to message content alone. `render_chat` marks such
text with a noncharacter and `encode_rendered` encodes the marked pieces with
special-token matching off, so an ordinary chat tokenises exactly as before.

Left out: slow (sentencepiece-only) tokenizers; a model directory must have
`tokenizer.json`.
"""

from __future__ import annotations

import json
import re
from functools import cached_property
from pathlib import Path
from typing import Any

from tokenizers import Tokenizer as HFTokenizer

# End-of-turn markers of common chat formats: when a template uses one, it stops generation.
END_OF_TURN_TOKENS = ("<|im_end|>", "<|eot_id|>", "<|end|>", "<end_of_turn>", "<|endoftext|>")


# Written after the first character of special-token text found in a message, so that the
# text no longer matches the token. U+FDD0 is a Unicode noncharacter, reserved for a
# program's internal use: no real text or chat template contains it.
_MARK = "\ufdd0"


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
        ids = _encode(self.hf, text, add_special_tokens).ids
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

    @cached_property
    def _special_texts(self) -> tuple[str, ...]:
        added = self.hf.get_added_tokens_decoder().values()
        # Longest first, so that a token that extends another one wins the match.
        texts = {t.content for t in added if t.special and len(t.content) > 1}
        return tuple(sorted(texts, key=len, reverse=True))

    @cached_property
    def _special_re(self) -> re.Pattern[str] | None:
        texts = self._special_texts
        return re.compile("|".join(map(re.escape, texts))) if texts else None

    @cached_property
    def _marked_re(self) -> re.Pattern[str]:
        marked = (t[0] + _MARK + t[1:] for t in self._special_texts)
        return re.compile("|".join(map(re.escape, marked)))

    @cached_property
    def _special_ids(self) -> frozenset[int]:
        added = self.hf.get_added_tokens_decoder()
        return frozenset(i for i, t in added.items() if t.special)

    @cached_property
    def _plain(self) -> HFTokenizer:
        """A copy that encodes special-token text as ordinary text (the shared one stays as is)."""
        plain = HFTokenizer.from_str(self.hf.to_str())
        plain.encode_special_tokens = True
        return plain

    def _mark(self, value: Any) -> Any:
        if isinstance(value, str):
            pattern = self._special_re
            return pattern.sub(lambda m: m[0][0] + _MARK + m[0][1:], value) if pattern else value
        if isinstance(value, dict):
            return {k: self._mark(v) for k, v in value.items()}
        if isinstance(value, list):
            return [self._mark(v) for v in value]
        return value

    def render_chat(
        self, messages: list[dict[str, Any]], add_generation_prompt: bool = True, **kwargs: Any
    ) -> str:
        """The chat as `encode_rendered` reads it: the template's text, with special-token
        text inside messages (and the template's other inputs, such as `tools`) marked so
        that it encodes as ordinary text.

        Without such text this is `apply_chat_template` exactly.
        """
        marked = [
            {k: v if k == "role" else self._mark(v) for k, v in message.items()}
            for message in messages
        ]
        extra = {k: self._mark(v) for k, v in kwargs.items()}
        return self.apply_chat_template(
            marked, add_generation_prompt=add_generation_prompt, **extra
        )

    def encode_rendered(self, text: str) -> tuple[list[int], list[int]]:
        """Token ids of `render_chat` text and the character in `text` where each starts.

        Special tokens come from the template's text only; a marked piece (special-token
        text from a message) encodes as ordinary text, the mark dropped.
        """
        encoding = _encode(self.hf, text, add_special_tokens=False)
        ids, offsets = list(encoding.ids), list(encoding.offsets)
        if _MARK not in text:
            return ids, [start for start, _ in offsets]
        out_ids: list[int] = []
        out_starts: list[int] = []
        run: list[int] = []  # indexes of the ordinary tokens since the last special one
        run_start = 0

        def flush(run_end: int) -> None:
            piece = text[run_start:run_end]
            if not self._marked_re.search(piece):
                out_ids.extend(ids[i] for i in run)
                out_starts.extend(offsets[i][0] for i in run)
                return
            plain, index = self._unmark(piece)
            encoding = _encode(self._plain, plain, add_special_tokens=False)
            out_ids.extend(encoding.ids)
            out_starts.extend(run_start + index[start] for start, _ in encoding.offsets)

        for i, (token_id, (start, end)) in enumerate(zip(ids, offsets)):
            if token_id in self._special_ids:
                flush(start)
                out_ids.append(token_id)
                out_starts.append(start)
                run, run_start = [], end
            else:
                run.append(i)
        flush(len(text))
        return out_ids, out_starts

    def _unmark(self, piece: str) -> tuple[str, list[int]]:
        """`piece` with its marks dropped, and where each kept character was in `piece`."""
        marks = {m.start() + 1 for m in self._marked_re.finditer(piece)}
        kept = [i for i in range(len(piece)) if i not in marks]
        return "".join(piece[i] for i in kept), kept

    def encode_chat(
        self, messages: list[dict[str, Any]], add_generation_prompt: bool = True
    ) -> list[int]:
        """Token ids of the chat: the template's special tokens, messages as ordinary text."""
        return self.encode_chat_text(self.render_chat(messages, add_generation_prompt))

    def encode_chat_text(self, text: str) -> list[int]:
        """Token ids of `render_chat` text, with the BOS token the model expects."""
        ids, _ = self.encode_rendered(text)
        if (
            self.add_bos_token
            and self.bos_token_id is not None
            and (not ids or ids[0] != self.bos_token_id)
        ):
            ids = [self.bos_token_id, *ids]
        return ids

    @cached_property
    def max_token_chars(self) -> int | None:
        """The most characters of input one token can stand for, or None when this tokenizer
        has no such bound (it drops or merges text: whitespace splitting, WordPiece, an
        unknown token): `min_num_tokens` rests on it."""
        return _max_token_chars(self.hf)

    def min_num_tokens(self, text: str) -> int:
        """A lower bound of the tokens `text` (plain or `render_chat` text) encodes to,
        without encoding it; 0 when the tokenizer has no bound."""
        per_token = self.max_token_chars
        if not per_token:
            return 0
        num_chars = len(text) - text.count(_MARK)  # marks are dropped before encoding
        return -(-num_chars // per_token)


def _encode(hf: HFTokenizer, text: str, add_special_tokens: bool) -> Any:
    """One encoding. `encode_batch` releases the GIL while it works and `encode` does not
    (tokenizers 0.23): a thread tokenising a long prompt must leave the event loop running."""
    return hf.encode_batch([text], add_special_tokens=add_special_tokens)[0]


# Normalizers and pre-tokenizers that keep every character of the input (or replace it by
# one or more): under them a token covers at most as many characters as its own text has.
_KEEPS_TEXT = {"Prepend", "Lowercase", "NFD", "NFKD", "ByteLevel", "Metaspace", "Digits"}
_KEEPS_TEXT |= {"UnicodeScripts", "Split", "Punctuation"}  # unless behavior is "Removed"


def _keeps_text(part: dict | None) -> bool:
    if part is None:
        return True
    kind = part.get("type")
    if kind == "Sequence":
        return all(map(_keeps_text, part.get("normalizers") or part.get("pretokenizers") or []))
    if kind == "Replace":
        pattern = part.get("pattern", {}).get("String")
        return pattern is not None and len(part.get("content", "")) >= len(pattern)
    return kind in _KEEPS_TEXT and part.get("behavior") != "Removed"


def _max_token_chars(hf: HFTokenizer) -> int | None:
    """Longest token text, when every input character reaches the model and becomes part of
    a token no longer than its text: byte-level or byte-fallback BPE (a byte-level token of
    k characters covers k bytes, so at most k characters), nothing dropping characters
    before it (NFC and NFKC compose several into one, so they count as dropping), and no
    added token that swallows the whitespace around it."""
    spec = json.loads(hf.to_str())
    model = spec.get("model") or {}
    vocab = hf.get_vocab(with_added_tokens=True)
    if model.get("type") != "BPE":
        return None
    if not (_keeps_text(spec.get("normalizer")) and _keeps_text(spec.get("pre_tokenizer"))):
        return None
    if any(t.lstrip or t.rstrip for t in hf.get_added_tokens_decoder().values()):
        return None
    byte_level = "ByteLevel" in json.dumps(spec.get("pre_tokenizer"))
    if byte_level and all(c in vocab for c in _byte_alphabet()):
        return max(map(len, vocab))
    if model.get("byte_fallback") and all(f"<0x{b:02X}>" in vocab for b in range(256)):
        return max(map(len, vocab))
    return None  # a character missing from the vocabulary is dropped or becomes one unk


def _byte_alphabet() -> list[str]:
    from tokenizers.pre_tokenizers import ByteLevel

    return ByteLevel.alphabet()
