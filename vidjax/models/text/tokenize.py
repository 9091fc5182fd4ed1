"""Tokenizers from a local directory, and Open-Sora's caption cleaning.

``load_text_tokenizer(dir, kind, max_length)`` wraps a ``transformers`` fast tokenizer
(``T5TokenizerFast`` for T5, ``CLIPTokenizerFast`` for CLIP) so that texts -> (ids [B, L] int32,
mask [B, L] bool), padded and truncated to exactly ``max_length`` (Open-Sora: 120 / 200 / 300 for T5,
77 for CLIP). Nothing is downloaded: the directory must hold ``tokenizer.json`` or the slow files
(``spiece.model``; ``vocab.json`` + ``merges.txt``).

``clean_caption`` is the PixArt / DeepFloyd-IF caption cleaner that Open-Sora applies twice before T5
(``text_preprocessing``): it lowercases, drops URLs, HTML, @handles, CJK, ids, file names, shop spam,
normalises dashes and quotes, and tidies punctuation and spaces. It uses ``ftfy`` and ``bs4`` when they
are installed (as the reference does); otherwise close stdlib stand-ins (``_fix_text``, ``_html_text``),
which agree with them on ordinary captions.
"""

from __future__ import annotations

import html
import re
import unicodedata
import urllib.parse
from html.parser import HTMLParser
from pathlib import Path

import numpy as np

from vidjax.errors import MissingFileError

# --------------------------------------------------------------------------------------
# 1. Caption cleaning
# --------------------------------------------------------------------------------------

_URL_TLDS = r"(?:com|co|ru|net|org|edu|gov|it)"
_FILE_EXTS = r"(?:png|jpg|jpeg|bmp|webp|eps|pdf|apk|mp4)"
_DASHES = (r"[\u002D\u058A\u05BE\u1400\u1806\u2010-\u2015\u2E17\u2E1A\u2E3A\u2E3B\u2E40\u301C\u3030\u30A0"
           r"\uFE31\uFE32\uFE58\uFE63\uFF0D]+")
_CJK_BLOCKS = ("\u31c0-\u31ef", "\u31f0-\u31ff", "\u3200-\u32ff", "\u3300-\u33ff", "\u3400-\u4dbf", "\u4dc0-\u4dff",
               "\u4e00-\u9fff")
_BAD_PUNCT = r"[#®•©™&@·º½¾¿¡§~\)\(\]\[\}\{\|\\/\*]{1,}"


def _rules(*pairs: tuple[str, str]) -> list[tuple[re.Pattern, str]]:
    return [(re.compile(p), r) for p, r in pairs]


# before HTML stripping
_URLS = _rules(
    (rf"\b((?:https?:(?:\/{{1,3}}|[a-zA-Z0-9%])|[a-zA-Z0-9.\-]+[.]{_URL_TLDS}[\w/-]*\b\/?(?!@)))", ""),
    (rf"\b((?:www:(?:\/{{1,3}}|[a-zA-Z0-9%])|[a-zA-Z0-9.\-]+[.]{_URL_TLDS}[\w/-]*\b\/?(?!@)))", ""),
)
# after HTML stripping, before the dash/underscore split
_SYMBOLS = _rules(
    (r"@[\w\d]+\b", ""),  # @nickname
    *((f"[{block}]+", "") for block in _CJK_BLOCKS),  # CJK strokes .. unified ideographs
    (_DASHES, "-"),  # every kind of dash
    (r"[`´«»“”¨]", '"'),  # quotes to one standard
    (r"[‘’]", "'"),
    (r"&quot;?", ""),
    (r"&amp", ""),
    (r"\d{1,3}\.\d{1,3}\.\d{1,3}\.\d{1,3}", " "),  # ip addresses
    (r"\d:\d\d\s+$", ""),  # article ids
    (r"\\n", " "),  # a literal backslash-n
    (r"#\d{1,3}\b", ""),  # "#123"
    (r"#\d{5,}\b", ""),  # "#12345.."
    (r"\b\d{6,}\b", ""),  # "123456.."
    (rf"[\S]+\.{_FILE_EXTS}", ""),  # file names
    (r"[\"\']{2,}", '"'),  # """quoted"""
    (r"[\.]{2,}", " "),  # ellipses
    (_BAD_PUNCT, " "),  # ***word***, #word
    (r"\s+\.\s+", " "),  # " . "
)
_SEPARATORS = re.compile(r"(?:\-|\_)")  # this-is-my-cute-cat / this_is_my_cute_cat
# after ftfy
_SPAM = _rules(
    (r"\b[a-zA-Z]{1,3}\d{3,15}\b", ""),  # jc6640
    (r"\b[a-zA-Z]+\d+[a-zA-Z]+\b", ""),  # jc6640vc
    (r"\b\d+[a-zA-Z]+\d+\b", ""),  # 6640vc231
    (r"(worldwide\s+)?(free\s+)?shipping", ""),
    (r"(free\s)?download(\sfree)?", ""),
    (r"\bclick\b\s(?:for|on)\s\w+", ""),
    (rf"\b{_FILE_EXTS}(\simage[s]?)?", ""),
    (r"\bpage\s+\d+\b", ""),
    (r"\b\d*[a-zA-Z]+\d+[a-zA-Z]+\d+[a-zA-Z\d]*\b", " "),  # j2d1a2a...
    (r"\b\d+\.?\d*[xх×]\d+\.?\d*\b", ""),  # 1920x1080
    (r"\b\s+\:\s+", ": "),
    (r"(\D[,\./])\b", r"\1 "),  # a space after punctuation that precedes a word
    (r"\s+", " "),
)
_EDGES = _rules(
    (r"^[\"\']([\w\W]+)[\"\']$", r"\1"),  # unquote
    (r"^[\'\_,\-\:;]", ""),
    (r"[\'\_,\-\:\-\+]$", ""),
    (r"^\.\S+$", ""),
)


