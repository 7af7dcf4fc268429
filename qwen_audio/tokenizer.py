"""The Qwen2 byte-level BPE tokenizer, loaded from a checkpoint folder, and UTF-8 safe streaming.

Two layouts are supported, both built on the `tokenizers` library:
- `tokenizer.json` (the fast-tokenizer file) when it exists;
- otherwise `vocab.json` + `merges.txt`, wrapped in the Qwen2 normaliser (NFC), pre-tokenizer
  (the split regex below, then byte-level mapping) and byte-level decoder.
Added/special tokens come from `tokenizer_config.json` (`added_tokens_decoder`), `added_tokens.json`
and `special_tokens_map.json`. Special tokens written in the text (`<|im_start|>`, `<|AUDIO|>`, ...)
are always recognised, as the reference processor does.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tokenizers import AddedToken, Regex, decoders, models, normalizers, pre_tokenizers
from tokenizers import Tokenizer as _HFTokenizer

# Qwen2's pre-tokenizer: contractions, letters with one optional leading non-letter, single digits,
# punctuation runs, newline runs, and whitespace (a run before a word keeps its last space).
QWEN2_SPLIT_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)

ENDOFTEXT = "<|endoftext|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
AUDIO = "<|AUDIO|>"
AUDIO_BOS = "<|audio_bos|>"
AUDIO_EOS = "<|audio_eos|>"
REQUIRED_SPECIAL_TOKENS = (ENDOFTEXT, IM_START, IM_END, AUDIO, AUDIO_BOS, AUDIO_EOS)

_REPLACEMENT_CHAR = "\ufffd"
# Texts longer than this are tokenized without holding the GIL. Shorter ones take microseconds,
# and keep `encode`: `encode_batch` marks the process as having used the library's thread pool,
# after which every fork (data loader workers) prints a warning and turns it off.
GIL_FREE_CHARS = 2000


class TokenizerError(ValueError):
    """A tokenizer file is missing or malformed; the message names the file."""


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise TokenizerError(f"cannot read tokenizer file {path}: {e}") from e


def _token_content(value: Any) -> str | None:
    """A special-token entry is a string or an AddedToken dict (`{"content": ...}`)."""
    if isinstance(value, str):
        return value
    if isinstance(value, dict) and isinstance(value.get("content"), str):
        return value["content"]
    return None


def _build_bpe(vocab_path: Path, merges_path: Path) -> _HFTokenizer:
    vocab = _read_json(vocab_path)
    if not isinstance(vocab, dict) or not all(isinstance(v, int) for v in vocab.values()):
        raise TokenizerError(f"malformed {vocab_path}: expected a JSON object of token -> id")
    try:
        lines = merges_path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise TokenizerError(f"cannot read tokenizer file {merges_path}: {e}") from e
    merges: list[tuple[str, str]] = []
    for lineno, line in enumerate(lines, start=1):
        if not line or line.startswith("#version"):
            continue
        pair = line.split(" ")
        if len(pair) != 2:
            raise TokenizerError(f"malformed {merges_path} line {lineno}: {line!r}")
        merges.append((pair[0], pair[1]))
    try:
        bpe = models.BPE(
            vocab=vocab,
            merges=merges,
            unk_token=None,
            continuing_subword_prefix="",
            end_of_word_suffix="",
            fuse_unk=False,
            byte_fallback=False,
        )
    except Exception as e:  # the Rust side raises a plain Exception for unknown merge tokens
        raise TokenizerError(f"{merges_path} does not fit {vocab_path}: {e}") from e
    tok = _HFTokenizer(bpe)
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN2_SPLIT_PATTERN), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    return tok


def _added_token_specs(path: Path, config: dict) -> list[tuple[int, AddedToken]]:
    """(id, AddedToken) for every added token the folder declares, ordered by id."""
    named: set[str] = set()
    for key in ("bos_token", "eos_token", "pad_token", "unk_token"):
        if (content := _token_content(config.get(key))) is not None:
            named.add(content)
    for value in config.get("additional_special_tokens") or []:
        if (content := _token_content(value)) is not None:
            named.add(content)
    map_path = path / "special_tokens_map.json"
    if map_path.exists():
        special_map = _read_json(map_path)
        if not isinstance(special_map, dict):
            raise TokenizerError(f"malformed {map_path}: expected a JSON object")
        for value in special_map.values():
            for item in value if isinstance(value, list) else [value]:
                if (content := _token_content(item)) is not None:
                    named.add(content)

    specs: dict[int, AddedToken] = {}
    decoder = config.get("added_tokens_decoder") or {}
    if not isinstance(decoder, dict):
        raise TokenizerError(f"malformed {path / 'tokenizer_config.json'}: added_tokens_decoder")
    for key, entry in decoder.items():
        content = _token_content(entry)
        if content is None or not str(key).isdigit():
            raise TokenizerError(
                f"malformed {path / 'tokenizer_config.json'}: added_tokens_decoder[{key!r}]"
            )
        special = bool(entry.get("special", content in named))
        specs[int(key)] = AddedToken(
            content,
            single_word=bool(entry.get("single_word", False)),
            lstrip=bool(entry.get("lstrip", False)),
            rstrip=bool(entry.get("rstrip", False)),
            normalized=bool(entry.get("normalized", not special)),
            special=special,
        )
    added_path = path / "added_tokens.json"
    if added_path.exists():
        added = _read_json(added_path)
        if not isinstance(added, dict) or not all(isinstance(v, int) for v in added.values()):
            raise TokenizerError(f"malformed {added_path}: expected a JSON object of token -> id")
        declared = {t.content: i for i, t in specs.items()}
        for content, idx in added.items():
            if declared.get(content, idx) != idx:
                raise TokenizerError(
                    f"{added_path} gives {content!r} id {idx} but tokenizer_config.json gives it "
                    f"id {declared[content]}"
                )
            if idx in specs:
                if specs[idx].content != content:
                    raise TokenizerError(
                        f"{added_path} gives id {idx} to {content!r} but tokenizer_config.json "
                        f"gives it to {specs[idx].content!r}"
                    )
                continue
            special = content in named
            specs[idx] = AddedToken(content, normalized=not special, special=special)
    return sorted(specs.items())


class Tokenizer:
    """Text <-> ids for Qwen2-Audio; special ids as attributes."""

    def __init__(
        self, tok: _HFTokenizer, *, eos_token: str = ENDOFTEXT, pad_token: str = ENDOFTEXT
    ):
        self._tok = tok
        missing = [t for t in REQUIRED_SPECIAL_TOKENS if tok.token_to_id(t) is None]
        if missing:
            raise TokenizerError(f"the tokenizer has no {', '.join(missing)} token")
        self.endoftext_id: int = tok.token_to_id(ENDOFTEXT)
        self.im_start_id: int = tok.token_to_id(IM_START)
        self.im_end_id: int = tok.token_to_id(IM_END)
        self.audio_token_id: int = tok.token_to_id(AUDIO)
        self.audio_bos_id: int = tok.token_to_id(AUDIO_BOS)
        self.audio_eos_id: int = tok.token_to_id(AUDIO_EOS)
        eos_id = tok.token_to_id(eos_token)
        pad_id = tok.token_to_id(pad_token)
        if eos_id is None or pad_id is None:
            raise TokenizerError(f"eos {eos_token!r} / pad {pad_token!r} are not in the vocabulary")
        # The base model ends with the configured eos (<|endoftext|>); chat turns end with
        # <|im_end|>. Stopping on either is right for both checkpoints.
        self.eos_token_id: int = eos_id
        self.eos_token_ids: list[int] = list(dict.fromkeys([eos_id, self.im_end_id]))
        self.pad_token_id: int = pad_id
        self.special_token_ids: frozenset[int] = frozenset(
            tok.token_to_id(t.content) for t in tok.get_added_tokens_decoder().values() if t.special
        )

    @classmethod
    def from_dir(cls, path: str | Path) -> Tokenizer:
        path = Path(path)
        if not path.is_dir():
            raise TokenizerError(f"tokenizer folder {path} does not exist")
        config_path = path / "tokenizer_config.json"
        config = _read_json(config_path) if config_path.exists() else {}
        if not isinstance(config, dict):
            raise TokenizerError(f"malformed {config_path}: expected a JSON object")

        json_path = path / "tokenizer.json"
        if json_path.exists():
            try:
                tok = _HFTokenizer.from_file(str(json_path))
            except Exception as e:
                raise TokenizerError(f"cannot load {json_path}: {e}") from e
        else:
            vocab_path, merges_path = path / "vocab.json", path / "merges.txt"
            for p in (vocab_path, merges_path):
                if not p.exists():
                    raise TokenizerError(f"{path} has no tokenizer.json and no {p.name} ({p})")
            tok = _build_bpe(vocab_path, merges_path)

        # Add the declared tokens in id order, so that new ones get exactly their declared ids.
        for idx, token in _added_token_specs(path, config):
            existing = tok.token_to_id(token.content)
            if existing is None:
                if tok.get_vocab_size(with_added_tokens=True) != idx:
                    raise TokenizerError(
                        f"added token {token.content!r} is declared with id {idx}, but the next "
                        f"free id in {path} is {tok.get_vocab_size(with_added_tokens=True)}"
                    )
            elif existing != idx:
                raise TokenizerError(
                    f"token {token.content!r} has id {existing} in the vocabulary but {idx} in "
                    f"{path}'s added-token files"
                )
            if token.special:
                tok.add_special_tokens([token])
            else:
                tok.add_tokens([token])

        eos = _token_content(config.get("eos_token")) or ENDOFTEXT
        pad = _token_content(config.get("pad_token")) or ENDOFTEXT
        try:
            return cls(tok, eos_token=eos, pad_token=pad)
        except TokenizerError as e:
            raise TokenizerError(f"{path}: {e}") from None

    @property
    def vocab_size(self) -> int:
        """Number of ids the tokenizer knows, added tokens included (the LM vocab may be larger)."""
        return self._tok.get_vocab_size(with_added_tokens=True)

    def token_to_id(self, token: str) -> int | None:
        return self._tok.token_to_id(token)

    def id_to_token(self, token_id: int) -> str | None:
        return self._tok.id_to_token(token_id)

    def encode(self, text: str) -> list[int]:
        # Qwen2 adds no BOS/EOS around a text, so add_special_tokens changes nothing here.
        if len(text) > GIL_FREE_CHARS:
            # `encode` holds the GIL throughout (131k characters: 0.2 s in which no other
            # thread of the process runs, a server's event loop and engine included);
            # `encode_batch` releases it and gives the same ids.
            return self._tok.encode_batch([text], add_special_tokens=False)[0].ids
        return self._tok.encode(text, add_special_tokens=False).ids

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        return self._tok.decode(list(ids), skip_special_tokens=skip_special_tokens)


class IncrementalDecoder:
    """Turns a stream of token ids into text deltas that never end inside a UTF-8 character.

    Byte-level BPE tokens may hold part of a character (an emoji is often 4 tokens of one byte).
    A trailing U+FFFD in the decoded window means the last character is incomplete, so it is held
    back until a later token completes it (or `flush()` gives it up). Once the window decodes
    cleanly it is closed: byte-level decoding of later ids cannot change text before a complete
    character, so the deltas concatenate to `decode(all_ids)`.
    """

    def __init__(self, tokenizer: Tokenizer, skip_special_tokens: bool = True):
        self.tokenizer = tokenizer
        self.skip_special_tokens = skip_special_tokens
        self._window: list[int] = []  # ids since the last clean character boundary
        self._emitted = 0  # characters of decode(self._window) already returned

    def push(self, token_id: int) -> str:
        self._window.append(token_id)
        text = self.tokenizer.decode(self._window, self.skip_special_tokens)
        stable = len(text.rstrip(_REPLACEMENT_CHAR))
        delta = text[self._emitted : stable] if stable > self._emitted else ""
        self._emitted = max(self._emitted, stable)
        if stable == len(text):
            self._window.clear()
            self._emitted = 0
        return delta

    def flush(self) -> str:
        """Returns what is still held back (incomplete characters become U+FFFD) and resets."""
        text = self.tokenizer.decode(self._window, self.skip_special_tokens) if self._window else ""
        delta = text[self._emitted :]
        self._window.clear()
        self._emitted = 0
        return delta