def _apply(rules: list[tuple[re.Pattern, str]], text: str) -> str:
    for pattern, repl in rules:
        text = pattern.sub(repl, text)
    return text


class _TextOnly(HTMLParser):
    """Collects text outside tags, comments, scripts and styles (what ``BeautifulSoup(...).text`` keeps)."""

    _HIDDEN = ("script", "style", "template")

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self.hidden = 0

    def handle_starttag(self, tag: str, attrs) -> None:
        self.hidden += tag in self._HIDDEN

    def handle_endtag(self, tag: str) -> None:
        self.hidden -= tag in self._HIDDEN and self.hidden > 0

    def handle_data(self, data: str) -> None:
        if not self.hidden:
            self.parts.append(data)


def _html_text(text: str) -> str:
    """The text content of an HTML fragment (BeautifulSoup ``.text`` with the html.parser builder)."""
    try:
        from bs4 import BeautifulSoup
    except ImportError:
        parser = _TextOnly()
        parser.feed(text)
        parser.close()
        return "".join(parser.parts)
    return BeautifulSoup(text, features="html.parser").text


# UTF-8 bytes misread as cp1252: a lead byte (Â..ô) then continuation bytes 0x80..0xBF shown as cp1252
_CONT = "\u0080-\u00bf\u0152\u0153\u0160\u0161\u0178\u017d\u017e\u0192\u02c6\u02dc\u2013\u2014\u2018-\u201a" \
        "\u201c-\u201e\u2020-\u2022\u2026\u2030\u2039\u203a\u20ac\u2122"
_MOJIBAKE = re.compile(f"[\u00c2-\u00df][{_CONT}]|[\u00e0-\u00ef][{_CONT}][{_CONT} ]"
                       f"|[\u00f0-\u00f4][{_CONT}]{{2}}[{_CONT} ]")


def _unmojibake(match: re.Match) -> str:
    """One UTF-8 sequence seen through cp1252 back to its character (a final space stands for a lost NBSP)."""
    seq = match.group(0)
    try:
        raw = b"".join(b"\xa0" if c == " " else c.encode("cp1252") if ord(c) > 0xFF else c.encode("latin-1")
                       for c in seq)
        return raw.decode("utf-8")
    except UnicodeError:
        return seq


_LIGATURES = str.maketrans({"ﬀ": "ff", "ﬁ": "fi", "ﬂ": "fl", "ﬃ": "ffi", "ﬄ": "ffl", "ﬅ": "ſt", "ﬆ": "st",
                            "Ĳ": "IJ", "ĳ": "ij", "Ŀ": "L·", "ŀ": "l·", "ŉ": "ʼn"})
_WIDE = {c: c - 0xFEE0 for c in range(0xFF01, 0xFF5F)} | {0x3000: 0x20}
_CURLY = str.maketrans({"‘": "'", "’": "'", "‚": "'", "‛": "'", "“": '"', "”": '"', "„": '"', "‟": '"'})
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0e-\x1f\x7f\u200b\ufeff\ufffc]|\x1b\[[0-9;]*[A-Za-z]")


def _fix_text(text: str) -> str:
    """``ftfy.fix_text`` when installed; otherwise its main steps for captions: UTF-8-as-cp1252 mojibake,
    HTML entities (unless the text has tags), ligatures, full-width forms, curly quotes, line breaks,
    control characters, NFC."""
    try:
        import ftfy
    except ImportError:
        pass
    else:
        return ftfy.fix_text(text)
    text = _MOJIBAKE.sub(_unmojibake, text)
    if not re.search(r"<[a-zA-Z/!]", text):
        text = html.unescape(text)
    text = text.translate(_LIGATURES).translate(_WIDE).translate(_CURLY)
    text = re.sub(r"\r\n?|[\u2028\u2029\x85]", "\n", text)
    return unicodedata.normalize("NFC", _CONTROL.sub("", text))


def clean_caption(caption: str) -> str:
    """One pass of the PixArt / DeepFloyd / Open-Sora caption cleaner (see the module docstring)."""
    caption = urllib.parse.unquote_plus(str(caption)).strip().lower()
    caption = caption.replace("<person>", "person")
    caption = _apply(_URLS, caption)
    caption = _html_text(caption)
    caption = _apply(_SYMBOLS, caption)
    if len(_SEPARATORS.findall(caption)) > 3:
        caption = _SEPARATORS.sub(" ", caption)
    caption = html.unescape(html.unescape(_fix_text(caption))).strip()
    caption = _apply(_SPAM, caption)
    caption = _apply(_EDGES, caption)
    return caption.strip()


def text_preprocessing(text: str, clean: bool = True) -> str:
    """Open-Sora's T5 preprocessing: ``clean_caption`` twice (it is not idempotent), else unchanged."""
    return clean_caption(clean_caption(text)) if clean else text


# --------------------------------------------------------------------------------------
# 2. Tokenizers
# --------------------------------------------------------------------------------------

TOKENIZER_FILES = ("tokenizer.json", "spiece.model", "vocab.json")


class TokenizerError(MissingFileError):
    """A tokenizer directory that is missing or unusable; the message is one line naming it."""


def load_tokenizer(directory: str | Path, kind: str | None = None):
    """The ``transformers`` fast tokenizer in ``directory``: ``kind`` "t5" | "clip" | None (auto)."""
    d = Path(directory)
    if not d.is_dir():
        raise TokenizerError(f"{d}: tokenizer directory not found")
    if not any((d / f).is_file() for f in TOKENIZER_FILES):
        raise TokenizerError(f"{d}: no tokenizer files (expected one of {', '.join(TOKENIZER_FILES)})")
    import transformers

    classes = {"t5": "T5TokenizerFast", "clip": "CLIPTokenizerFast", None: "AutoTokenizer"}
    if kind not in classes:
        raise ValueError(f"tokenizer kind {kind!r}; expected 't5', 'clip' or None")
    try:
        return getattr(transformers, classes[kind]).from_pretrained(str(d), local_files_only=True)
    except Exception as e:  # transformers raises many types, often with multi-line messages
        msg = " ".join(str(e).split())[:300]
        what = kind or "Hugging Face"
        raise TokenizerError(f"{d}: cannot load a {what} tokenizer ({type(e).__name__}: {msg})") from e


class TextTokenizer:
    """texts -> (ids [B, L] int32, mask [B, L] bool) with L = ``max_length`` exactly.

    Right padding with the tokenizer's pad id, truncation keeps the special tokens (T5: ``</s>`` last;
    CLIP: ``<|startoftext|> ... <|endoftext|>``). ``clean``: apply ``text_preprocessing`` first.
    """

    def __init__(self, tokenizer, max_length: int, *, clean: bool = False):
        self.tokenizer, self.max_length, self.clean = tokenizer, max_length, clean

    def preprocess(self, text: str) -> str:
        return text_preprocessing(text, self.clean)

    def __call__(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        if isinstance(texts, str):
            texts = [texts]
        out = self.tokenizer([self.preprocess(t) for t in texts], max_length=self.max_length, padding="max_length",
                             truncation=True, return_attention_mask=True, return_tensors="np")
        return out["input_ids"].astype(np.int32), out["attention_mask"].astype(bool)


def load_text_tokenizer(directory: str | Path, kind: str, max_length: int, *, clean: bool | None = None
                        ) -> TextTokenizer:
    """``TextTokenizer`` for "t5" (cleaning on by default, as Open-Sora) or "clip" (off by default)."""
    return TextTokenizer(load_tokenizer(directory, kind), max_length, clean=(kind == "t5") if clean is None else clean)


__all__ = [
    "clean_caption", "text_preprocessing", "load_tokenizer", "load_text_tokenizer", "TextTokenizer", "TokenizerError",
]
